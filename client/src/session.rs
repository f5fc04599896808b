//! A connection's resume state (docs/resume.md §5), with no I/O: the highest
//! `ServerMessage.seq` received, the latest resume token, and the numbered client messages kept
//! until the room acknowledges them (`Pong` / `Resumed.last_client_seq`).

use piano_core::proto::{self, client_message, note_event, server_message};
use std::collections::VecDeque;

/// At most this many messages are kept (the contract's bound, as the web client).
pub const MAX_KEPT: usize = 1024;
/// How long a message is kept when the room did not say its grace period (its default).
const DEFAULT_GRACE_MS: u64 = piano_core::limits::RESUME_GRACE_MS;
/// The room refuses a batch further than 10 s from its clock; a margin for the trip.
const MAX_BATCH_AGE_MS: u64 = piano_core::notes::MAX_BATCH_CLOCK_SKEW_MS - 2_000;

/// One numbered message waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub seq: u64,
    pub msg: client_message::Msg,
    /// When it was numbered (the caller's clock, ms).
    pub at: u64,
    /// It went out on some socket (so the room may have it).
    pub sent: bool,
}

/// The numbered messages not acknowledged yet, in order.
#[derive(Debug, Clone, Default)]
pub struct Unacked {
    next: u64,
    kept: VecDeque<Kept>,
}

impl Unacked {
    /// Numbers `msg` and keeps it: at most [`MAX_KEPT`], none older than the grace period
    /// (after it the room has given the place up: nothing could be re-sent to it).
    pub fn add(&mut self, msg: client_message::Msg, now: u64, grace_ms: u64) -> u64 {
        self.next += 1;
        self.kept.push_back(Kept {
            seq: self.next,
            msg,
            at: now,
            sent: false,
        });
        let grace = if grace_ms == 0 {
            DEFAULT_GRACE_MS
        } else {
            grace_ms
        };
        let oldest = now.saturating_sub(grace);
        while self.kept.len() > MAX_KEPT || self.kept.front().is_some_and(|k| k.at < oldest) {
            self.kept.pop_front();
        }
        self.next
    }

    /// Marks `seq` as gone out on a socket.
    pub fn mark_sent(&mut self, seq: u64) {
        if let Some(k) = self.kept.iter_mut().find(|k| k.seq == seq) {
            k.sent = true;
        }
    }

    /// The room processed everything numbered up to `seq`.
    pub fn ack(&mut self, upto: u64) {
        while self.kept.front().is_some_and(|k| k.seq <= upto) {
            self.kept.pop_front();
        }
    }

    /// A fresh Join: what went out on an earlier socket may or may not have reached the place
    /// that is gone, so it is not sent again; what never left stays.
    pub fn forget_sent(&mut self) {
        self.kept.retain(|k| !k.sent);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Kept> {
        self.kept.iter()
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// What to send again for `k` at server time `server_now`: as it was, except a note batch
    /// too old for the room's clock check, of which only the releases go (restamped to now) so
    /// nobody's note keeps sounding; `None` if it had none. Its number stays.
    pub fn resendable(k: &Kept, server_now: u64) -> Option<client_message::Msg> {
        let client_message::Msg::Notes(batch) = &k.msg else {
            return Some(k.msg.clone());
        };
        if batch.time.saturating_add(MAX_BATCH_AGE_MS) >= server_now {
            return Some(k.msg.clone());
        }
        let events: Vec<proto::NoteEvent> = batch
            .events
            .iter()
            .filter(|e| is_release(e))
            .map(|e| proto::NoteEvent { delay: 0, ..*e })
            .collect();
        (!events.is_empty()).then(|| {
            client_message::Msg::Notes(proto::NoteBatch {
                time: server_now,
                events,
                sender_id: String::new(),
            })
        })
    }
}

fn is_release(e: &proto::NoteEvent) -> bool {
    match &e.kind {
        Some(note_event::Kind::NoteOff(_)) => true,
        Some(note_event::Kind::ControlChange(c)) => c.control == 64 && c.value < 64,
        _ => false,
    }
}

/// What a client needs to resume after a drop.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The latest resume token (`Joined` / `Resumed`); empty when the room gave none.
    pub token: String,
    /// The highest `ServerMessage.seq` received.
    pub last_seq: u64,
    /// How long the room keeps the place after a drop (`Joined.resume_grace_ms`).
    pub grace_ms: u32,
    /// Numbered messages not acknowledged yet.
    pub unacked: Unacked,
    /// Numbered messages that arrived with a seq not above the highest before (must stay 0).
    pub out_of_order: u32,
}

impl Session {
    /// Bookkeeping for every message received.
    pub fn saw(&mut self, seq: u64, msg: &server_message::Msg) {
        if seq != 0 {
            if seq <= self.last_seq {
                self.out_of_order += 1;
            }
            self.last_seq = self.last_seq.max(seq);
        }
        match msg {
            server_message::Msg::Joined(j) => self.joined(j),
            server_message::Msg::Resumed(r) => {
                self.token = r.resume_token.clone();
                self.unacked.ack(r.last_client_seq);
                if let Some(s) = &r.snapshot {
                    self.last_seq = self.last_seq.max(s.seq);
                }
            }
            server_message::Msg::Pong(p) => self.unacked.ack(p.last_client_seq),
            _ => {}
        }
    }

