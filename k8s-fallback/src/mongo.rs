//! MongoDB through the official driver, in the shared data layout of docs/architecture.md §5
//! (`piano_backends::layout`, the same code the edge's outbox uses), so the edge and the
//! fallback can share one database.
//!
//! Role here: a mirror and a source of last resort. The room store (SQLite or Redis) stays the
//! room's working state; every change is also written to MongoDB (`rooms` document `$set` per
//! field, one `chat` document per message, marked `deleted_at`/`cleared_at` rather than removed).
//! When a room starts and the room store has nothing for it (a new deployment, a lost Redis),
//! it is restored from MongoDB: the room document plus the last 100 live messages this
//! deployment (`DEPLOYMENT_ID`) wrote.
//!
//! Writes go through the process's durable outbox ([`crate::outbox`], the core's rules, as at
//! the edge): an action's room changes (each field's final state only) and account documents
//! are stored before the action's effects go out, and delivered in order with backoff; a
//! write MongoDB refuses (validation, duplicate key) is set aside after three tries, counted
//! (`piano_mongo_writes_dropped_total`) and kept in `outbox_dead`. A crash loses none.
//!
//! Players' activity (the core's per-user stats) goes to `user_stats` through the outbox too:
//! running totals per room and user, seeded from MongoDB, written with `$max`.

use crate::metrics::METRICS;
use crate::outbox::Outbox;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::ClientOptions;
use piano_backends::layout;
use piano_backends::layout::StatsTotals;
use piano_backends::outbox::{MongoAction, Op};
use piano_core::room::stored::{CHAT_HISTORY, ChatRecord, RoomKind, Stored};
use piano_core::room::{Effect, StatsDelta};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub struct Mongo {
    db: mongodb::Database,
    pub deployment: String,
    outbox: Outbox,
}

/// Stats batches one room's totals task may hold while MongoDB is slow (they are sent every
/// few seconds; the totals are read from MongoDB once per user).
pub const STATS_QUEUE: usize = 64;

/// A room's (or the accounts') way to MongoDB: writes go into the outbox at once; players'
/// activity goes through a task that knows their totals.
#[derive(Clone)]
pub struct Mirror {
    room: String,
    mongo: Arc<Mongo>,
    stats: Option<mpsc::Sender<MirrorMsg>>,
}

impl Mirror {
    /// Stores a write in the outbox (an [`MirrorMsg::Op`], before returning) or hands the
    /// stats task its work, never waiting on MongoDB; `false` if it could not.
    pub fn send(&self, msg: MirrorMsg) -> bool {
        match msg {
            MirrorMsg::Op(op) => self.store(vec![op]),
            msg => {
                let Some(tx) = &self.stats else { return false };
                match tx.try_send(msg) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(m)) => {
                        if !matches!(m, MirrorMsg::Flush(_)) {
                            METRICS.queue_full.fetch_add(1, Relaxed);
                            tracing::warn!(
                                room = self.room,
                                "stats queue full: a batch was dropped"
                            );
                        }
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            }
        }
    }

    /// One action's effects: the room changes it persists, each field's final state only
    /// (the core's coalescing, as at the edge), stored in the outbox before the caller carries
    /// the effects out, so a change anyone has seen is never lost to a crash.
    pub fn persisted(&self, effects: &[Effect]) {
        let changes = effects.iter().filter_map(|e| match e {
            Effect::Persist(c) => Some(c),
            _ => None,
        });
        // Most actions (notes) persist nothing.
        if changes.clone().next().is_none() {
            return;
        }
        let now = crate::now_ms();
        let ops: Vec<Op> = piano_core::outbox::final_changes(changes)
            .into_iter()
            .map(|c| layout::room_change(&self.mongo.deployment, &self.room, c, now))
            .collect();
        self.store(ops);
    }

