//! A listener that falls behind its room (sans-I/O: a host measures a connection's outbound
//! queue and asks [`Backlog::offer`] before queueing each frame for it).
//!
//! A piano room's traffic is mostly note batches and cursor moves ([`Delivery::Fresh`]): worth
//! hearing while they are fresh, worth nothing as a late rush. Everything else
//! ([`Delivery::Reliable`]: chat, arrivals and departures, settings, the crown, errors) changes
//! what the client believes about the room and must arrive.
//!
//! So a connection's queue has two marks. From half full ([`SHED_FROM`]) its fresh frames are
//! skipped, and stay skipped until the queue is down to a quarter ([`SHED_UNTIL`]): the gap
//! keeps a listener at the mark from getting every other batch. The first frame queued after
//! that is preceded by a notice (`room::fell_behind`: `FellBehind`, or an MPP `notification`) of how
//! many were skipped, so the client can release notes left sounding. A reliable frame that
//! finds the queue full closes the connection (1013: reconnect), as before this existed: what
//! must arrive cannot be dropped.
//!
//! A host that cannot see a socket's queue (workerd shows no `bufferedAmount`) uses
//! [`Unacked`]: what it sent a connection since the connection last sent anything stands in for
//! the queue, and clients prove they read by sending (the web client pings after every
//! [`ACK_EVERY_BYTES`] it reads; MPP clients send `t` every 20 s).

use crate::proto::server_message::Msg as S;

/// Whether a frame may be skipped for a connection that is behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Must arrive, or the connection must end.
    #[default]
    Reliable,
    /// Worth sending only while the listener keeps up (note batches, cursor moves).
    Fresh,
}

impl Delivery {
    /// The class of a server message.
    pub fn of(msg: &S) -> Delivery {
        match msg {
            S::Notes(_) | S::Cursor(_) => Delivery::Fresh,
            _ => Delivery::Reliable,
        }
    }
}

/// Skipping starts when the queue holds this share of its capacity (numerator, denominator)…
pub const SHED_FROM: (usize, usize) = (1, 2);
/// …and ends when it is down to this share.
pub const SHED_UNTIL: (usize, usize) = (1, 4);

/// What to do with one frame for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queue it; when `notice` is `Some(n)`, first queue `room::fell_behind(protocol, n)`.
    Queue { notice: Option<u32> },
    /// Do not send it (counted towards the next notice).
    Skip,
    /// The queue is full and the frame must arrive: close the connection (1013).
    Close,
}

/// One connection's state between frames.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    shedding: bool,
    skipped: u32,
}

impl Backlog {
    /// A frame of class `delivery` and size `len` for a queue holding `queued` of `capacity`
    /// (frames, `len` 1; or bytes: any unit, the same for all three; a notice counts as one).
    pub fn offer(
        &mut self,
        delivery: Delivery,
        queued: usize,
        len: usize,
        capacity: usize,
    ) -> Verdict {
        let capacity = capacity.max(1);
        if self.shedding && queued <= mark(capacity, SHED_UNTIL) {
            self.shedding = false;
        } else if !self.shedding && queued >= mark(capacity, SHED_FROM) {
            self.shedding = true;
        }
        if delivery == Delivery::Fresh && self.shedding {
            self.skipped = self.skipped.saturating_add(1);
            return Verdict::Skip;
        }
        let notice =
            (!self.shedding && self.skipped > 0).then(|| std::mem::take(&mut self.skipped));
        // The notice takes a place in the queue too.
        let needed = len + usize::from(notice.is_some());
        if queued.saturating_add(needed) > capacity {
            self.skipped = self.skipped.saturating_add(notice.unwrap_or(0));
            // What may be skipped is, even where it would not fit; only what must arrive closes.
            if delivery == Delivery::Fresh {
                self.skipped = self.skipped.saturating_add(1);
                return Verdict::Skip;
            }
            return Verdict::Close;
        }
        Verdict::Queue { notice }
    }

