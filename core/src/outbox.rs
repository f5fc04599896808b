//! The outbox's rules, once for both hosts (docs/architecture.md §5): which queued write goes
//! out next, when a lane is retried, when a row becomes a dead letter, and which of an action's
//! changes reach MongoDB at all.
//!
//! The host keeps the rows (the Durable Object's SQLite at the edge, a SQLite file in the
//! fallback), written in the same step as the change they mirror, and performs the deliveries;
//! this state machine does no I/O. A host's loop:
//!
//! 1. after storing rows: [`Outbox::queued`]; on start (or wake) [`Outbox::set_waiting`] for
//!    what its storage holds;
//! 2. [`Outbox::next_lane`] names a lane to deliver now (at most one delivery run per lane at
//!    a time); the host reads that lane's oldest rows (at most [`BATCH`]), delivers them in
//!    order and hands each result to [`Outbox::report`], which says what to do with the row
//!    ([`Verdict`]) and whether the lane goes on; then [`Outbox::lane_done`];
//! 3. it comes back at [`Outbox::poll_timeout`] (the alarm at the edge, a timer in the
//!    fallback), as quinn-proto's `poll_timeout`.
//!
//! The rules:
//! - **Lanes.** One ordered lane per backend: rows of a lane go out oldest first and one at a
//!   time, so a later write never overtakes an earlier one; a failing backend holds up its own
//!   lane only.
//! - **Backoff.** A transient failure keeps the row and stops its lane until
//!   [`retry_delay_ms`] (1 s doubling to 60 s) has passed; a success resets it.
//! - **Dead letters.** A row the backend refuses as it is (a validation error, a malformed
//!   op) would fail forever: once it has been tried [`REFUSALS_BEFORE_DEAD`] times it is set
//!   aside (kept for the operator, never silently dropped) and the lane goes on. A row the
//!   host cannot read back is set aside at once. Transient failures never make a dead letter:
//!   an outage delays data, it does not lose it.
//! - **Idempotent redelivery.** A row is deleted only once delivered. A delivery whose answer
//!   was lost (a crash, a timeout) is delivered again; the ops are idempotent (upserts keyed by
//!   a stable id, `$set`, `$max`, `HSET`), so that changes nothing.
//! - **Coalescing.** Of one action's changes only each field's final state is mirrored
//!   ([`final_changes`]), and a newer write of the same document fields replaces a queued older
//!   one (the host deletes rows with the same supersede key before inserting), so a long
//!   outage leaves one row per field (plus the chat), not one per change.

use crate::Millis;
use crate::room::stored::Change;

pub use crate::lane::Lane;

/// Rows of one lane delivered per run before the host yields (and comes back at once if more
/// are waiting), so one run never takes long.
pub const BATCH: usize = 100;

/// Tries of a row the backend refuses before it is set aside (a refusal that was misjudged,
/// e.g. a gateway's error page, gets a second chance).
pub const REFUSALS_BEFORE_DEAD: u32 = 3;

/// Backoff after `attempts` failed deliveries of a lane's oldest row: 1 s, 2 s, 4 s … 60 s.
pub fn retry_delay_ms(attempts: u32) -> u64 {
    let exp = attempts.saturating_sub(1).min(6);
    (1000u64 << exp).min(60_000)
}

/// What the host knows of a stored row when it delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMeta {
    pub id: i64,
    pub lane: Lane,
    /// Failed deliveries so far, as stored with the row.
    pub attempts: u32,
}

/// How one delivery went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend acknowledged the write.
    Delivered,
    /// The backend failed: `transient` ones (unreachable, timeouts, 5xx, 429) may succeed
    /// later; others are refusals of the op as it is.
    Failed { transient: bool },
    /// The host could not read the stored row back (a newer or corrupt format).
    Unreadable,
}

/// What the host does with a row after a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered: delete the row; the lane goes on.
    Delete,
    /// Keep the row, store `attempts` (and the error) with it; the lane stops until `at`.
    Retry { attempts: u32, at: Millis },
    /// Move the row to the dead letters (with the error); the lane goes on.
    Bury,
}

