//! The outbox of a Durable Object: writes bound for MongoDB and Redis (docs/architecture.md §5).
//!
//! An op is inserted into the object's SQLite in the same synchronous step as the state change
//! it mirrors, so both commit together (workerd batches the writes of one event atomically);
//! then the object's alarm delivers the rows. What goes out next, backoff, dead letters and
//! coalescing are the core's rules (`piano_core::outbox`, shared with the fallback); this file
//! keeps the rows (`outbox`, `outbox_dead`) and the alarm, and performs the deliveries.
//!
//! The alarm: [`Outbox::kick`] after an event that queued rows; [`Outbox::begin_alarm`] /
//! [`Outbox::finish_alarm`] around the handler, which always sets the next alarm from the
//! table itself (rows queued while it ran included) and the object's own timer, even when the
//! flush failed. Players never wait on any of this: delivery runs in the alarm, and fetches
//! yield to the object's other events.

use piano_backends::outbox::{Lane, Op, SQLITE_SCHEMA as SCHEMA, deliver};
use piano_backends::{Backends, layout};
use piano_core::metrics::push::LaneHead;
use piano_core::outbox::{BATCH, Outcome, RowMeta, Verdict};
use std::cell::{Cell, RefCell};
use worker::*;

/// Reads the backend configuration from the object's env; a broken configuration is logged and
/// treated as none (the object keeps working on its own storage; the worker's `/healthz`
/// reports the error to the operator).
pub fn backends(env: &Env) -> Option<Backends> {
    match configured_backends(env) {
        Ok(b) if b.is_configured() => Some(b),
        Ok(_) => None,
        Err(e) => {
            crate::log::error(piano_core::logging::event::BACKEND_ERROR)
                .msg(format!("external backends not used: {e}"))
                .emit();
            None
        }
    }
}

/// The backends as configured in `env` (the worker's `/healthz` reports the error).
pub fn configured_backends(env: &Env) -> std::result::Result<Backends, String> {
    Backends::from_vars(|k| crate::setting(env, k))
}

/// One object's outbox, and the keeper of the object's alarm (which the object may share for
/// a timer of its own: the Lobby's sweep, the Room's stats).
pub struct Outbox {
    backends: Option<Backends>,
    /// Ops were queued since the alarm was last made sure of.
    dirty: Cell<bool>,
    /// A flush is running: a second one would deliver the same rows out of order.
    flushing: Cell<bool>,
    /// The alarm handler is running: it sets the next alarm when it ends, from the table.
    in_alarm: Cell<bool>,
    /// When the alarm is set for, as far as this instance knows (`None`: unknown or none).
    scheduled: Cell<Option<u64>>,
    /// While the alarm handler runs: the time that alarm was set for, if this instance set it.
    fired_for: Cell<Option<u64>>,
    /// Which lanes are due, backing off or being delivered (the core's rules). Never borrowed
    /// across an await.
    machine: RefCell<piano_core::outbox::Outbox>,
}

