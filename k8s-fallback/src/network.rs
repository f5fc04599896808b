//! What every deployment sharing one Redis sees (docs/architecture.md §5, the edge's `src/shared.rs`): who is
//! online in which room, and the room index, across deployments. Cluster mode only (the
//! replicas' Redis is the shared one); keys under `REDIS_KEY_PREFIX` (default `pr:`, as at the
//! edge), written with the layout's own commands (`piano_backends::layout`):
//!
//! - `presence:<deployment>:<room>` and `online:<deployment>`: [`PresenceWriter`], one per running room, writes
//!   `presence_joined` / `presence_left` whenever the room's participants change, in order;
//!   when the room stops (players reconnect elsewhere) its players are written as gone before
//!   the lease is released, and a room that starts first clears entries this deployment left
//!   for it (a replica killed without a goodbye).
//! - `rooms:<deployment>`: written next to the replicas' own directory
//!   (`directory::directory_writer`): a listed room's summary plus `deployment`
//!   (`room_listed`), removed when it empties or is hidden.
//!
//! `GET /api/network/rooms` and `GET /api/network/online` read them back with the edge's JSON.

use crate::cluster::Cluster;
use crate::json::{json, json_error, with_header};
use crate::metrics::redis_error;
use crate::redis_handle::{RedisHandle, run_redis_op};
use axum::response::Response;
use piano_backends::layout::{self, Keys, NetworkSnapshot, PresenceEntry};
use piano_backends::outbox::Op;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Presence writes one room may have queued. It fills only while Redis does not answer (then
/// the room's lease lapses and the room stops within a lease TTL); what does not fit is
/// dropped and counted, and the 24 h expiry of the presence keys cleans up after it.
const PRESENCE_QUEUE: usize = 1024;

enum Msg {
    Op(Op),
    Flush(oneshot::Sender<()>),
}

/// A room's presence in the shared keys: who is in it, as last written.
pub struct PresenceWriter {
    room: String,
    keys: Keys,
    deployment: String,
    tx: mpsc::Sender<Msg>,
}

impl PresenceWriter {
    /// Starts the room's ordered writer; first it clears what this deployment left behind for
    /// the room (the room is starting, so nobody of ours is in it).
    /// `None` without a cluster (standalone).
    pub fn start(
        cluster: Option<&Cluster>,
        redis_key_prefix: &str,
        deployment: &str,
        room: &str,
    ) -> Option<PresenceWriter> {
        let conn = cluster?.conn.clone();
        let keys = Keys {
            prefix: redis_key_prefix.to_owned(),
        };
        let deployment = deployment.to_owned();
        let (tx, rx) = mpsc::channel(PRESENCE_QUEUE);
        tokio::spawn(write_loop(
            conn,
            keys.clone(),
            deployment.clone(),
            room.to_owned(),
            rx,
        ));
        Some(PresenceWriter {
            room: room.to_owned(),
            keys,
            deployment,
            tx,
        })
    }

    /// Writes who arrived and who left, as the room reports them (`Effect::Presence`).
    pub fn apply(&self, joined: &[piano_core::proto::Participant], left: &[String]) {
        let now = crate::now_ms();
        for p in joined {
            let entry = PresenceEntry {
                room: &self.room,
                user_id: &p.user_id,
                name: &p.name,
                color: &p.color,
            };
            self.queue(layout::presence_joined(
                &self.keys,
                &self.deployment,
                &entry,
                now,
            ));
        }
        for gone in left {
            self.queue(layout::presence_left(
                &self.keys,
                &self.deployment,
                &self.room,
                gone,
            ));
        }
    }

    fn queue(&self, op: Op) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Msg::Op(op)) {
            crate::metrics::METRICS
                .queue_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                room = self.room,
                "presence queue full: an update was dropped"
            );
        }
    }

    /// The room stops: everyone in it is gone from here; waits (bounded) until written. When
    /// the lease was lost (`announce` false) another replica may already run the room and have
    /// written its players: nothing is written then (that replica cleared ours when it started).
    /// Waits (briefly) until what was queued is written.
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.tx.send(Msg::Flush(reply)).await.is_ok() {
                let _ = done.await;
            }
        })
        .await;
    }
}