    fn joined(&mut self, j: &proto::Joined) {
        self.token = j.resume_token.clone();
        self.grace_ms = j.resume_grace_ms;
        self.last_seq = self.last_seq.max(j.seq);
    }

    /// The `Resume` to send on a new connection.
    pub fn resume_message(&self) -> proto::Resume {
        proto::Resume {
            token: self.token.clone(),
            last_seq: self.last_seq,
        }
    }

    /// Whether a resume can be tried at all (the room gave a token).
    pub fn can_resume(&self) -> bool {
        !self.token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(t: &str) -> client_message::Msg {
        client_message::Msg::Chat(proto::SendChat { text: t.into() })
    }

    fn batch(time: u64, kinds: Vec<note_event::Kind>) -> client_message::Msg {
        client_message::Msg::Notes(proto::NoteBatch {
            time,
            events: kinds
                .into_iter()
                .map(|k| proto::NoteEvent {
                    delay: 5,
                    kind: Some(k),
                })
                .collect(),
            sender_id: String::new(),
        })
    }

    #[test]
    fn numbers_grow_and_acks_forget_in_order() {
        let mut u = Unacked::default();
        assert_eq!(u.add(chat("a"), 0, 0), 1);
        assert_eq!(u.add(chat("b"), 0, 0), 2);
        assert_eq!(u.add(chat("c"), 0, 0), 3);
        u.ack(2);
        let left: Vec<u64> = u.iter().map(|k| k.seq).collect();
        assert_eq!(left, vec![3]);
        u.ack(0);
        assert_eq!(u.len(), 1);
        assert_eq!(u.add(chat("d"), 0, 0), 4, "numbers are never reused");
    }

    #[test]
    fn bounded_by_count_and_by_the_grace_period() {
        let mut u = Unacked::default();
        for i in 0..(MAX_KEPT as u64 + 10) {
            u.add(chat("x"), i, 1_000_000);
        }
        assert_eq!(u.len(), MAX_KEPT);
        assert_eq!(u.iter().next().map(|k| k.seq), Some(11));
        u.add(chat("late"), 2_000_000, 1000);
        assert_eq!(u.len(), 1, "everything older than the grace period is gone");
    }

    #[test]
    fn a_fresh_join_keeps_only_what_never_left() {
        let mut u = Unacked::default();
        u.add(chat("a"), 0, 0);
        u.add(chat("b"), 0, 0);
        u.mark_sent(1);
        u.forget_sent();
        let left: Vec<u64> = u.iter().map(|k| k.seq).collect();
        assert_eq!(left, vec![2]);
    }

    #[test]
    fn old_batches_resend_only_their_releases_restamped() {
        use note_event::Kind;
        let on = Kind::NoteOn(proto::NoteOn {
            note: 60,
            velocity: 90,
            channel: 0,
        });
        let off = Kind::NoteOff(proto::NoteOff {
            note: 60,
            channel: 0,
        });
        let k = Kept {
            seq: 7,
            msg: batch(1000, vec![on, off]),
            at: 0,
            sent: true,
        };
        assert_eq!(
            Unacked::resendable(&k, 5000),
            Some(k.msg.clone()),
            "fresh: as it was"
        );
        let Some(client_message::Msg::Notes(b)) = Unacked::resendable(&k, 20_000) else {
            panic!("releases are re-sent");
        };
        assert_eq!(b.time, 20_000);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].delay, 0);
        let only_on = Kept {
            msg: batch(1000, vec![on]),
            ..k
        };
        assert_eq!(Unacked::resendable(&only_on, 20_000), None);
    }

    #[test]
    fn session_tracks_seq_tokens_and_acks() {
        let mut s = Session::default();
        s.unacked.add(chat("a"), 0, 0);
        s.unacked.add(chat("b"), 0, 0);
        let joined = proto::Joined {
            resume_token: "t1".into(),
            resume_grace_ms: 5000,
            seq: 10,
            ..Default::default()
        };
        s.saw(0, &server_message::Msg::Joined(joined));
        assert_eq!((s.token.as_str(), s.last_seq, s.grace_ms), ("t1", 10, 5000));
        s.saw(12, &server_message::Msg::ChatCleared(proto::ChatCleared {}));
        s.saw(11, &server_message::Msg::ChatCleared(proto::ChatCleared {}));
        assert_eq!((s.last_seq, s.out_of_order), (12, 1));
        let pong = proto::Pong {
            last_client_seq: 1,
            ..Default::default()
        };
        s.saw(0, &server_message::Msg::Pong(pong));
        assert_eq!(s.unacked.len(), 1);
        let resumed = proto::Resumed {
            resume_token: "t2".into(),
            last_client_seq: 2,
            ..Default::default()
        };
        s.saw(0, &server_message::Msg::Resumed(resumed));
        assert!(s.unacked.is_empty());
        assert_eq!(s.resume_message().token, "t2");
        assert_eq!(s.resume_message().last_seq, 12);
    }
}