    fn store(&self, ops: Vec<Op>) -> bool {
        let n = ops.len();
        match self.mongo.outbox.enqueue(ops) {
            Ok(()) => true,
            Err(e) => {
                METRICS.mongo_dropped.fetch_add(n as u64, Relaxed);
                tracing::error!(room = self.room, error = %e, "outbox write failed: MongoDB will miss a write");
                false
            }
        }
    }
}

/// What a room's mirror is sent.
pub enum MirrorMsg {
    /// A write of the shared layout (an account document, `layout::account_*`).
    Op(Op),
    /// Players' activity to add to their running totals in this room.
    Stats(BTreeMap<String, StatsDelta>),
    /// Answered once the stats sent before it are in the outbox.
    Flush(oneshot::Sender<()>),
}

impl Mongo {
    /// Connects, claims the outbox in `data_dir` and starts delivering it (rows a crashed
    /// process left included).
    pub async fn start(
        url: &str,
        database: &str,
        deployment: &str,
        data_dir: &std::path::Path,
    ) -> Result<Arc<Mongo>, String> {
        // Mongo ops need no Redis keys; the prefix only names presence rows, never queued here.
        let keys = layout::Keys {
            prefix: String::new(),
        };
        let outbox = Outbox::open(data_dir, keys)?;
        let mongo = Arc::new(Mongo::connect(url, database, deployment, outbox.clone()).await?);
        let deliverer = mongo.clone();
        tokio::spawn(outbox.run(move |op| {
            let mongo = deliverer.clone();
            async move {
                mongo.apply(&op).await.map_err(|f| crate::outbox::Failed {
                    transient: f.transient,
                    message: f.message,
                })
            }
        }));
        Ok(mongo)
    }

    /// Waits (at most `limit`) for the outbox to empty: at shutdown.
    pub async fn drain(&self, limit: Duration) {
        let depth = self.outbox.drain(limit).await;
        if depth.pending > 0 {
            tracing::warn!(
                pending = depth.pending,
                path = %self.outbox.path().display(),
                "stopping with MongoDB writes queued: the next process on this DATA_DIR delivers them"
            );
        }
    }