    /// The notice to queue now, when nothing else is coming: skipped frames not yet told and
    /// the queue back under the lower mark (a host asks when the room is quiet, e.g. at its
    /// keep-alive ping, so a listener is not left waiting for the room's next frame).
    pub fn notice_due(&mut self, queued: usize, capacity: usize) -> Option<u32> {
        if self.skipped == 0
            || queued > mark(capacity.max(1), SHED_UNTIL)
            || queued.saturating_add(1) > capacity
        {
            return None;
        }
        self.shedding = false;
        Some(std::mem::take(&mut self.skipped))
    }

    /// Frames skipped and not yet told.
    #[cfg(test)]
    fn untold(&self) -> u32 {
        self.skipped
    }
}

/// Where a share of `capacity` lies.
fn mark(capacity: usize, (n, d): (usize, usize)) -> usize {
    capacity.saturating_mul(n) / d
}

/// How often (bytes read) the web client tells a host that cannot see its queue that it reads
/// (a ping, at most one per [`ACK_MIN_INTERVAL_MS`]: within the ping budget).
pub const ACK_EVERY_BYTES: usize = 128 * 1024;
/// The least time between two such pings.
pub const ACK_MIN_INTERVAL_MS: u64 = 250;

/// A connection owed this many times its bound (sent and skipped) without a word back has
/// stopped reading altogether.
pub const STALLED_FACTOR: usize = 4;

/// [`Backlog`] for a host that counts what it sent since the client last sent anything.
#[derive(Debug, Clone, Default)]
pub struct Unacked {
    backlog: Backlog,
    sent: usize,
    skipped_bytes: usize,
}

impl Unacked {
    /// A frame of `len` bytes; `bound`: the bytes a client may be sent without a word back.
    pub fn offer(&mut self, delivery: Delivery, len: usize, bound: usize) -> Verdict {
        match self.backlog.offer(delivery, self.sent, len, bound) {
            Verdict::Queue { notice } => {
                self.sent = self.sent.saturating_add(len);
                Verdict::Queue { notice }
            }
            Verdict::Skip => {
                self.skipped_bytes = self.skipped_bytes.saturating_add(len);
                let owed = self.sent.saturating_add(self.skipped_bytes);
                if owed > bound.saturating_mul(STALLED_FACTOR) {
                    Verdict::Close
                } else {
                    Verdict::Skip
                }
            }
            Verdict::Close => Verdict::Close,
        }
    }

