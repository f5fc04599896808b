//! The outbox of a Durable Object: writes bound for MongoDB and Redis (DESIGN §5).
//!
//! An op is inserted into the object's SQLite in the same synchronous step as the state change
//! it mirrors, so both commit together (workerd batches the writes of one event atomically);
//! then the object's alarm delivers the rows, oldest first, one lane per backend, deleting each
//! once acknowledged. A transient failure leaves the row (with its attempt count and error) and
//! re-arms the alarm after a backoff (a newer write of the same document fields replaces a
//! queued older one, so a long outage leaves one row per field, plus the chat, not one per
//! change); a rejected op is moved to `outbox_dead` (kept for the
//! operator, never silently dropped) so it cannot hold up the rest. Players never wait on any of
//! this: delivery runs in the alarm, and fetches yield to the object's other events.

use piano_backends::outbox::{Lane, Op, deliver, retry_delay_ms};
use piano_backends::{Backends, layout};
use std::cell::Cell;
use worker::*;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL, op TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created INTEGER NOT NULL,
        supersede TEXT
    );
    CREATE INDEX IF NOT EXISTS outbox_by_lane ON outbox (lane, id);
    CREATE INDEX IF NOT EXISTS outbox_by_supersede ON outbox (supersede);
    CREATE TABLE IF NOT EXISTS outbox_dead (
        id INTEGER PRIMARY KEY, lane TEXT NOT NULL, op TEXT NOT NULL, error TEXT NOT NULL,
        failed_at INTEGER NOT NULL
    );
";

/// Rows delivered per lane per alarm before yielding (the alarm is re-armed at once if more
/// are waiting), so one alarm never runs for long.
const BATCH: usize = 100;

/// Reads the backend configuration from the object's env; a broken configuration is logged and
/// treated as none (the object keeps working on its own storage; the worker's `/healthz`
/// reports the error to the operator).
pub fn backends(env: &Env) -> Option<Backends> {
    let get = |k: &str| {
        env.secret(k)
            .map(|s| s.to_string())
            .or_else(|_| env.var(k).map(|v| v.to_string()))
            .ok()
    };
    match Backends::from_vars(get) {
        Ok(b) if b.is_configured() => Some(b),
        Ok(_) => None,
        Err(e) => {
            console_error!("external backends not used: {e}");
            None
        }
    }
}