    async fn connect(
        url: &str,
        database: &str,
        deployment: &str,
        outbox: Outbox,
    ) -> Result<Mongo, String> {
        let mut opts = ClientOptions::parse(url)
            .await
            .map_err(|e| format!("MONGODB_URL: {e}"))?;
        opts.app_name = Some("k8s-fallback".into());
        opts.connect_timeout = Some(Duration::from_secs(3));
        opts.server_selection_timeout = Some(Duration::from_secs(3));
        let client =
            mongodb::Client::with_options(opts).map_err(|e| format!("MONGODB_URL: {e}"))?;
        let db = client.database(database);
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| format!("could not reach MongoDB at MONGODB_URL: {e}"))?;
        Ok(Mongo {
            db,
            deployment: deployment.to_owned(),
            outbox,
        })
    }

    /// Carries out one write of the shared layout.
    pub async fn apply(&self, op: &Op) -> Result<(), Failure> {
        let Op::Mongo {
            action,
            collection,
            filter,
            update,
            upsert,
        } = op
        else {
            return Err(Failure {
                transient: false,
                message: "not a MongoDB op".into(),
            });
        };
        let refused = |e: bson::ser::Error| Failure {
            transient: false,
            message: e.to_string(),
        };
        let filter: Document = bson::to_document(filter).map_err(refused)?;
        let update: Document = bson::to_document(update).map_err(refused)?;
        let coll = self.db.collection::<Document>(collection);
        match action {
            MongoAction::UpdateOne => coll
                .update_one(filter, update)
                .upsert(*upsert)
                .await
                .map(drop),
            MongoAction::UpdateMany => coll.update_many(filter, update).await.map(drop),
        }
        .map_err(|e| Failure {
            transient: is_transient(&e),
            message: e.to_string(),
        })
    }

    /// The room as MongoDB has it, `None` if it has nothing.
    pub async fn load(&self, room: &str) -> Result<Option<Stored>, String> {
        let err = |e: mongodb::error::Error| e.to_string();
        let room_doc = self
            .db
            .collection::<Document>(layout::ROOMS)
            .find_one(doc! { "_id": room })
            .await
            .map_err(err)?;
        let chat = self.db.collection::<Document>(layout::CHAT);
        let mine = doc! { "room": room, "deployment": &self.deployment };
        let mut live = mine.clone();
        live.insert("deleted_at", doc! { "$exists": false });
        live.insert("cleared_at", doc! { "$exists": false });
        let mut cursor = chat
            .find(live)
            .sort(doc! { "id": -1 })
            .limit(CHAT_HISTORY as i64)
            .await
            .map_err(err)?;
        let mut messages = Vec::new();
        while cursor.advance().await.map_err(err)? {
            let d = cursor.deserialize_current().map_err(err)?;
            if let Some(r) = from_bson::<ChatRecord>(Bson::Document(d)) {
                messages.push(r);
            }
        }
        messages.reverse();
        // Ids are never reused, even after a clear: continue after the highest ever written.
        let last = chat
            .find_one(mine)
            .sort(doc! { "id": -1 })
            .await
            .map_err(err)?
            .and_then(|d| d.get("id").cloned())
            .and_then(from_bson::<u64>);
        if room_doc.is_none() && last.is_none() {
            return Ok(None);
        }
        let mut stored = Stored::new(RoomKind::of(room));
        if let Some(d) = room_doc {
            let field = |name: &str| d.get(name).cloned();
            if let Some(s) = field("settings").and_then(from_bson) {
                stored.settings = s;
            }
            stored.password = field("password").and_then(from_bson).unwrap_or(None);
            stored.crown = field("crown").and_then(from_bson).unwrap_or_default();
            stored.bans = field("bans").and_then(from_bson).unwrap_or_default();
            stored.mutes = field("mutes").and_then(from_bson).unwrap_or_default();
        }
        stored.chat = messages;
        stored.next_chat_id = last.map(|id| id + 1).unwrap_or(1);
        Ok(Some(stored))
    }

    /// One room's way to MongoDB (and its players' totals task).
    pub fn mirror(self: &Arc<Self>, room: &str) -> Mirror {
        let (tx, rx) = mpsc::channel(STATS_QUEUE);
        tokio::spawn(stats_loop(self.clone(), room.to_owned(), rx));
        Mirror {
            room: room.to_owned(),
            mongo: self.clone(),
            stats: Some(tx),
        }
    }
}

/// BSON (relaxed extended JSON) → the core's serde types.
fn from_bson<T: DeserializeOwned>(b: Bson) -> Option<T> {
    serde_json::from_value(b.into_relaxed_extjson()).ok()
}

impl Mongo {
    /// The process's outbox (its backlog for `/metrics` and `/api/status`).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// A user's totals over every room and deployment (`GET /api/users/{id}/stats`), summed by
    /// the layout's aggregation; JSON as the edge answers it.
    pub async fn user_totals(&self, user_id: &str) -> Result<serde_json::Value, String> {
        let pipeline: Vec<Document> = layout::user_stats_pipeline(user_id)
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|stage| bson::to_document(stage).ok())
            .collect();
        let mut cursor = self
            .db
            .collection::<Document>(layout::USER_STATS)
            .aggregate(pipeline)
            .await
            .map_err(|e| e.to_string())?;
        let totals = match cursor.advance().await.map_err(|e| e.to_string())? {
            true => cursor
                .deserialize_current()
                .map(|d| Bson::Document(d).into_relaxed_extjson())
                .map_err(|e| e.to_string())?,
            false => serde_json::json!({}),
        };
        Ok(piano_core::analytics::UserTotals::from_aggregate(&totals).to_json(user_id))
    }

    /// A user's totals in a room as MongoDB has them (zero if it has none).
    async fn stats_of(&self, room: &str, user: &str) -> Result<StatsTotals, String> {
        let id = format!("{}/{room}/{user}", self.deployment);
        let found = self
            .db
            .collection::<Document>(layout::USER_STATS)
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| e.to_string())?;
        let n = |d: &Document, k: &str| d.get(k).cloned().and_then(from_bson::<u64>).unwrap_or(0);
        Ok(found
            .map(|d| StatsTotals {
                notes_played: n(&d, "notes_played"),
                chat_messages: n(&d, "chat_messages"),
                joins: n(&d, "joins"),
                last_seen: n(&d, "last_seen"),
                played_ms: n(&d, "played_ms"),
            })
            .unwrap_or_default())
    }
}

