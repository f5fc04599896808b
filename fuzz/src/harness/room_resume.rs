//! The model host's side of resuming (docs/resume.md): what a real host keeps ([`Kept`], built
//! only from `Effect::Keep`), the resume tokens the room handed out (so the fuzzer resumes with
//! real ones, not only guesses), the numbered frames it saw, and the checks of the promises a
//! `Resume` makes. Used by `room.rs`.

use piano_core::identity::Identity;
use piano_core::proto::{self, ResumeFailure, ServerMessage, server_message::Msg as S};
use piano_core::room::{ConnId, ConnRecord, Effect, Kept, Protocol, ReplayDurability, Room};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Tokens offered to resumes (the newest): enough for a drop, a half-open socket and a second
/// tab. Twice as many are remembered for the checks (a spent one must stay spent).
const TOKENS_OFFERED: usize = 4;
/// Numbered frames remembered by seq (the replay buffer holds at most 2048).
const FRAMES_KEPT: usize = 4096;

/// A resume token a `Joined` or `Resumed` carried.
#[derive(Debug, Clone)]
pub struct Token {
    pub token: String,
    /// The connection it was issued to, and who that was.
    pub conn: ConnId,
    pub identity: Identity,
    /// The highest `ServerMessage.seq` that connection received (what its client would
    /// resume from), while it had a socket.
    pub last_seq: u64,
    /// The numbered frames that connection was sent (the newest [`FRAMES_KEPT`]): a complete
    /// resume from below one of them replays it.
    received: BTreeSet<u64>,
    live: bool,
    /// Used by a successful resume: it must never work again.
    spent: bool,
}

/// A `Resume` being fed: on which connection, with what.
pub struct Asked {
    pub conn: ConnId,
    pub token: String,
    pub last_seq: u64,
}

#[derive(Default)]
pub struct Resumes {
    /// What the host keeps, exactly as `Kept::apply` models a host's storage.
    pub kept: Kept,
    pub tokens: VecDeque<Token>,
    /// Every numbered frame sent, by seq: a seq names one frame, byte for byte (a replayed
    /// frame is the broadcast it claims to be).
    sent: BTreeMap<u64, bytes::Bytes>,
    /// The identity each connection was accepted with.
    pub identities: BTreeMap<ConnId, Identity>,
    /// The highest `ClientMessage.seq` each connection sent (carried over by a resume, as the
    /// client keeps numbering): the room cannot acknowledge more.
    pub client_max: BTreeMap<ConnId, u64>,
    /// How the host keeps replay entries (`Room::keep_replay`), set again after each wake.
    pub durability: ReplayDurability,
    /// Resumes that succeeded with `complete: true` and replayed something, and with a snapshot
    /// (the replay test checks that the seeds reach them).
    pub replays: usize,
    pub snapshots: usize,
}

impl Resumes {
    /// Connections suspended now, according to what the host keeps.
    pub fn suspended(&self) -> BTreeSet<ConnId> {
        self.kept
            .sessions
            .iter()
            .filter(|s| s.until.is_some())
            .map(|s| s.record.conn)
            .collect()
    }

    /// The kept sessions against the room and the host's open connections and records: the
    /// room's suspended connections are the kept sessions with a grace period (none open), it
    /// counts them as connections, and the kept sessions of open connections are exactly the
    /// joined protobuf ones, each with the connection's latest record.
    pub fn check_sessions(
        &self,
        room: &Room,
        open: &BTreeSet<ConnId>,
        records: &BTreeMap<ConnId, ConnRecord>,
    ) {
        // The room counts suspended connections too (the host keeps their sessions).
        let kept = &self.kept;
        let suspended = self.suspended();
        assert_eq!(
            room.suspended_count(),
            suspended.len(),
            "the room's suspended connections are not the kept sessions with a grace period"
        );
        assert!(
            suspended.is_disjoint(open),
            "a suspended connection is open: {suspended:?}"
        );
        assert_eq!(
            room.connection_count(),
            open.len() + suspended.len(),
            "the room and the host disagree on the open and suspended connections"
        );
        let session_conns: Vec<ConnId> = kept.sessions.iter().map(|s| s.record.conn).collect();
        let unique: BTreeSet<ConnId> = session_conns.iter().copied().collect();
        assert_eq!(unique.len(), session_conns.len(), "a session kept twice");
        // Every joined protobuf connection is resumable, and nothing else.
        let live_sessions: BTreeSet<ConnId> = kept
            .sessions
            .iter()
            .filter(|s| s.until.is_none())
            .map(|s| s.record.conn)
            .collect();
        let joined_open: BTreeSet<ConnId> = records
            .values()
            .filter(|r| r.joined.is_some() && r.protocol == Protocol::Protobuf)
            .map(|r| r.conn)
            .collect();
        assert_eq!(
            live_sessions, joined_open,
            "the kept sessions of open connections are not the joined connections"
        );
        for s in kept.sessions.iter().filter(|s| s.until.is_none()) {
            assert_eq!(
                Some(&s.record),
                records.get(&s.record.conn),
                "a kept session's record is not the connection's latest record"
            );
        }
    }