/// One object's outbox.
pub struct Outbox {
    backends: Option<Backends>,
    /// Ops were queued since the alarm was last checked.
    dirty: Cell<bool>,
    /// A flush is running: a second one would deliver the same rows out of order.
    flushing: Cell<bool>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Flushed {
    pub delivered: usize,
    pub dead: usize,
    pub pending: usize,
    /// When the alarm should run again for the rows left, if any.
    #[serde(skip)]
    pub retry_at: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Row {
    id: i64,
    op: String,
    attempts: i64,
}

#[derive(serde::Deserialize)]
struct Count {
    n: i64,
}

impl Outbox {
    pub fn new(env: &Env) -> Outbox {
        Outbox {
            backends: backends(env),
            dirty: Cell::new(false),
            flushing: Cell::new(false),
        }
    }

    pub fn backends(&self) -> Option<&Backends> {
        self.backends.as_ref()
    }

    /// Whether writes for this lane are wanted at all.
    pub fn wants(&self, lane: Lane) -> bool {
        self.backends.as_ref().is_some_and(|b| b.has(lane))
    }

    /// Queues ops (synchronously, with the state change they mirror). Ops for a backend that
    /// is not configured are not queued.
    pub fn enqueue(
        &self,
        sql: &SqlStorage,
        ops: impl IntoIterator<Item = Op>,
        now: u64,
    ) -> Result<()> {
        let mut schema_ready = false;
        for op in ops {
            if !self.wants(op.lane()) {
                continue;
            }
            if !schema_ready {
                sql.exec(SCHEMA, None)?;
                schema_ready = true;
            }
            // A newer write of the same fields replaces a queued older one (bounded backlog).
            let supersede = layout::supersede_key(&op);
            if let Some(key) = &supersede {
                sql.exec(
                    "DELETE FROM outbox WHERE supersede = ?",
                    vec![key.as_str().into()],
                )?;
            }
            sql.exec(
                "INSERT INTO outbox (lane, op, created, supersede) VALUES (?, ?, ?, ?)",
                vec![
                    op.lane().as_str().into(),
                    serde_json::to_string(&op)?.into(),
                    (now as i64).into(),
                    supersede.into(),
                ],
            )?;
            self.dirty.set(true);
        }
        Ok(())
    }

    /// After queuing: makes sure the alarm runs now (unless it already will sooner). During a
    /// flush nothing is set here: the alarm handler re-arms when it ends ([`Outbox::rearm`]).
    pub async fn kick(&self, storage: &Storage, now: u64) -> Result<()> {
        if self.flushing.get() || !self.dirty.replace(false) {
            return Ok(());
        }
        match storage.get_alarm().await? {
            Some(at) if at <= now as i64 => Ok(()),
            _ => set_alarm_at(storage, now, now).await,
        }
    }

    /// At the end of an alarm handler: the next alarm is the earliest of the outbox's retry,
    /// "now" if ops were queued during the flush, and the object's own `other` timer; with none
    /// of them the alarm is removed.
    pub async fn rearm(
        &self,
        storage: &Storage,
        flushed: &Flushed,
        other: Option<u64>,
        now: u64,
    ) -> Result<()> {
        let queued = self.dirty.replace(false).then_some(now);
        let next = [flushed.retry_at, queued, other]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(at) => set_alarm_at(storage, at, now).await,
            None => storage.delete_alarm().await,
        }
    }

    /// Rows waiting (for objects that decide whether they still need their alarm).
    pub fn pending(&self, sql: &SqlStorage) -> Result<usize> {
        if self.backends.is_none() {
            return Ok(0);
        }
        sql.exec(SCHEMA, None)?;
        count(sql, "SELECT COUNT(*) AS n FROM outbox")
    }

    /// Delivers what is queued; both lanes run side by side.
    pub async fn flush(&self, sql: &SqlStorage, now: u64) -> Result<Flushed> {
        let Some(backends) = self.backends.as_ref() else {
            return Ok(Flushed::default());
        };
        if self.flushing.replace(true) {
            return Ok(Flushed {
                retry_at: Some(now + 1000),
                ..Flushed::default()
            });
        }
        sql.exec(SCHEMA, None)?;
        let (mongo, redis) = futures_util::join!(
            self.flush_lane(sql, backends, Lane::Mongo, now),
            self.flush_lane(sql, backends, Lane::Redis, now)
        );
        self.flushing.set(false);
        let (mongo, redis) = (mongo?, redis?);
        let pending = count(sql, "SELECT COUNT(*) AS n FROM outbox")?;
        let retry_at = match (mongo.retry_at, redis.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Flushed {
            delivered: mongo.delivered + redis.delivered,
            dead: mongo.dead + redis.dead,
            pending,
            // Rows left without a failure (the batch limit): come back at once.
            retry_at: retry_at.or((pending > 0).then_some(now)),
        })
    }

    async fn flush_lane(
        &self,
        sql: &SqlStorage,
        backends: &Backends,
        lane: Lane,
        now: u64,
    ) -> Result<Flushed> {
        let mut done = Flushed::default();
        let rows: Vec<Row> = sql
            .exec(
                "SELECT id, op, attempts FROM outbox WHERE lane = ? ORDER BY id LIMIT ?",
                vec![lane.as_str().into(), (BATCH as i64).into()],
            )?
            .to_array()?;
        for row in rows {
            let op: Op = match serde_json::from_str(&row.op) {
                Ok(op) => op,
                Err(e) => {
                    self.bury(sql, &row, lane, &format!("unreadable op: {e}"), now)?;
                    done.dead += 1;
                    continue;
                }
            };
            match deliver(backends, &op).await {
                Ok(()) => {
                    sql.exec("DELETE FROM outbox WHERE id = ?", vec![row.id.into()])?;
                    done.delivered += 1;
                }
                Err(e) if e.is_transient() => {
                    let attempts = row.attempts + 1;
                    sql.exec(
                        "UPDATE outbox SET attempts = ?, last_error = ? WHERE id = ?",
                        vec![attempts.into(), e.to_string().into(), row.id.into()],
                    )?;
                    if attempts == 1 || attempts % 10 == 0 {
                        console_warn!(
                            "{} outbox: delivery failed ({attempts}x), will retry: {e}",
                            lane.as_str()
                        );
                    }
                    done.retry_at = Some(now + retry_delay_ms(attempts.clamp(1, 64) as u32));
                    break; // later rows wait: order within a lane is kept
                }
                Err(e) => {
                    console_error!(
                        "{} outbox: op rejected, set aside in outbox_dead: {e}",
                        lane.as_str()
                    );
                    self.bury(sql, &row, lane, &e.to_string(), now)?;
                    done.dead += 1;
                }
            }
        }
        Ok(done)
    }

    fn bury(&self, sql: &SqlStorage, row: &Row, lane: Lane, error: &str, now: u64) -> Result<()> {
        sql.exec(
            "INSERT OR REPLACE INTO outbox_dead (id, lane, op, error, failed_at) VALUES (?, ?, ?, ?, ?)",
            vec![
                row.id.into(),
                lane.as_str().into(),
                row.op.as_str().into(),
                error.into(),
                (now as i64).into(),
            ],
        )?;
        sql.exec("DELETE FROM outbox WHERE id = ?", vec![row.id.into()])?;
        Ok(())
    }

    /// Queue depth and dead letters, for the operator (`/outbox` on the objects).
    pub fn status(&self, sql: &SqlStorage) -> Result<serde_json::Value> {
        if self.backends.is_none() {
            return Ok(serde_json::json!({ "configured": false }));
        }
        // Read-only: looking must not create storage in an object that never had any.
        let tables = count(
            sql,
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ('outbox', 'outbox_dead')",
        )?;
        if tables < 2 {
            return Ok(serde_json::json!({ "configured": true, "pending": 0, "dead": 0 }));
        }
        Ok(serde_json::json!({
            "configured": true,
            "pending": count(sql, "SELECT COUNT(*) AS n FROM outbox")?,
            "dead": count(sql, "SELECT COUNT(*) AS n FROM outbox_dead")?,
        }))
    }
}

/// Sets the alarm for an absolute time. (workers-rs reads a bare `i64` as an offset from now,
/// not as a timestamp: this is the one place that converts.)
pub async fn set_alarm_at(storage: &Storage, at_ms: u64, now_ms: u64) -> Result<()> {
    storage
        .set_alarm(std::time::Duration::from_millis(
            at_ms.saturating_sub(now_ms),
        ))
        .await
}

fn count(sql: &SqlStorage, query: &str) -> Result<usize> {
    Ok(sql
        .exec(query, None)?
        .to_array::<Count>()?
        .first()
        .map(|c| c.n.max(0) as usize)
        .unwrap_or(0))
}