async fn stats_loop(mongo: Arc<Mongo>, room: String, mut rx: mpsc::Receiver<MirrorMsg>) {
    // Running totals per user in this room, seeded from MongoDB the first time a user shows
    // up (one replica runs the room at a time, so reading then adding is safe; the layout's
    // `$max` keeps a late or repeated write from lowering a total).
    let mut totals: HashMap<String, StatsTotals> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        let ops = match msg {
            // Stored by `Mirror::send` itself.
            MirrorMsg::Op(_) => continue,
            MirrorMsg::Stats(stats) => {
                let mut ops = Vec::new();
                for (user, d) in stats {
                    let t = match totals.get(&user) {
                        Some(t) => *t,
                        None => match mongo.stats_of(&room, &user).await {
                            Ok(t) => t,
                            Err(e) => {
                                METRICS.mongo_errors.fetch_add(1, Relaxed);
                                tracing::warn!(room, user, error = %e, "could not read stats; skipping this batch");
                                continue;
                            }
                        },
                    };
                    let t = StatsTotals {
                        notes_played: t.notes_played + d.notes,
                        chat_messages: t.chat_messages + d.chats,
                        joins: t.joins + d.joins,
                        last_seen: t.last_seen.max(d.last_seen),
                        played_ms: t.played_ms + d.played_ms,
                    };
                    totals.insert(user.clone(), t);
                    ops.push(layout::user_stats(&mongo.deployment, &room, &user, &t));
                }
                ops
            }
            MirrorMsg::Flush(reply) => {
                let _ = reply.send(());
                continue;
            }
        };
        if let Err(e) = mongo.outbox.enqueue(ops) {
            METRICS.mongo_dropped.fetch_add(1, Relaxed);
            tracing::error!(room, error = %e, "outbox write failed: players' totals not stored");
        }
    }
}

impl Mongo {
    /// An account document (`accounts`, `_id` = user id) as JSON, `None` if there is none.
    pub async fn find_account(&self, user_id: &str) -> Result<Option<serde_json::Value>, String> {
        let found = self
            .db
            .collection::<Document>(layout::ACCOUNTS)
            .find_one(doc! { "_id": user_id })
            .await
            .map_err(|e| e.to_string())?;
        Ok(found.map(|d| Bson::Document(d).into_relaxed_extjson()))
    }

    /// Account documents (`layout::account_*`), through the outbox's one ordered lane, so a
    /// later save of an account never lands before an earlier one.
    pub fn account_writer(self: &Arc<Self>) -> Mirror {
        Mirror {
            room: "(accounts)".into(),
            mongo: self.clone(),
            stats: None,
        }
    }
}

/// A failed MongoDB write: `transient` ones are retried until they succeed.
#[derive(Debug)]
pub struct Failure {
    pub transient: bool,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether trying again later may succeed: network, selection and pool trouble and the
/// server's "not now" codes are; a write or command MongoDB refuses (validation, duplicate
/// key, bad value) is not.
fn is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    // Codes MongoDB answers while it cannot serve (stepdown, shutdown, timeouts, network).
    const NOT_NOW: [i32; 14] = [
        6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 46841,
    ];
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Command(c) => NOT_NOW.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => NOT_NOW.contains(&w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::InvalidArgument { .. }
        | ErrorKind::BsonDeserialization(_)
        | ErrorKind::BsonSerialization(_) => false,
        // Io, server selection, pool cleared, authentication hiccups, …
        _ => true,
    }
}