/// Resets the `flushing` flag however a flush ends.
struct FlushGuard<'a>(&'a Cell<bool>);

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Flushed {
    pub delivered: usize,
    pub dead: usize,
    pub pending: usize,
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
            in_alarm: Cell::new(false),
            scheduled: Cell::new(None),
            fired_for: Cell::new(None),
            machine: RefCell::default(),
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
            let supersede = self
                .backends
                .as_ref()
                .and_then(|b| layout::supersede_key(&b.keys, &op));
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
            self.machine.borrow_mut().queued(op.lane());
            self.dirty.set(true);
        }
        Ok(())
    }

    /// After queuing: makes sure the alarm runs now (unless it already will). During the alarm
    /// handler nothing is set here: [`Outbox::finish_alarm`] looks at the table when it ends.
    pub async fn kick(&self, storage: &Storage, now: u64) -> Result<()> {
        if self.in_alarm.get() || !self.dirty.replace(false) {
            return Ok(());
        }
        self.alarm_by(storage, now, now).await
    }

    /// Makes sure the alarm runs by `at` (for the object's own timers too). Cheap when this
    /// instance already set it that early; during the alarm handler it is left to
    /// [`Outbox::finish_alarm`] (whose `other` argument carries such timers).
    pub async fn alarm_by(&self, storage: &Storage, at: u64, now: u64) -> Result<()> {
        if self.in_alarm.get() {
            return Ok(());
        }
        // An alarm time long past that never fired is a lost alarm, not one to rely on.
        let live = |t: u64| t <= at && t + STALE_ALARM_MS >= now;
        if self.scheduled.get().is_some_and(live) {
            return Ok(());
        }
        if let Some(existing) = storage.get_alarm().await?
            && live(existing as u64)
        {
            self.scheduled.set(Some(existing as u64));
            return Ok(());
        }
        let at = set_alarm_at(storage, at, now).await?;
        self.scheduled.set(Some(at));
        Ok(())
    }

    /// The object deleted its alarm (and storage) behind the outbox's back.
    pub fn forget_alarm(&self) {
        self.scheduled.set(None);
    }

    /// At the start of the alarm handler (the alarm that fired is spent).
    pub fn begin_alarm(&self) {
        self.in_alarm.set(true);
        self.fired_for.set(self.scheduled.take());
    }

    /// "Now" for the alarm handler's timers: never before the time the alarm was set for. The
    /// runtime may fire an alarm while the isolate's clock still reads a few ms earlier; a
    /// timer due at that time would then not be due, and asking again for the same time is
    /// the trap [`Outbox::finish_alarm`] avoids.
    pub fn alarm_now(&self, now: u64) -> u64 {
        self.fired_for.get().map_or(now, |f| f.max(now))
    }

    /// At the end of the alarm handler, whatever the flush did: the next alarm is the earliest
    /// of each lane's next attempt (rows queued while the handler ran included) and the
    /// object's `other` timer; with none, there is no alarm.
    pub async fn finish_alarm(
        &self,
        storage: &Storage,
        sql: &SqlStorage,
        flushed: Result<Flushed>,
        other: Option<u64>,
        now: u64,
    ) -> Result<Response> {
        self.in_alarm.set(false);
        self.dirty.set(false);
        let (flushed, failed) = match flushed {
            Ok(f) => (f, None),
            Err(e) => {
                let what = format!("outbox flush failed, retrying in 5 s: {e}");
                crate::log::exception("outbox", what).await;
                (Flushed::default(), Some(now + 5000))
            }
        };
        let lanes = match self.next_attempts(sql, now) {
            Ok(lanes) => lanes,
            Err(e) => {
                let what = format!("outbox read failed, retrying in 5 s: {e}");
                crate::log::exception("outbox", what).await;
                Some(now + 5000)
            }
        };
        // Never the running alarm's own time: the runtime takes setting it again as no change
        // and drops it when the handler returns (no alarm would ever fire again). After it;
        // when this instance did not set it (it woke for it), past the clock's possible lag.
        let floor = match self.fired_for.take() {
            Some(fired) => fired.max(now) + 1,
            None => now + UNKNOWN_FIRED_MARGIN_MS,
        };
        let next = [lanes, failed, other]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.max(floor));
        match next {
            Some(at) => {
                let at = set_alarm_at(storage, at, now).await?;
                self.scheduled.set(Some(at));
            }
            None => {
                storage.delete_alarm().await?;
                self.scheduled.set(None);
            }
        }
        Response::from_json(&flushed)
    }

    /// The earliest time a lane with waiting rows may be tried again.
    fn next_attempts(&self, sql: &SqlStorage, now: u64) -> Result<Option<u64>> {
        if self.backends.is_none() {
            return Ok(None);
        }
        self.look(sql)?;
        Ok(self.machine.borrow().poll_timeout(now))
    }

    /// Tells the state machine which lanes hold rows (this instance may be new since they
    /// were stored: after eviction, or rows stored by an earlier instance).
    fn look(&self, sql: &SqlStorage) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct LaneRow {
            lane: String,
        }
        sql.exec(SCHEMA, None)?;
        let waiting: Vec<LaneRow> = sql
            .exec("SELECT DISTINCT lane FROM outbox", None)?
            .to_array()?;
        let mut machine = self.machine.borrow_mut();
        for lane in Lane::ALL {
            machine.set_waiting(lane, waiting.iter().any(|r| r.lane == lane.as_str()));
        }
        Ok(())
    }

    /// Delivers what is queued; both lanes run side by side, each skipped while in backoff.
    pub async fn flush(&self, sql: &SqlStorage, now: u64) -> Result<Flushed> {
        let Some(backends) = self.backends.as_ref() else {
            return Ok(Flushed::default());
        };
        // Another flush is delivering these rows (in order); the alarm's end re-arms from the
        // table.
        if self.flushing.replace(true) {
            return Ok(Flushed::default());
        }
        let _guard = FlushGuard(&self.flushing);
        // Rows queued from here on are seen by the end of the alarm (`finish_alarm`).
        self.dirty.set(false);
        self.look(sql)?;
        let due: Vec<Lane> = {
            let mut machine = self.machine.borrow_mut();
            std::iter::from_fn(|| machine.next_lane(now)).collect()
        };
        let run = |lane: Lane| {
            let due = due.contains(&lane);
            async move {
                if !due {
                    return Ok(Flushed::default());
                }
                let result = self.flush_lane(sql, backends, lane, now).await;
                // However the run ended, the lane is free again (an error leaves its rows).
                let left = count(
                    sql,
                    &format!(
                        "SELECT COUNT(*) AS n FROM outbox WHERE lane = '{}'",
                        lane.as_str()
                    ),
                )
                .map_or(true, |n| n > 0);
                self.machine.borrow_mut().lane_done(lane, left);
                result
            }
        };
        let (mongo, redis) = futures_util::join!(run(Lane::Mongo), run(Lane::Redis));
        let (mongo, redis) = (mongo?, redis?);
        let pending = count(sql, "SELECT COUNT(*) AS n FROM outbox")?;
        Ok(Flushed {
            delivered: mongo.delivered + redis.delivered,
            dead: mongo.dead + redis.dead,
            pending,
        })
    }

    /// One lane's run, oldest row first, as the core's verdicts say.
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
            let meta = RowMeta {
                id: row.id,
                lane,
                attempts: row.attempts.clamp(0, u32::MAX as i64) as u32,
            };
            let (outcome, error) = match serde_json::from_str::<Op>(&row.op) {
                Err(e) => (Outcome::Unreadable, format!("unreadable op: {e}")),
                Ok(op) => match deliver(backends, &op).await {
                    Ok(()) => (Outcome::Delivered, String::new()),
                    Err(e) => (e.outcome(), e.to_string()),
                },
            };
            let verdict = self.machine.borrow_mut().report(&meta, outcome, now);
            match verdict {
                Verdict::Delete => {
                    sql.exec("DELETE FROM outbox WHERE id = ?", vec![row.id.into()])?;
                    done.delivered += 1;
                }
                Verdict::Retry { attempts, .. } => {
                    sql.exec(
                        "UPDATE outbox SET attempts = ?, last_error = ? WHERE id = ?",
                        vec![
                            (attempts as i64).into(),
                            error.as_str().into(),
                            row.id.into(),
                        ],
                    )?;
                    if attempts == 1 || attempts % 10 == 0 {
                        crate::log::warn(piano_core::logging::event::BACKEND_ERROR)
                            .error(&error)
                            .field("lane", lane.as_str())
                            .field("attempts", attempts)
                            .msg("outbox delivery failed; will retry")
                            .emit();
                    }
                }
                Verdict::Bury => {
                    crate::log::error(piano_core::logging::event::DEAD_LETTER)
                        .error(&error)
                        .field("lane", lane.as_str())
                        .msg("outbox: op set aside in outbox_dead")
                        .emit();
                    // Objects have no `wait_until`: the report finishes while the object lives.
                    crate::log::report_in_background(
                        piano_core::report::Report::new(
                            piano_core::report::kind::DEAD_LETTER,
                            piano_core::report::Severity::Error,
                            format!("outbox {}: {error}", lane.as_str()),
                        )
                        .tag("lane", lane.as_str()),
                    );
                    self.bury(sql, &row, lane, &error, now)?;
                    done.dead += 1;
                }
            }
            if !verdict.lane_goes_on() {
                break; // later rows wait: order within a lane is kept
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

    /// Whether rows were queued since the alarm was last kicked (the backlog changed).
    pub fn has_new_rows(&self) -> bool {
        self.dirty.get()
    }

    /// Per lane, rows waiting and when the oldest was queued (pushed with the metrics).
    pub fn heads(&self, sql: &SqlStorage) -> Result<[LaneHead; 2]> {
        let mut out = [LaneHead::default(); 2];
        if self.backends.is_none() {
            return Ok(out);
        }
        let tables = count(
            sql,
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
        )?;
        if tables == 0 {
            return Ok(out);
        }
        #[derive(serde::Deserialize)]
        struct Head {
            lane: String,
            n: i64,
            oldest: i64,
        }
        let heads: Vec<Head> = sql
            .exec(
                "SELECT lane, COUNT(*) AS n, MIN(created) AS oldest FROM outbox GROUP BY lane",
                None,
            )?
            .to_array()?;
        for h in heads {
            if let Some(i) = Lane::parse(&h.lane).map(Lane::index) {
                out[i] = LaneHead {
                    depth: h.n.max(0) as u64,
                    oldest: Some(h.oldest.max(0) as u64),
                };
            }
        }
        Ok(out)
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
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Head {
            lane: String,
            attempts: i64,
            last_error: Option<String>,
            created: i64,
        }
        // Per lane, the row at the head of the queue: what delivery is waiting on.
        let heads: Vec<Head> = sql
            .exec(
                "SELECT lane, attempts, last_error, created FROM outbox
                 WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY lane)",
                None,
            )?
            .to_array()?;
        let now = Date::now().as_millis() as i64;
        let lanes: serde_json::Map<String, serde_json::Value> = heads
            .into_iter()
            .map(|h| {
                (
                    h.lane.clone(),
                    serde_json::json!({
                        "oldest_age_ms": (now - h.created).max(0),
                        "attempts": h.attempts,
                        "last_error": h.last_error,
                    }),
                )
            })
            .collect();
        Ok(serde_json::json!({
            "configured": true,
            "pending": count(sql, "SELECT COUNT(*) AS n FROM outbox")?,
            "dead": count(sql, "SELECT COUNT(*) AS n FROM outbox_dead")?,
            "lanes": lanes,
        }))
    }
}

