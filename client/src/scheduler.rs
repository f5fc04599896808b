//! Received note batches → local playback instants, as the web client plays them: every event
//! at its sender's server time + delay, moved onto the local clock by the Ping/Pong offset, plus
//! one fixed latency (a batch leaves its sender up to [`BATCH_MS`] after its first note, plus
//! room for jitter): the same delay for every note is what keeps the performance's timing. A
//! note-on already more than [`LATE_MS`] late is skipped (replays after a resume, a stall:
//! play what is still to come, not the past in a rush); releases always apply, at once if late.
//! No I/O: the caller passes its clock.

use crate::batch::BATCH_MS;
use crate::clock::Clock;
use piano_core::proto::{self, note_event};

/// Remote notes play this long after their sender played them.
pub const LATENCY_MS: f64 = BATCH_MS + 100.0;
/// A note-on due longer ago than this is not played.
pub const LATE_MS: f64 = 500.0;

/// One event to play, at local time `at` (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    pub at: f64,
    pub sender_id: String,
    pub kind: note_event::Kind,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    pub latency_ms: f64,
    /// Note-ons skipped for being too late.
    pub skipped: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            latency_ms: LATENCY_MS,
            skipped: 0,
        }
    }
}

impl Scheduler {
    /// The events of `batch`, received at local time `now`, with their local playback times,
    /// in the batch's order (late releases at `now`).
    pub fn schedule(
        &mut self,
        batch: &proto::NoteBatch,
        clock: &Clock,
        now: f64,
    ) -> Vec<Scheduled> {
        let base = clock.to_local(batch.time as f64) + self.latency_ms;
        let mut out = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let Some(kind) = e.kind else { continue };
            let at = base + f64::from(e.delay);
            let is_on = matches!(kind, note_event::Kind::NoteOn(_));
            if is_on && at < now - LATE_MS {
                self.skipped += 1;
                continue;
            }
            out.push(Scheduled {
                at: at.max(now),
                sender_id: batch.sender_id.clone(),
                kind,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{note_off, note_on};

    fn batch(time: u64, events: Vec<(u32, note_event::Kind)>) -> proto::NoteBatch {
        proto::NoteBatch {
            time,
            events: events
                .into_iter()
                .map(|(delay, k)| proto::NoteEvent {
                    delay,
                    kind: Some(k),
                })
                .collect(),
            sender_id: "p1".into(),
        }
    }

    #[test]
    fn events_keep_their_spacing_on_the_local_clock() {
        let mut clock = Clock::default();
        clock.pong(0.0, 1005, 10.0); // server 1000 ms ahead
        let mut s = Scheduler::default();
        let b = batch(5000, vec![(0, note_on(60, 90)), (120, note_off(60))]);
        let out = s.schedule(&b, &clock, 4050.0);
        let at: Vec<f64> = out.iter().map(|e| e.at).collect();
        assert_eq!(at, vec![4000.0 + LATENCY_MS, 4120.0 + LATENCY_MS]);
        assert_eq!(out[0].sender_id, "p1");
    }

    #[test]
    fn late_note_ons_are_skipped_late_releases_play_now() {
        let clock = Clock::default();
        let mut s = Scheduler::default();
        let b = batch(1000, vec![(0, note_on(60, 90)), (10, note_off(60))]);
        let now = 1000.0 + LATENCY_MS + LATE_MS + 100.0;
        let out = s.schedule(&b, &clock, now);
        assert_eq!(s.skipped, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].at, now);
        assert!(matches!(out[0].kind, note_event::Kind::NoteOff(_)));
    }
}
