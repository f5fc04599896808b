//! The fallback's outbox (docs/architecture.md §5): MongoDB writes stored in a local SQLite
//! file in the same step as the change they mirror, then delivered by one task per process,
//! under the core's rules (`piano_core::outbox`: one ordered lane per backend, backoff, dead
//! letters, idempotent redelivery), the same rules as the edge's Durable Objects.
//!
//! Where the rows live: `DATA_DIR/outbox.sqlite3` (the table shapes of the edge's `outbox` and
//! `outbox_dead`), in standalone and in cluster mode alike: Redis, the cluster's room store,
//! is shared by every replica and not a place one replica's unsent writes may be fenced in.
//! A process claims its file with an exclusive SQLite lock held for its life; when the file is
//! already claimed (several replicas on one volume) it takes `outbox-1.sqlite3`, `-2`, … The
//! kernel releases the lock of a killed process, so the next process started on that
//! `DATA_DIR` (the same replica restarted, or another) claims the file and delivers what the
//! dead one left. `DATA_DIR` must therefore outlive the process (a persistent volume).
//!
//! Storing a row is a small SQLite commit done in place (WAL, no fsync: it survives the
//! process, as `kill -9`, not the machine) before the action's effects go out, so a change a
//! player has seen is in the outbox. A row is deleted only once MongoDB acknowledged it.

use piano_backends::layout;
use piano_backends::outbox::{Lane, Op, SQLITE_SCHEMA as SCHEMA};
use piano_core::outbox::{BATCH, Outcome, RowMeta, Verdict};
use rusqlite::{Connection, OptionalExtension};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Outbox files one `DATA_DIR` may hold (one per process sharing it).
const SLOTS: usize = 64;

/// After a storage error, the delivery task waits this long before looking again.
const STORAGE_RETRY: Duration = Duration::from_secs(5);

/// One process's outbox: cheap to clone, shared by rooms, accounts and the delivery task.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    machine: Mutex<piano_core::outbox::Outbox>,
    wake: tokio::sync::Notify,
    keys: layout::Keys,
    path: PathBuf,
    /// The state machine's clock: monotonic (a wall clock stepping back must not stall a lane).
    epoch: std::time::Instant,
}

/// A failed delivery, as the host's backend client reports it.
pub struct Failed {
    pub transient: bool,
    pub message: String,
}

/// What is queued and set aside, for logs and the drain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub pending: usize,
    pub dead: usize,
}