/// An alarm this long past that has not fired is lost (see [`Outbox::alarm_by`]).
const STALE_ALARM_MS: u64 = 5_000;
/// How far past "now" the alarm handler sets the next alarm when it does not know the time of
/// the one running (a new instance woken by it): more than the runtime's clock lag.
const UNKNOWN_FIRED_MARGIN_MS: u64 = 20;

/// Sets the alarm for an absolute time, at least 1 ms from now, and returns the time set.
/// (workers-rs reads a bare `i64` as an offset from now, not as a timestamp: this is the one
/// place that converts.) Never "now": an alarm set from the alarm handler to the very time of
/// the alarm that is running (the clock does not move while code runs without I/O) counts as
/// unchanged, and the runtime deletes it when the handler returns — the room's next deadline
/// (players' activity due) was lost that way.
pub async fn set_alarm_at(storage: &Storage, at_ms: u64, now_ms: u64) -> Result<u64> {
    let offset = at_ms.saturating_sub(now_ms).max(1);
    storage
        .set_alarm(std::time::Duration::from_millis(offset))
        .await?;
    Ok(now_ms + offset)
}

fn count(sql: &SqlStorage, query: &str) -> Result<usize> {
    Ok(sql
        .exec(query, None)?
        .to_array::<Count>()?
        .first()
        .map(|c| c.n.max(0) as usize)
        .unwrap_or(0))
}
