//! Bounds on note batches. A batch that breaks one is refused whole with a typed error that says
//! which bound, so a buggy client learns what to fix instead of losing notes silently.

use crate::Millis;
use crate::proto::{NoteBatch, note_event::Kind};

/// Most events in one batch (a dense run at ~1,000 notes/s with 200 ms batching stays under it).
pub const MAX_EVENTS_PER_BATCH: usize = 300;
/// Largest delay of an event after its batch time.
pub const MAX_EVENT_DELAY_MS: u32 = 1000;
/// How far a batch time may be from the server clock, either way. Clients sync their clock with
/// Ping/Pong; this only catches broken clocks and replayed batches.
pub const MAX_BATCH_CLOCK_SKEW_MS: u64 = 10_000;

/// Checks a batch received at server time `now`; on failure, a message for the sender.
pub fn validate(batch: &NoteBatch, now: Millis) -> Result<(), String> {
    if batch.events.is_empty() {
        return Err("a note batch needs at least one event".into());
    }
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(format!(
            "a note batch holds at most {MAX_EVENTS_PER_BATCH} events, got {}",
            batch.events.len()
        ));
    }
    if batch.time.abs_diff(now) > MAX_BATCH_CLOCK_SKEW_MS {
        return Err(format!(
            "batch time {} is more than {MAX_BATCH_CLOCK_SKEW_MS} ms from server time {now}; sync with ping",
            batch.time
        ));
    }
    for (i, event) in batch.events.iter().enumerate() {
        if event.delay > MAX_EVENT_DELAY_MS {
            return Err(format!(
                "event {i}: delay {} ms is over {MAX_EVENT_DELAY_MS}",
                event.delay
            ));
        }
        check_event(event.kind.as_ref()).map_err(|e| format!("event {i}: {e}"))?;
    }
    Ok(())
}

fn check_event(kind: Option<&Kind>) -> Result<(), String> {
    let in_range = |what: &str, v: u32, lo: u32, hi: u32| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("{what} {v} is outside {lo}-{hi}"))
        }
    };
    match kind {
        None => Err("event has no kind".into()),
        Some(Kind::NoteOn(n)) => {
            in_range("note", n.note, 0, 127)?;
            in_range("velocity", n.velocity, 1, 127)?;
            in_range("channel", n.channel, 0, 15)
        }
        Some(Kind::NoteOff(n)) => {
            in_range("note", n.note, 0, 127)?;
            in_range("channel", n.channel, 0, 15)
        }
        Some(Kind::ControlChange(c)) => {
            in_range("control", c.control, 0, 127)?;
            in_range("value", c.value, 0, 127)?;
            in_range("channel", c.channel, 0, 15)
        }
        Some(Kind::ProgramChange(p)) => {
            in_range("program", p.program, 0, 127)?;
            in_range("channel", p.channel, 0, 15)
        }
        Some(Kind::PitchBend(p)) => {
            if !(-8192..=8191).contains(&p.value) {
                return Err(format!("pitch bend {} is outside -8192-8191", p.value));
            }
            in_range("channel", p.channel, 0, 15)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    fn on(delay: u32, note: u32, velocity: u32) -> NoteEvent {
        NoteEvent {
            delay,
            kind: Some(note_event::Kind::NoteOn(NoteOn {
                note,
                velocity,
                channel: 0,
            })),
        }
    }

    fn batch(time: u64, events: Vec<NoteEvent>) -> NoteBatch {
        NoteBatch {
            time,
            events,
            sender_id: String::new(),
        }
    }

    #[test]
    fn accepts_a_normal_batch() {
        let b = batch(
            1_000_000,
            vec![
                on(0, 60, 100),
                NoteEvent {
                    delay: 5,
                    kind: Some(note_event::Kind::ControlChange(ControlChange {
                        control: 64,
                        value: 127,
                        channel: 0,
                    })),
                },
                NoteEvent {
                    delay: 1000,
                    kind: Some(note_event::Kind::PitchBend(PitchBend {
                        value: -8192,
                        channel: 15,
                    })),
                },
            ],
        );
        assert_eq!(validate(&b, 1_000_500), Ok(()));
        assert_eq!(validate(&batch(1, vec![on(0, 21, 1); 300]), 1), Ok(()));
    }

    #[test]
    fn refuses_each_bound() {
        let now = 100_000;
        let cases = [
            (batch(now, vec![]), "at least one"),
            (batch(now, vec![on(0, 60, 1); 301]), "at most 300"),
            (batch(now - 10_001, vec![on(0, 60, 1)]), "from server time"),
            (batch(now + 10_001, vec![on(0, 60, 1)]), "from server time"),
            (batch(now, vec![on(1001, 60, 1)]), "delay 1001"),
            (batch(now, vec![on(0, 128, 1)]), "note 128"),
            (batch(now, vec![on(0, 60, 0)]), "velocity 0"),
            (batch(now, vec![on(0, 60, 128)]), "velocity 128"),
            (
                batch(
                    now,
                    vec![NoteEvent {
                        delay: 0,
                        kind: None,
                    }],
                ),
                "no kind",
            ),
        ];
        for (b, expected) in cases {
            let err = validate(&b, now).expect_err(expected);
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