impl Outbox {
    /// Claims the first outbox file in `data_dir` no live process holds, creating it if need
    /// be, and learns what it already holds (rows a crashed process left).
    pub fn open(data_dir: &Path, keys: layout::Keys) -> Result<Outbox, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("DATA_DIR {}: {e}", data_dir.display()))?;
        for slot in 0..SLOTS {
            let path = match slot {
                0 => data_dir.join("outbox.sqlite3"),
                n => data_dir.join(format!("outbox-{n}.sqlite3")),
            };
            let conn = Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            match claim(&conn) {
                Ok(()) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
            let mut machine = piano_core::outbox::Outbox::new();
            for lane in Lane::ALL {
                let waiting =
                    lane_has_rows(&conn, lane).map_err(|e| format!("{}: {e}", path.display()))?;
                machine.set_waiting(lane, waiting);
            }
            let outbox = Outbox {
                inner: Arc::new(Inner {
                    conn: Mutex::new(conn),
                    machine: Mutex::new(machine),
                    wake: tokio::sync::Notify::new(),
                    keys,
                    path,
                    epoch: std::time::Instant::now(),
                }),
            };
            let depth = outbox.depth().unwrap_or_default();
            tracing::info!(
                path = %outbox.inner.path.display(),
                pending = depth.pending,
                dead = depth.dead,
                "outbox claimed"
            );
            return Ok(outbox);
        }
        Err(format!(
            "every outbox file in {} is held by a running process",
            data_dir.display()
        ))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores `ops` (one transaction) before the caller goes on: a newer write of the same
    /// document fields replaces a queued older one (`layout::supersede_key`).
    pub fn enqueue(&self, ops: Vec<Op>) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        let now = crate::now_ms() as i64;
        let mut rows = Vec::with_capacity(ops.len());
        for op in &ops {
            let json = serde_json::to_string(op).map_err(|e| e.to_string())?;
            rows.push((op.lane(), json, layout::supersede_key(&self.inner.keys, op)));
        }
        blocking(|| {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            for (lane, json, supersede) in &rows {
                if let Some(key) = supersede {
                    tx.prepare_cached("DELETE FROM outbox WHERE supersede = ?1")?
                        .execute([key])?;
                }
                tx.prepare_cached(
                    "INSERT INTO outbox (lane, op, created, supersede) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute((lane.as_str(), json, now, supersede))?;
            }
            tx.commit()
        })
        .map_err(|e| e.to_string())?;
        let mut machine = self.machine();
        for (lane, ..) in &rows {
            machine.queued(*lane);
        }
        drop(machine);
        self.inner.wake.notify_one();
        Ok(())
    }

    pub fn depth(&self) -> Result<Depth, String> {
        let conn = self.conn();
        let count = |q: &str| conn.query_row(q, [], |r| r.get::<_, i64>(0));
        Ok(Depth {
            pending: count("SELECT COUNT(*) FROM outbox").map_err(|e| e.to_string())? as usize,
            dead: count("SELECT COUNT(*) FROM outbox_dead").map_err(|e| e.to_string())? as usize,
        })
    }

    /// Rows waiting per lane and the oldest one's age (`/metrics`, `/api/status`).
    pub fn backlog(&self) -> Result<[piano_core::metrics::LaneBacklog; 2], String> {
        let now = crate::now_ms() as i64;
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT lane, COUNT(*), MIN(created) FROM outbox GROUP BY lane")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| e.to_string())?;
        let mut out = [piano_core::metrics::LaneBacklog::default(); 2];
        for row in rows {
            let (lane, depth, oldest) = row.map_err(|e| e.to_string())?;
            if let Some(i) = Lane::parse(&lane).map(Lane::index) {
                out[i] = piano_core::metrics::LaneBacklog {
                    depth: depth.max(0) as u64,
                    oldest_age_secs: (now - oldest).max(0) as u64 / 1000,
                };
            }
        }
        Ok(out)
    }

    /// Waits (at most `limit`) until every row is delivered or set aside: at shutdown, so a
    /// replica that stops in order leaves nothing for the next one while MongoDB is up.
    pub async fn drain(&self, limit: Duration) -> Depth {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let depth = self.depth().unwrap_or(Depth {
                pending: usize::MAX,
                dead: 0,
            });
            if depth.pending == 0 || tokio::time::Instant::now() >= deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Delivers rows as the core's state machine says, for ever: `deliver` performs one op.
    pub async fn run<F, Fut>(self, deliver: F)
    where
        F: Fn(Op) -> Fut,
        Fut: Future<Output = Result<(), Failed>>,
    {
        loop {
            let now = self.clock();
            let due: Vec<Lane> = {
                let mut machine = self.machine();
                std::iter::from_fn(|| machine.next_lane(now)).collect()
            };
            for lane in due {
                if let Err(e) = self.run_lane(lane, &deliver).await {
                    tracing::error!(path = %self.inner.path.display(), error = %e, "outbox storage failed; retrying");
                    self.machine().lane_done(lane, true);
                    tokio::time::sleep(STORAGE_RETRY).await;
                }
            }
            let now = self.clock();
            let next = self.machine().poll_timeout(now);
            match next {
                Some(at) if at <= now => continue,
                Some(at) => {
                    let wait = Duration::from_millis(at - now);
                    let _ = tokio::time::timeout(wait, self.inner.wake.notified()).await;
                }
                None => self.inner.wake.notified().await,
            }
        }
    }

    /// One run of a lane: its oldest rows in order, each as the core's verdict says.
    async fn run_lane<F, Fut>(&self, lane: Lane, deliver: &F) -> rusqlite::Result<()>
    where
        F: Fn(Op) -> Fut,
        Fut: Future<Output = Result<(), Failed>>,
    {
        let rows: Vec<(i64, String, i64)> = blocking(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT id, op, attempts FROM outbox WHERE lane = ?1 ORDER BY id LIMIT ?2",
            )?;
            stmt.query_map((lane.as_str(), BATCH as i64), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<(i64, String, i64)>>>()
        })?;
        for (id, json, attempts) in rows {
            let meta = RowMeta {
                id,
                lane,
                attempts: attempts.clamp(0, u32::MAX as i64) as u32,
            };
            let (outcome, error) = match serde_json::from_str::<Op>(&json) {
                Err(e) => (Outcome::Unreadable, format!("unreadable op: {e}")),
                Ok(op) => match deliver(op).await {
                    Ok(()) => (Outcome::Delivered, String::new()),
                    Err(f) => (
                        Outcome::Failed {
                            transient: f.transient,
                        },
                        f.message,
                    ),
                },
            };
            let verdict = self.machine().report(&meta, outcome, self.clock());
            self.settle(id, lane, &json, verdict, &error)?;
            if !verdict.lane_goes_on() {
                break; // later rows wait: order within a lane is kept
            }
        }
        let left = blocking(|| lane_has_rows(&self.conn(), lane))?;
        self.machine().lane_done(lane, left);
        Ok(())
    }

    /// Carries out a verdict on a row (and says so in the log and the metrics).
    fn settle(
        &self,
        id: i64,
        lane: Lane,
        json: &str,
        verdict: Verdict,
        error: &str,
    ) -> rusqlite::Result<()> {
        use crate::metrics::METRICS;
        use std::sync::atomic::Ordering::Relaxed;
        let conn = self.conn();
        match verdict {
            Verdict::Delete => {
                conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute([id])?;
            }
            Verdict::Retry { attempts, .. } => {
                METRICS.mongo_errors.fetch_add(1, Relaxed);
                // Loud at first, then once every ten tries: an outage must not flood the log.
                if attempts <= 3 || attempts.is_multiple_of(10) {
                    tracing::warn!(
                        event = piano_core::logging::event::BACKEND_ERROR,
                        lane = lane.as_str(),
                        attempts,
                        error,
                        "outbox delivery failed; will retry"
                    );
                }
                conn.prepare_cached(
                    "UPDATE outbox SET attempts = ?1, last_error = ?2 WHERE id = ?3",
                )?
                .execute((attempts, error, id))?;
            }
            Verdict::Bury => {
                METRICS.mongo_errors.fetch_add(1, Relaxed);
                METRICS.mongo_dropped.fetch_add(1, Relaxed);
                tracing::error!(
                    event = piano_core::logging::event::DEAD_LETTER,
                    lane = lane.as_str(),
                    error,
                    "outbox: op set aside in outbox_dead"
                );
                crate::telemetry::send(
                    piano_core::report::Report::new(
                        piano_core::report::kind::DEAD_LETTER,
                        piano_core::report::Severity::Error,
                        format!("outbox {}: {error}", lane.as_str()),
                    )
                    .tag("lane", lane.as_str()),
                );
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO outbox_dead (id, lane, op, error, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute((id, lane.as_str(), json, error, crate::now_ms() as i64))?;
                conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute([id])?;
            }
        }
        Ok(())
    }

    fn clock(&self) -> piano_core::Millis {
        self.inner.epoch.elapsed().as_millis() as piano_core::Millis
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves a usable connection (SQLite rolls back an
        // unfinished transaction when the next one begins).
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, piano_core::outbox::Outbox> {
        self.inner.machine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes the file's exclusive lock and keeps it for the connection's life (SQLite's exclusive
/// locking mode: set before the first access, held from the first write on).
fn claim(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::ZERO)?;
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;",
    )?;
    conn.execute_batch(&format!("BEGIN EXCLUSIVE; {SCHEMA} COMMIT;"))
}

fn lane_has_rows(conn: &Connection, lane: Lane) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM outbox WHERE lane = ?1 LIMIT 1")?
        .query_row([lane.as_str()], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Runs a short SQLite call from async code: on the multi-threaded runtime the worker hands
/// its other tasks to the rest of the pool meanwhile (elsewhere, as in tests, it just runs).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use piano_backends::layout::Keys;
    use serde_json::json;

    fn keys() -> Keys {
        Keys {
            prefix: "pr:".into(),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "piano-outbox-{tag}-{}-{}",
            std::process::id(),
            crate::now_us()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn crown(owner: &str) -> Op {
        Op::upsert(
            "rooms",
            json!({"_id": "r"}),
            json!({"$set": {"crown": owner, "updated_at": 1}}),
        )
    }

    #[test]
    fn a_second_process_on_the_same_directory_claims_another_file() {
        let d = dir("slots");
        let a = Outbox::open(&d, keys()).unwrap();
        let b = Outbox::open(&d, keys()).unwrap();
        assert_eq!(a.path(), d.join("outbox.sqlite3"));
        assert_eq!(b.path(), d.join("outbox-1.sqlite3"));
        // Once the first is gone its file is free again, rows and all.
        a.enqueue(vec![crown("a")]).unwrap();
        drop(a);
        let c = Outbox::open(&d, keys()).unwrap();
        assert_eq!(c.path(), d.join("outbox.sqlite3"));
        assert_eq!(c.depth().unwrap().pending, 1);
        assert!(
            c.machine().poll_timeout(0).is_some(),
            "delivers what it found"
        );
    }

    #[test]
    fn a_newer_write_of_the_same_fields_replaces_a_queued_one() {
        let d = dir("supersede");
        let o = Outbox::open(&d, keys()).unwrap();
        let chat = Op::upsert(
            "chat",
            json!({"_id": "e/r/1"}),
            json!({"$setOnInsert": {"text": "hi"}}),
        );
        o.enqueue(vec![crown("a"), chat.clone()]).unwrap();
        o.enqueue(vec![crown("b")]).unwrap();
        o.enqueue(vec![chat]).unwrap();
        assert_eq!(o.depth().unwrap().pending, 3, "crown once, the chat twice");
    }

    #[tokio::test]
    async fn rows_are_delivered_in_order_and_refused_ones_set_aside() {
        let d = dir("deliver");
        let o = Outbox::open(&d, keys()).unwrap();
        let refused = Op::upsert("bad", json!({"_id": "x"}), json!({"$set": {"v": 1}}));
        let ops = vec![
            Op::upsert("c", json!({"_id": "1"}), json!({"$setOnInsert": {"n": 1}})),
            refused,
            Op::upsert("c", json!({"_id": "2"}), json!({"$setOnInsert": {"n": 2}})),
        ];
        o.enqueue(ops).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(o.clone().run(move |op| {
            let log = log.clone();
            async move {
                let Op::Mongo { collection, .. } = op else {
                    return Ok(());
                };
                log.lock().unwrap().push(collection.clone());
                if collection == "bad" {
                    return Err(Failed {
                        transient: false,
                        message: "refused".into(),
                    });
                }
                Ok(())
            }
        }));
        let depth = o.drain(Duration::from_secs(60)).await;
        task.abort();
        assert_eq!(
            depth,
            Depth {
                pending: 0,
                dead: 1
            }
        );
        // The refusal was tried three times (1 s and 2 s apart) while the lane waited.
        assert_eq!(*seen.lock().unwrap(), ["c", "bad", "bad", "bad", "c"]);
    }
}
