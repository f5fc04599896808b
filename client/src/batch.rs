//! Outgoing notes in batches, as the protocol wants and the web client does: the first event
//! opens a batch stamped with the server time; each event keeps its delay from it; the batch
//! goes out [`BATCH_MS`] after it opened, or at once when it holds [`MAX_EVENTS`]. No I/O: event
//! times are the server's clock as the caller estimates it (ms); when a batch is due is a local
//! instant (a clock estimate that moves, as the first Pongs move it, must not send a batch at
//! once or hold it back).

use piano_core::proto::{self, note_event};
use std::time::Duration;
use tokio::time::Instant;

/// How long the first event of a batch waits for company.
pub const BATCH_MS: f64 = 150.0;
/// The room refuses larger batches (`piano_core::notes::MAX_EVENTS_PER_BATCH`).
pub const MAX_EVENTS: usize = piano_core::notes::MAX_EVENTS_PER_BATCH;
/// An event's delay is at most this after its batch's time (the protocol's bound).
const MAX_DELAY_MS: f64 = piano_core::notes::MAX_EVENT_DELAY_MS as f64;

#[derive(Debug, Default)]
pub struct Batcher {
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    /// The first event's server time: the batch's `time`.
    start: f64,
    /// When it goes out (local).
    due: Instant,
    events: Vec<proto::NoteEvent>,
}

impl Batcher {
    /// Adds an event played at server time `now` (`local`: the local instant now); a batch that
    /// must go out now (full, or this event would be too late for it) is returned.
    pub fn push(
        &mut self,
        kind: note_event::Kind,
        now: f64,
        local: Instant,
    ) -> Option<proto::NoteBatch> {
        let mut ready = None;
        if self
            .open
            .as_ref()
            .is_some_and(|o| now - o.start > MAX_DELAY_MS)
        {
            ready = self.take();
        }
        let Open { start, events, .. } = self.open.get_or_insert_with(|| Open {
            start: now,
            due: local + Duration::from_millis(BATCH_MS as u64),
            events: Vec::new(),
        });
        let delay = (now - *start).round().clamp(0.0, MAX_DELAY_MS) as u32;
        events.push(proto::NoteEvent {
            delay,
            kind: Some(kind),
        });
        if events.len() >= MAX_EVENTS {
            // Only one batch can be ready: the stale one was taken before this one opened.
            return ready.or_else(|| self.take());
        }
        ready
    }

    /// When the open batch is due (local), if one is open.
    pub fn due_at(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.due)
    }

    /// The open batch, if it is due at the local instant `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<proto::NoteBatch> {
        if self.due_at().is_some_and(|due| now >= due) {
            self.take()
        } else {
            None
        }
    }

    /// The open batch, due or not.
    pub fn take(&mut self) -> Option<proto::NoteBatch> {
        let Open { start, events, .. } = self.open.take()?;
        (!events.is_empty()).then(|| proto::NoteBatch {
            time: start.max(0.0).round() as u64,
            events,
            sender_id: String::new(),
        })
    }
}

/// A note-on event.
pub fn note_on(note: u32, velocity: u32) -> note_event::Kind {
    note_event::Kind::NoteOn(proto::NoteOn {
        note,
        velocity,
        channel: 0,
    })
}

/// A note-off event.
pub fn note_off(note: u32) -> note_event::Kind {
    note_event::Kind::NoteOff(proto::NoteOff { note, channel: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn events_keep_their_delays_and_go_out_when_due() {
        let t0 = Instant::now();
        let mut b = Batcher::default();
        assert_eq!(b.due_at(), None);
        assert!(b.push(note_on(60, 90), 1000.0, t0).is_none());
        assert!(b.push(note_off(60), 1040.4, t0 + ms(40)).is_none());
        assert_eq!(b.due_at(), Some(t0 + ms(150)));
        assert!(b.take_due(t0 + ms(100)).is_none());
        let batch = b.take_due(t0 + ms(150)).expect("due");
        assert_eq!(batch.time, 1000);
        let delays: Vec<u32> = batch.events.iter().map(|e| e.delay).collect();
        assert_eq!(delays, vec![0, 40]);
        assert!(b.take().is_none(), "nothing left");
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let mut b = Batcher::default();
        for i in 0..MAX_EVENTS - 1 {
            assert!(
                b.push(note_on(60, 1), i as f64 * 0.1, Instant::now())
                    .is_none()
            );
        }
        let full = b.push(note_on(61, 1), 50.0, Instant::now()).expect("full");
        assert_eq!(full.events.len(), MAX_EVENTS);
        assert_eq!(b.due_at(), None);
    }

    #[test]
    fn a_late_event_starts_a_new_batch() {
        let mut b = Batcher::default();
        let t0 = Instant::now();
        b.push(note_on(60, 90), 0.0, t0);
        // The caller did not flush for two seconds: the old batch goes, the event opens another.
        let old = b
            .push(note_off(60), 2000.0, t0 + ms(2000))
            .expect("stale batch");
        assert_eq!(old.time, 0);
        let new = b.take().expect("new batch");
        assert_eq!((new.time, new.events[0].delay), (2000, 0));
    }

    #[test]
    fn the_due_instant_ignores_the_clock_estimate() {
        // The estimate of the server's clock jumps by seconds (the first Pong after a join):
        // the batch still goes out BATCH_MS after it opened, stamped with the server time.
        let t0 = Instant::now();
        let mut b = Batcher::default();
        b.push(note_on(60, 90), 5_000.0, t0);
        assert!(b.take_due(t0 + ms(149)).is_none(), "not at once");
        let batch = b
            .take_due(t0 + ms(150))
            .expect("due on time, not 60 s later");
        assert_eq!(batch.time, 5_000);
        b.push(note_on(60, 90), 1_000_000.0, t0);
        assert_eq!(b.due_at(), Some(t0 + ms(150)));
    }
}