async fn write_loop(
    conn: RedisHandle,
    keys: Keys,
    deployment: String,
    room: String,
    mut rx: mpsc::Receiver<Msg>,
) {
    clear_leftovers(&conn, &keys, &deployment, &room).await;
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Flush(reply) => {
                let _ = reply.send(());
            }
            Msg::Op(op) => {
                for attempt in 1..=3u64 {
                    match run_redis_op(&conn, &op).await {
                        Ok(()) => break,
                        Err(e) => {
                            redis_error("writing presence", &e);
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                    }
                }
            }
        }
    }
}

/// Presence entries of this deployment for a room that is only now starting are stale.
async fn clear_leftovers(conn: &RedisHandle, keys: &Keys, deployment: &str, room: &str) {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(keys.presence(deployment, room));
    let entries: HashMap<String, String> = match conn.cmd(&cmd).await {
        Ok(e) => e,
        Err(e) => return redis_error("reading presence", &e),
    };
    for (user, value) in entries {
        let ours = serde_json::from_str::<Value>(&value)
            .ok()
            .is_some_and(|v| v["deployment"] == deployment);
        if ours
            && let Err(e) =
                run_redis_op(conn, &layout::presence_left(keys, deployment, room, &user)).await
        {
            redis_error("clearing presence", &e);
        }
    }
}

/// The shared room index commands for one directory report (added to the replicas' own
/// directory write, so they land in the same order).
pub fn index_commands(
    keys: &Keys,
    deployment: &str,
    summary: &piano_core::lobby::Summary,
) -> Vec<Vec<String>> {
    if summary.listed() {
        layout::room_listed(keys, deployment, summary)
    } else {
        layout::room_unlisted(keys, deployment, &summary.name)
    }
}

#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
fn shared_redis<'a>(
    cluster: Option<&'a Cluster>,
    redis_key_prefix: &str,
) -> Result<(&'a RedisHandle, Keys), Response> {
    match cluster {
        Some(c) => Ok((
            &c.conn,
            Keys {
                prefix: redis_key_prefix.to_owned(),
            },
        )),
        None => Err(json_error(
            503,
            "not_configured",
            "this deployment shares no Redis (set REDIS_URL)",
        )),
    }
}

/// Every deployment's shared index, read the way the edge reads it (`layout::network_reads`).
async fn snapshots(conn: &RedisHandle, keys: &Keys) -> Result<Vec<NetworkSnapshot>, Response> {
    let unavailable = |e: redis::RedisError| {
        redis_error("reading the shared index", &e);
        json_error(
            502,
            "backend_unavailable",
            "the shared Redis cannot be reached right now",
        )
    };
    let mut members = redis::cmd("SMEMBERS");
    members.arg(keys.deployments());
    let deployments: Vec<String> = conn.cmd(&members).await.map_err(unavailable)?;
    let mut pipe = redis::pipe();
    for d in &deployments {
        for read in layout::network_reads(keys, d) {
            let cmd = pipe.cmd(&read[0]);
            for a in &read[1..] {
                cmd.arg(a);
            }
        }
    }
    let flat: Vec<Vec<String>> = if deployments.is_empty() {
        Vec::new()
    } else {
        conn.pipe(&pipe).await.map_err(unavailable)?
    };
    Ok(flat
        .chunks_exact(2)
        .map(|pair| NetworkSnapshot {
            rooms: pair[0].clone(),
            online: pair[1].clone(),
        })
        .collect())
}

/// `GET /api/network/rooms`: public rooms of every deployment, busiest first.
pub async fn rooms(cluster: Option<&Cluster>, redis_key_prefix: &str) -> Response {
    network(cluster, redis_key_prefix, "rooms", layout::network_rooms).await
}

/// `GET /api/network/online`: who is online on every deployment (and in which listed room).
pub async fn online(cluster: Option<&Cluster>, redis_key_prefix: &str) -> Response {
    network(cluster, redis_key_prefix, "online", layout::network_online).await
}

/// Reads every deployment's shared index and answers `{field: view(snapshots)}`.
async fn network(
    cluster: Option<&Cluster>,
    redis_key_prefix: &str,
    field: &str,
    view: fn(&[NetworkSnapshot]) -> Vec<Value>,
) -> Response {
    let (conn, keys) = match shared_redis(cluster, redis_key_prefix) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match snapshots(conn, &keys).await {
        Ok(s) => with_header(
            json(200, &serde_json::json!({ field: view(&s) })),
            "cache-control",
            "no-store",
        ),
        Err(resp) => resp,
    }
}
