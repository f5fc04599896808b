//! MongoDB through the official driver, in the shared data layout of docs/architecture.md §5
//! (`piano_backends::layout`, the same code the edge's outbox uses), so the edge and the
//! fallback can share one database.
//!
//! Role here: a mirror and a source of last resort. The room store (SQLite or Redis) stays the
//! room's working state; every change is also written to MongoDB (`rooms` document `$set` per
//! field, one `chat` document per message, marked `deleted_at`/`cleared_at` rather than removed),
//! in order per room, retried with backoff. When a room starts and the room store has nothing
//! for it (a new deployment, a lost Redis), it is restored from MongoDB: the room document plus
//! the last 100 live messages this deployment (`DEPLOYMENT_ID`) wrote.
//!
//! Players' activity (the core's per-user stats) goes to `user_stats` the same way: running
//! totals per room and user, seeded from MongoDB, written with `$max`.
//!
//! Not an outbox: a change not yet written when the process dies is missing from MongoDB (it
//! is still in the room store, which is what rooms read first). A durable outbox on the
//! fallback (as the edge's Durable Objects have) is a later issue. Meanwhile: each room's (and
//! the accounts') queue is bounded ([`MIRROR_QUEUE`]); a write MongoDB fails transiently is
//! retried with backoff (1 s doubling to 60 s) for as long as it takes, one op at a time in
//! order, so an outage backs the queue up and what no longer fits is dropped and counted
//! (`piano_mongo_writes_dropped_total`), never the room's memory; a write MongoDB refuses
//! (a validation or duplicate-key error: retrying cannot help) is set aside and counted.

use crate::metrics::METRICS;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::ClientOptions;
use piano_backends::layout;
use piano_backends::layout::StatsTotals;
use piano_backends::outbox::{MongoAction, Op};
use piano_core::room::StatsDelta;
use piano_core::room::stored::{CHAT_HISTORY, Change, ChatRecord, RoomKind, Stored};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub struct Mongo {
    db: mongodb::Database,
    pub deployment: String,
}

/// Writes one room's (or the accounts') mirror may hold while MongoDB is slow or down.
pub const MIRROR_QUEUE: usize = 4096;

/// A room's (or the accounts') ordered, bounded queue to MongoDB.
#[derive(Clone)]
pub struct Mirror(mpsc::Sender<MirrorMsg>);

impl Mirror {
    /// Queues without waiting (rooms never wait on MongoDB); `false` if it did not fit.
    pub fn send(&self, msg: MirrorMsg) -> bool {
        match self.0.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(m)) => {
                if !matches!(m, MirrorMsg::Flush(_)) {
                    METRICS.mongo_dropped.fetch_add(1, Relaxed);
                    METRICS.queue_full.fetch_add(1, Relaxed);
                    tracing::warn!("mongodb mirror queue full: a write was dropped");
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// What a room's mirror task is sent.
pub enum MirrorMsg {
    Change(Change),
    /// An account document (`layout::account_*`).
    Op(Op),
    /// Players' activity to add to their running totals in this room.
    Stats(BTreeMap<String, StatsDelta>),
    Flush(oneshot::Sender<()>),
}

impl Mongo {
    pub async fn connect(url: &str, database: &str, deployment: &str) -> Result<Mongo, String> {
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
            return Ok(());
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

    /// Starts the ordered mirror of one room's changes.
    pub fn mirror(self: &Arc<Self>, room: &str) -> Mirror {
        let (tx, rx) = mpsc::channel(MIRROR_QUEUE);
        tokio::spawn(mirror_loop(self.clone(), room.to_owned(), rx));
        Mirror(tx)
    }
}

/// BSON (relaxed extended JSON) → the core's serde types.
fn from_bson<T: DeserializeOwned>(b: Bson) -> Option<T> {
    serde_json::from_value(b.into_relaxed_extjson()).ok()
}

impl Mongo {
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
        let field = |k: &str| {
            totals
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        Ok(serde_json::json!({
            "user_id": user_id,
            "notes_played": field("notes_played"),
            "chat_messages": field("chat_messages"),
            "joins": field("joins"),
            "rooms": field("rooms"),
            "last_seen": totals.get("last_seen").and_then(serde_json::Value::as_u64),
        }))
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
            })
            .unwrap_or_default())
    }
}

async fn mirror_loop(mongo: Arc<Mongo>, room: String, mut rx: mpsc::Receiver<MirrorMsg>) {
    // Running totals per user in this room, seeded from MongoDB the first time a user shows
    // up (one replica runs the room at a time, so reading then adding is safe; the layout's
    // `$max` keeps a late or repeated write from lowering a total).
    let mut totals: HashMap<String, StatsTotals> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        let ops = match msg {
            MirrorMsg::Change(change) => {
                vec![layout::room_change(
                    &mongo.deployment,
                    &room,
                    &change,
                    crate::now_ms(),
                )]
            }
            MirrorMsg::Op(op) => vec![op],
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
        for op in ops {
            apply_with_retries(&mongo, &room, &op).await;
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

    /// Account documents (`layout::account`), written in order by one task and retried, so a
    /// later save of an account never lands before an earlier one.
    pub fn account_writer(self: &Arc<Self>) -> Mirror {
        self.mirror("(accounts)")
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

/// Writes `op`, retrying transient failures with backoff (1 s doubling to 60 s) until they
/// succeed; a refusal is retried twice (in case it was misjudged) and then set aside.
async fn apply_with_retries(mongo: &Mongo, room: &str, op: &Op) {
    let mut tries: u32 = 0;
    while let Err(e) = mongo.apply(op).await {
        tries += 1;
        METRICS.mongo_errors.fetch_add(1, Relaxed);
        if !e.transient && tries >= 3 {
            METRICS.mongo_dropped.fetch_add(1, Relaxed);
            tracing::error!(room, error = %e, "mongodb refused a write: set aside");
            return;
        }
        // Loud at first, then once every ten tries: an outage must not flood the log.
        if tries <= 3 || tries.is_multiple_of(10) {
            tracing::warn!(room, error = %e, tries, "mongodb write failed; retrying");
        }
        let delay = piano_backends::outbox::retry_delay_ms(tries);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}