    /// The candidate (token, last_seq) pairs a client could present, newest last.
    pub fn candidates(&self) -> Vec<(String, u64)> {
        let skip = self.tokens.len().saturating_sub(TOKENS_OFFERED);
        self.tokens
            .iter()
            .skip(skip)
            .map(|t| (t.token.clone(), t.last_seq))
            .collect()
    }

    /// `conn` lost its socket (or a new connection took the id): its client stops receiving.
    pub fn socket_gone(&mut self, conn: ConnId) {
        for t in self.tokens.iter_mut().filter(|t| t.conn == conn) {
            t.live = false;
        }
    }

    pub fn connected(&mut self, conn: ConnId, identity: &Identity) {
        self.socket_gone(conn);
        self.identities.insert(conn, identity.clone());
        self.client_max.remove(&conn);
    }

    /// A numbered client message on `conn`.
    pub fn numbered(&mut self, conn: ConnId, seq: u64) {
        let m = self.client_max.entry(conn).or_default();
        *m = (*m).max(seq);
    }

    /// A wake: the room numbers on from the clock × 1000 or what the host kept, whichever is
    /// higher. A wake in the same millisecond as the last input, or with the clock moved back,
    /// may give numbers above that again, to other frames (the limit docs/resume.md §2 states:
    /// "a room whose clock was not ahead"; a real wake follows idle time): forget those.
    pub fn woke(&mut self, now: piano_core::Millis) {
        let start = self
            .kept
            .replay
            .iter()
            .map(|e| e.seq)
            .chain(self.kept.sessions.iter().map(|s| s.from_seq))
            .fold(now.saturating_mul(1000), u64::max);
        // Numbers at or above the clock's may be given again: what a client holds from before
        // says nothing about what it will miss (a resume from it is answered as complete).
        let behind = self
            .sent
            .keys()
            .next_back()
            .is_some_and(|s| *s >= now.saturating_mul(1000));
        self.sent.retain(|s, _| *s <= start);
        for t in self.tokens.iter_mut().filter(|_| behind) {
            t.received.clear();
        }
    }

    /// One `Send` the host carries out (already checked to target open connections).
    pub fn observe(&mut self, targets: &[ConnId], msg: &ServerMessage, frame: &bytes::Bytes) {
        if msg.seq > 0 {
            if let Some(before) = self.sent.get(&msg.seq) {
                assert_eq!(
                    before, frame,
                    "two different frames numbered {}: {:?}",
                    msg.seq, msg.msg
                );
            } else {
                self.sent.insert(msg.seq, frame.clone());
                while self.sent.len() > FRAMES_KEPT {
                    self.sent.pop_first();
                }
            }
            for t in self.tokens.iter_mut() {
                if t.live && targets.contains(&t.conn) {
                    t.last_seq = t.last_seq.max(msg.seq);
                    t.received.insert(msg.seq);
                    if t.received.len() > FRAMES_KEPT {
                        t.received.pop_first();
                    }
                }
            }
        }
        let [conn] = targets else { return };
        let (token, last_seq) = match &msg.msg {
            Some(S::Joined(j)) => (j.resume_token.clone(), j.seq),
            Some(S::Resumed(r)) => (r.resume_token.clone(), 0),
            _ => return,
        };
        let Some(identity) = self.identities.get(conn).cloned() else {
            return;
        };
        if token.is_empty() {
            return;
        }
        assert!(
            !self.tokens.iter().any(|t| t.token == token),
            "resume token {token} issued twice"
        );
        self.tokens.push_back(Token {
            token,
            conn: *conn,
            identity,
            last_seq,
            received: BTreeSet::new(),
            live: true,
            spent: false,
        });
        while self.tokens.len() > 2 * TOKENS_OFFERED {
            self.tokens.pop_front();
        }
    }