impl Verdict {
    /// Whether the host delivers the lane's next row in this run.
    pub fn lane_goes_on(self) -> bool {
        !matches!(self, Verdict::Retry { .. })
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct LaneState {
    /// The host's storage holds rows of this lane.
    waiting: bool,
    /// A delivery run is in progress (between `next_lane` and `lane_done`).
    busy: bool,
    /// No delivery before this time (backoff after a failure).
    retry_at: Millis,
}

/// The delivery state of one host's outbox (one Durable Object's, one fallback process's).
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    lanes: [LaneState; 2],
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Rows of `lane` were stored.
    pub fn queued(&mut self, lane: Lane) {
        self.lanes[lane.index()].waiting = true;
    }

    /// What the host's storage holds (on start, or after looking): rows of `lane` or none.
    pub fn set_waiting(&mut self, lane: Lane, waiting: bool) {
        self.lanes[lane.index()].waiting = waiting;
    }

    /// A lane whose rows should be delivered now, marked busy until [`Outbox::lane_done`]:
    /// it has rows, no run of it is in progress, and it is not backing off.
    pub fn next_lane(&mut self, now: Millis) -> Option<Lane> {
        let lane = Lane::ALL.into_iter().find(|l| {
            let s = &self.lanes[l.index()];
            s.waiting && !s.busy && s.retry_at <= now
        })?;
        self.lanes[lane.index()].busy = true;
        Some(lane)
    }

    /// The result of delivering `row`; the host applies the verdict to the row and, unless
    /// [`Verdict::lane_goes_on`], ends the lane's run there (later rows wait: order is kept).
    pub fn report(&mut self, row: &RowMeta, outcome: Outcome, now: Millis) -> Verdict {
        let lane = &mut self.lanes[row.lane.index()];
        let attempts = row.attempts.saturating_add(1);
        match outcome {
            Outcome::Delivered => {
                lane.retry_at = 0;
                Verdict::Delete
            }
            Outcome::Unreadable => Verdict::Bury,
            Outcome::Failed { transient: false } if attempts >= REFUSALS_BEFORE_DEAD => {
                Verdict::Bury
            }
            Outcome::Failed { .. } => {
                let at = now.saturating_add(retry_delay_ms(attempts));
                lane.retry_at = at;
                Verdict::Retry { attempts, at }
            }
        }
    }

    /// The lane's run ended; `rows_left`: its storage still holds rows (a full batch, a row
    /// waiting for its retry, rows stored meanwhile).
    pub fn lane_done(&mut self, lane: Lane, rows_left: bool) {
        let s = &mut self.lanes[lane.index()];
        s.busy = false;
        s.waiting = rows_left;
    }

    /// When the host should come back to deliver (`now` if a lane is due already; `None`
    /// when nothing waits). Lanes in a run are left out: their run's end asks again.
    pub fn poll_timeout(&self, now: Millis) -> Option<Millis> {
        self.lanes
            .iter()
            .filter(|s| s.waiting && !s.busy)
            .map(|s| s.retry_at.max(now))
            .min()
    }

    /// No delivery of `lane` before this time (`None`: not backing off).
    pub fn backing_off_until(&self, lane: Lane, now: Millis) -> Option<Millis> {
        Some(self.lanes[lane.index()].retry_at).filter(|&at| at > now)
    }
}

/// Of one action's persisted changes, those whose mirror reaches MongoDB: only the last change
/// of each field (one input may pass through intermediate states, a dropped crown is first
/// ownerless and then remembers its owner, that other deployments must never read), and every
/// chat change (each is its own document). Order is kept.
pub fn final_changes<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Vec<&'a Change> {
    let changes: Vec<&Change> = changes.into_iter().collect();
    let per_message = |c: &Change| {
        matches!(
            c,
            Change::ChatAppended(_) | Change::ChatDeleted(_) | Change::ChatCleared
        )
    };
    changes
        .iter()
        .enumerate()
        .filter(|&(i, c)| {
            let kind = std::mem::discriminant(*c);
            per_message(c)
                || !changes[i + 1..]
                    .iter()
                    .any(|later| std::mem::discriminant(*later) == kind)
        })
        .map(|(_, c)| *c)
        .collect()
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