    /// The client sent a frame: it reads, and its count starts over. Returns the count of
    /// frames skipped and not yet told: the host sends the notice now.
    pub fn heard(&mut self) -> Option<u32> {
        self.sent = 0;
        self.skipped_bytes = 0;
        self.backlog.notice_due(0, usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Delivery::*;

    #[test]
    fn classes() {
        assert_eq!(Delivery::of(&S::Notes(Default::default())), Fresh);
        assert_eq!(Delivery::of(&S::Cursor(Default::default())), Fresh);
        for reliable in [
            S::Chat(Default::default()),
            S::ParticipantJoined(Default::default()),
            S::ParticipantLeft(Default::default()),
            S::SettingsChanged(Default::default()),
            S::OwnerChanged(Default::default()),
            S::Kicked(Default::default()),
            S::Error(Default::default()),
            S::Typing(Default::default()),
        ] {
            assert_eq!(Delivery::of(&reliable), Reliable, "{reliable:?}");
        }
    }

    /// (delivery, queued of 8) → verdict, in order, on one connection.
    #[test]
    fn marks_hysteresis_notice_and_close() {
        let q = |notice| Verdict::Queue { notice };
        let steps: &[(Delivery, usize, Verdict)] = &[
            (Fresh, 0, q(None)),
            (Fresh, 3, q(None)),
            // Half full: fresh frames are skipped, reliable ones still queue.
            (Fresh, 4, Verdict::Skip),
            (Reliable, 4, q(None)),
            (Fresh, 5, Verdict::Skip),
            // Draining, but above a quarter: still skipping.
            (Fresh, 3, Verdict::Skip),
            // A reliable frame while skipping carries no notice yet (not caught up).
            (Reliable, 3, q(None)),
            // A quarter: caught up; the next frame is preceded by the notice of 3.
            (Fresh, 2, q(Some(3))),
            (Fresh, 2, q(None)),
            // Full: reliable frames close; fresh ones are skipped first.
            (Fresh, 8, Verdict::Skip),
            (Reliable, 8, Verdict::Close),
        ];
        let mut b = Backlog::default();
        for (i, (delivery, queued, verdict)) in steps.iter().enumerate() {
            assert_eq!(b.offer(*delivery, *queued, 1, 8), *verdict, "step {i}");
        }
    }

    #[test]
    fn the_notice_needs_room_too() {
        let mut b = Backlog::default();
        assert_eq!(b.offer(Fresh, 6, 1, 8), Verdict::Skip);
        // Caught up to 2 of 8 with the notice: both fit.
        assert_eq!(
            b.offer(Reliable, 2, 1, 8),
            Verdict::Queue { notice: Some(1) }
        );
        // A queue of one has no room for the notice and the frame: a frame that may be
        // skipped is, one that must arrive closes, and the count is kept.
        let mut b = Backlog::default();
        assert_eq!(b.offer(Fresh, 0, 1, 1), Verdict::Skip);
        assert_eq!(b.offer(Fresh, 0, 1, 1), Verdict::Skip);
        assert_eq!(b.offer(Reliable, 1, 1, 1), Verdict::Close);
        assert_eq!(b.untold(), 2);
    }

    /// A quiet room: the notice is due once the queue is low, without waiting for a frame.
    #[test]
    fn the_notice_is_due_when_the_queue_is_low() {
        let mut b = Backlog::default();
        assert_eq!(b.notice_due(0, 8), None, "nothing skipped");
        assert_eq!(b.offer(Fresh, 5, 1, 8), Verdict::Skip);
        assert_eq!(b.notice_due(3, 8), None, "still above a quarter");
        assert_eq!(b.notice_due(2, 8), Some(1));
        assert_eq!(b.notice_due(0, 8), None, "told once");
        assert_eq!(b.offer(Fresh, 0, 1, 8), Verdict::Queue { notice: None });
    }

    /// Bytes sent without a word back (bound 1,000): fresh frames are skipped from 500, what
    /// must arrive closes past 1,000, and a client owed 4,000 has stopped reading.
    #[test]
    fn unacked_bytes_stand_in_for_the_queue() {
        let mut u = Unacked::default();
        let q = |notice| Verdict::Queue { notice };
        for _ in 0..5 {
            assert_eq!(u.offer(Fresh, 100, 1000), q(None));
        }
        assert_eq!(u.offer(Fresh, 100, 1000), Verdict::Skip);
        assert_eq!(u.offer(Reliable, 100, 1000), q(None));
        // The client sent something: it reads, and is told at once.
        assert_eq!(u.heard(), Some(1));
        assert_eq!(u.offer(Fresh, 100, 1000), q(None));
        assert_eq!(u.heard(), None);
        // A frame that must arrive and would pass the bound closes.
        let mut u = Unacked::default();
        assert_eq!(u.offer(Reliable, 900, 1000), q(None));
        assert_eq!(u.offer(Reliable, 200, 1000), Verdict::Close);
        // Silent while owed four bounds: stopped reading.
        let mut u = Unacked::default();
        assert_eq!(u.offer(Fresh, 600, 1000), q(None));
        let mut verdicts = Vec::new();
        for _ in 0..40 {
            verdicts.push(u.offer(Fresh, 100, 1000));
        }
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Skip).count(), 34);
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
    }
}