    /// Checks what the room answered a `Resume` (`effects`, in order).
    pub fn check_answer(&mut self, asked: &Asked, effects: &[Effect]) {
        let conn = asked.conn;
        let to_conn: Vec<ServerMessage> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, frame, .. } if to.as_slice().contains(&conn) => {
                    ServerMessage::decode(frame.as_ref()).ok()
                }
                _ => None,
            })
            .collect();
        let at = to_conn
            .iter()
            .position(|m| matches!(m.msg, Some(S::Resumed(_))));
        let failed = to_conn.iter().find_map(|m| match &m.msg {
            Some(S::ResumeFailed(f)) => Some(f.reason),
            _ => None,
        });
        let token = self.tokens.iter().position(|t| t.token == asked.token);
        let Some(at) = at else {
            if let Some(reason) = failed {
                assert!(
                    reason != ResumeFailure::Unspecified as i32,
                    "ResumeFailed without a reason"
                );
            }
            return;
        };
        assert!(failed.is_none(), "a Resume both failed and succeeded");
        let Some(S::Resumed(resumed)) = &to_conn[at].msg else {
            unreachable!()
        };
        let me = self.identities.get(&conn).map(|i| i.user_id.clone());
        if let Some(i) = token {
            let t = &self.tokens[i];
            assert_eq!(
                Some(&t.identity.user_id),
                me.as_ref(),
                "a Resume with another user's token succeeded"
            );
            assert!(!t.spent, "a spent resume token resumed again");
            assert!(
                resumed.last_client_seq <= self.client_max.get(&t.conn).copied().unwrap_or(0),
                "Resumed.last_client_seq {} is more than the client ever numbered",
                resumed.last_client_seq
            );
            let carried = self.client_max.get(&t.conn).copied().unwrap_or(0);
            self.numbered(conn, carried);
            self.tokens[i].spent = true;
            self.tokens[i].live = false;
        }
        let mut after = &to_conn[at + 1..];
        if resumed.complete {
            // The member's current quota closes a complete resume (quota notices are not
            // replayed).
            if let [rest @ .., last] = after {
                assert!(
                    matches!(last.msg, Some(S::Quota(_))) && last.seq == 0,
                    "a complete resume ends with the current quota: {last:?}"
                );
                after = rest;
            }
            assert!(
                resumed.snapshot.is_none(),
                "complete Resumed with a snapshot"
            );
            assert_eq!(
                after.len(),
                resumed.replayed as usize,
                "Resumed{{complete, replayed: {}}} followed by {} frames",
                resumed.replayed,
                after.len()
            );
            let mut last = asked.last_seq;
            for m in after {
                assert!(
                    m.seq > last,
                    "replayed frame numbered {} after {} (resumed from {})",
                    m.seq,
                    last,
                    asked.last_seq
                );
                last = m.seq;
            }
            // What the connection was sent above `last_seq` it gets again (the replay buffer
            // is complete above `last_seq`, and those frames were meant for it).
            if let Some(t) = token.map(|i| &self.tokens[i]) {
                let replayed: BTreeSet<u64> = after.iter().map(|m| m.seq).collect();
                let missing: Vec<u64> = t
                    .received
                    .range(asked.last_seq.saturating_add(1)..)
                    .filter(|s| !replayed.contains(s))
                    .copied()
                    .collect();
                assert!(
                    missing.is_empty(),
                    "a complete resume from {} left out frames {missing:?} its connection was sent",
                    asked.last_seq
                );
            }
            if resumed.replayed > 0 {
                self.replays += 1;
            }
        } else {
            assert!(
                resumed.snapshot.is_some() && resumed.replayed == 0,
                "an incomplete Resumed without a snapshot, or with replayed frames"
            );
            self.snapshots += 1;
        }
        // The new token (harvested by `observe`) is live from the frames that follow.
        if let Some(t) = self.tokens.back_mut()
            && t.conn == conn
        {
            let from = match &resumed.snapshot {
                Some(j) => j.seq,
                None => asked.last_seq,
            };
            t.last_seq = t.last_seq.max(from);
        }
    }
}

/// What a `Frame` input asks of resuming: a `Resume` (returned) and a numbered message (noted).
pub fn asked(r: &mut Resumes, conn: ConnId, bytes: &[u8]) -> Option<Asked> {
    let msg = proto::ClientMessage::decode(bytes).ok()?;
    if msg.seq > 0 {
        r.numbered(conn, msg.seq);
    }
    match msg.msg? {
        proto::client_message::Msg::Resume(res) => Some(Asked {
            conn,
            token: res.token,
            last_seq: res.last_seq,
        }),
        _ => None,
    }
}
