//! The room core driven by arbitrary input sequences, through a model host that does what a
//! real host does with the effects (keeps the records, applies the durable changes, forgets
//! closed connections) and checks the room's promises after every input.
//!
//! Input format: byte 0 picks the room name ([`ROOMS`]); then a list of operations, each one
//! byte `op` followed by its arguments:
//!
//! | `op % 24` | operation |
//! |---|---|
//! | 0, 1 | `Connect` a connection id (0-7) as an identity (the cast, or arbitrary strings; with a session, expiry and network) |
//! | 2 | `Disconnect` |
//! | 3-8 | a binary frame holding a structured `ClientMessage` ([`room_input::client_message`]; its `Resume` as in op 21) |
//! | 9, 10 | a binary frame of raw bytes (up to 2 KiB) |
//! | 11 | a text frame |
//! | 12 | time moves: 0-63 ms, 0-6.3 s, 0-63 min forward, or up to 63 s back |
//! | 13 | the directory answers: `RoomList` or `RoomListChanged` |
//! | 14 | hibernation (unless a password check is in flight): `Room::restore_with` from what the host kept (records, durable state, the `Kept` built from `Effect::Keep`), which must rebuild the same room |
//! | 15 | a host call: `refresh_report`, `count_activity`, `Input::Stop`, tight `set_limits`, an oversized frame, or `keep_replay` (how the host keeps replay entries; again after each wake) |
//! | 16 | `SessionEnded` (one session or all) or `IdentityChanged` for a user |
//! | 17 | `Tick`: now, or at `next_deadline` as a host's alarm would |
//! | 18 | the host answers a pending `VerifyPassword` with `PasswordChecked` (truthfully) |
//! | 19 | `SubscribeRefused` (the directory's per-user cap) |
//! | 20 | `Dropped` (the socket failed: a joined connection is suspended, no longer open on the host) |
//! | 21 | a `Resume` frame: one of the last 4 tokens a `Joined`/`Resumed` carried, or any string; from the seq that connection received, a little less or more, 0, or any |
//! | 22 | a numbered structured `ClientMessage` (`seq`: the next, a repeat, an older one, or any) |
//! | 23 | a client back on a new socket: `Connect` as the user of one of the kept tokens, then `Resume` (that token first) |
//!
//! Ops 0-19 kept their numbers when 20-23 were added (a byte of 20-23 meant ops 0-3 before):
//! saved inputs mostly mean what they meant.
//!
//! Frames may name connections the host never opened (the room must refuse, not panic), but
//! never a suspended one (it has no socket).
//!
//! Invariants checked after every input: every `Send` has targets, each an open connection
//! (not one closed earlier in the same batch of effects) and no duplicates; every frame is a
//! `ServerMessage`; `Close` and `Remember` only name open connections (or the unknown one the
//! frame came from); the room's connection count is the host's; participants ≤ connections,
//! participant ids are unique, and the participants are exactly the users with a joined
//! connection record; `admit_connection` predicts whether `Connect` refuses (4004);
//! `VerifyPassword` names an open connection with no other check pending; a `Tick` before
//! `next_deadline` closes nothing, and after a `Tick` the deadline is in the future; the host's copy of the durable state, built only from `Persist` effects,
//! equals the room's (nothing durable changes unreported); a restored room shows the same
//! participants, settings and ownership.
//!
//! Resuming ([`super::room_resume`]): a `Send` never targets a suspended connection; a `Close`
//! may name one (its session ended during the grace period); participants are the users with a
//! joined open connection or a suspended one; the room's suspended connections are the kept
//! sessions with a grace period, none open, and the connection count is open + suspended; the
//! kept sessions of open connections are exactly the joined protobuf ones, each with the
//! connection's latest record; a seq numbers one frame only (a replayed frame is the broadcast
//! it claims to be); a token is issued once; `Resumed{complete}` is followed by exactly
//! `replayed` frames to that connection, numbered above the resume's `last_seq`, increasing, and
//! an incomplete one carries a snapshot; a `Resume` with another user's token, or a spent one,
//! never succeeds; `Resumed.last_client_seq` is at most what the client numbered.

use super::input::Bytes;
use super::room_input::{self as make, ROOMS};
use super::room_resume::{self as resume, Resumes};
use piano_core::Millis;
use piano_core::limits::MAX_FRAME_BYTES;
use piano_core::limits::close;
use piano_core::proto::{self, ClientMessage, ServerMessage, client_message::Msg as C};
use piano_core::room::budget::{Limits, Rate};
use piano_core::room::stored::PasswordHash;
use piano_core::room::stored::{RoomKind, Stored};
use piano_core::room::{
    ConnId, ConnRecord, DirectoryOp, Effect, Frame, Input, ReplayDurability, Room,
};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};

/// Where the clock starts (2027).
pub const T0: Millis = 1_800_000_000_000;
/// PBKDF2 runs (room passwords set or checked) allowed per input: each costs milliseconds,
/// and a fuzzer spending its time hashing finds nothing. Further ones are skipped.
const PASSWORD_WORK: u32 = 3;
const SEED: [u8; 32] = [7; 32];

pub struct Host {
    pub room: Room,
    name: String,
    open: BTreeSet<ConnId>,
    records: BTreeMap<ConnId, ConnRecord>,
    stored: Stored,
    now: Millis,
    password_work: u32,
    /// Password checks asked for and not answered yet: (connection, password, hash).
    pending: Vec<(ConnId, String, PasswordHash)>,
    /// The most participants seen at once, and the joins completed after a password check
    /// (the replay test checks that the seeds reach those states).
    pub most_participants: usize,
    pub password_joins: usize,
    trace: bool,
    /// Who is here according to the room's `Effect::Presence` (tracked from the start and
    /// again after each wake), and whether an input ran since the last wake.
    present: BTreeSet<String>,
    presence_synced: bool,
    /// Wakes so far: each draws a new seed, as the hosts do (`random_seed()`).
    wakes: u32,
    /// What the host keeps for resuming, the tokens it saw, and the resume checks.
    pub resumes: Resumes,
}

impl Host {
    pub fn new(name: &str) -> Host {
        let mut room = Room::new(name, SEED);
        room.track_presence(true);
        Host {
            room,
            name: name.to_owned(),
            open: BTreeSet::new(),
            records: BTreeMap::new(),
            stored: Stored::new(RoomKind::of(name)),
            now: T0,
            password_work: 0,
            pending: Vec::new(),
            most_participants: 0,
            password_joins: 0,
            trace: false,
            present: BTreeSet::new(),
            presence_synced: true,
            wakes: 0,
            resumes: Resumes::default(),
        }
    }

    /// Feeds one input and checks the effects and the room afterwards; returns the effects.
    pub fn feed(&mut self, input: Input<'_>) -> Vec<Effect> {
        let suspended = self.resumes.suspended();
        // A suspended connection has no socket: no frame can arrive for it.
        if let Input::Frame { conn, .. } = &input
            && suspended.contains(conn)
        {
            return Vec::new();
        }
        // A frame for a connection the host never opened is answered with a Close for it.
        let unknown = match &input {
            Input::Frame { conn, .. } if !self.open.contains(conn) => Some(*conn),
            _ => None,
        };
        let asked = match &input {
            Input::Frame {
                conn,
                frame: Frame::Binary(bytes),
            } if self.open.contains(conn) => resume::asked(&mut self.resumes, *conn, bytes),
            _ => None,
        };
        // What the host asked before accepting the socket (a reused id: the room drops the old
        // connection first, which changes the count, so only fresh ids are predicted).
        let mut admitted = None;
        if let Input::Connect { conn, identity } = &input {
            if !self.open.contains(conn) {
                admitted = Some((*conn, self.room.admit_connection(identity).is_ok()));
            }
            self.forget(*conn);
            self.open.insert(*conn);
            self.resumes.connected(*conn, identity);
            // Real hosts never reuse an id (the edge draws 53 random bits, the fallback counts),
            // so an answer still in flight for the old connection would name an unknown one:
            // the reused id must not receive it. (The room cannot tell the two apart.)
            self.pending.retain(|p| p.0 != *conn);
        }
        if let Input::Disconnect { conn } | Input::Dropped { conn } = &input {
            self.forget(*conn);
        }
        if self.trace {
            eprintln!("@{} {input:?}", self.now.wrapping_sub(T0) as i64);
        }
        let stop = matches!(input, Input::Stop);
        let effects = self.room.handle(input, self.now);
        self.presence_synced = true;
        if self.trace {
            for e in &effects {
                match e {
                    Effect::Send { to, frame, .. } => eprintln!(
                        "    Send {:?} {:?}",
                        to.as_slice(),
                        ServerMessage::decode(frame.as_ref()).map(|m| m.msg)
                    ),
                    other => eprintln!("    {other:?}"),
                }
            }
        }
        self.apply(&effects, unknown);
        if let Some(asked) = &asked {
            self.resumes.check_answer(asked, &effects);
        }
        if stop {
            // Stop withdraws everyone it published; a host keeping the room goes on tracking,
            // and the next input reports everyone present again.
            assert!(
                self.present.is_empty(),
                "Stop left {:?} published",
                self.present
            );
            self.room.track_presence(true);
            self.presence_synced = false;
        }
        if let Some((conn, ok)) = admitted {
            let refused = effects.iter().any(|e| {
                matches!(e, Effect::Close { conn: c, code, .. }
                    if *c == conn && *code == close::TOO_MANY_CONNECTIONS)
            });
            assert_eq!(
                refused, !ok,
                "admit_connection said {ok}, but Connect refused: {refused}"
            );
        }
        self.check();
        effects
    }

    fn forget(&mut self, conn: ConnId) {
        self.open.remove(&conn);
        self.records.remove(&conn);
        self.resumes.socket_gone(conn);
    }

    /// Carries out the effects as a host would, checking each.
    fn apply(&mut self, effects: &[Effect], unknown: Option<ConnId>) {
        // A connection suspended when the batch began may still be closed by it (its session
        // ended during the grace period): there is no socket to close, but nothing is wrong.
        let was_suspended = self.resumes.suspended();
        let mut remembered_suspended = BTreeMap::new();
        for e in effects {
            match e {
                Effect::Send { to, frame, .. } => {
                    let targets = to.as_slice();
                    assert!(!targets.is_empty(), "Send without targets");
                    let unique: BTreeSet<_> = targets.iter().collect();
                    assert_eq!(unique.len(), targets.len(), "duplicate targets {targets:?}");
                    let suspended = self.resumes.suspended();
                    for t in targets {
                        assert!(
                            !suspended.contains(t),
                            "Send to connection {t}, which is suspended (it has no socket)"
                        );
                        assert!(
                            self.open.contains(t) || Some(*t) == unknown,
                            "Send to connection {t}, which is not open (open: {:?})",
                            self.open
                        );
                    }
                    let msg = ServerMessage::decode(frame.as_ref()).expect("frames decode");
                    assert!(msg.msg.is_some(), "empty ServerMessage");
                    self.resumes.observe(targets, &msg, frame);
                }
                // A room change leaves this room as a close does (the socket lives on elsewhere).
                Effect::Close { conn, .. } | Effect::ChangeRoom { conn, .. } => {
                    let suspended =
                        was_suspended.contains(conn) || self.resumes.suspended().contains(conn);
                    assert!(
                        self.open.contains(conn) || Some(*conn) == unknown || suspended,
                        "Close of connection {conn}, which is neither open nor suspended"
                    );
                    self.forget(*conn);
                }
                // A suspended connection's record (a profile changed on another tab) has no
                // socket to go with: hosts skip it; its kept session must carry it instead.
                Effect::Remember(record)
                    if was_suspended.contains(&record.conn)
                        && !self.open.contains(&record.conn) =>
                {
                    remembered_suspended.insert(record.conn, record.clone());
                }
                Effect::Remember(record) => {
                    assert!(
                        self.open.contains(&record.conn),
                        "Remember for connection {}, which is neither open nor suspended",
                        record.conn
                    );
                    self.records.insert(record.conn, record.clone());
                }
                Effect::Persist(change) => self.stored.apply(change.clone()),
                Effect::Directory(DirectoryOp::Subscribe { conn, .. }) => {
                    assert!(
                        self.open.contains(conn),
                        "Subscribe for a closed connection"
                    );
                }
                Effect::Keep(keep) => self.resumes.kept.apply(keep.clone()),
                Effect::Directory(_) | Effect::Stats(_) => {}
                Effect::Presence { joined, left } => {
                    for p in joined {
                        assert!(
                            self.present.insert(p.user_id.clone()),
                            "reported present twice: {}",
                            p.user_id
                        );
                    }
                    for u in left {
                        assert!(
                            self.present.remove(u),
                            "reported gone but never present: {u}"
                        );
                    }
                }
                Effect::VerifyPassword {
                    conn,
                    password,
                    hash,
                } => {
                    assert!(
                        self.open.contains(conn),
                        "VerifyPassword for a closed connection"
                    );
                    assert!(
                        !self.pending.iter().any(|p| p.0 == *conn),
                        "a second password check for connection {conn} while one is pending"
                    );
                    self.pending.push((*conn, password.clone(), hash.clone()));
                }
            }
        }
        self.check_remembered_suspended(&remembered_suspended);
    }

    /// After [`Host::apply`]: the record of a suspended connection the room remembered is
    /// its kept session's (unless the session ended in the same batch).
    fn check_remembered_suspended(&self, remembered: &BTreeMap<ConnId, ConnRecord>) {
        for (conn, record) in remembered {
            if let Some(s) = self
                .resumes
                .kept
                .sessions
                .iter()
                .find(|s| s.record.conn == *conn)
            {
                assert_eq!(
                    &s.record, record,
                    "a suspended connection's remembered record is not in its kept session"
                );
            }
        }
    }

    fn check(&mut self) {
        self.most_participants = self.most_participants.max(self.room.participant_count());
        let room = &self.room;
        if self.presence_synced {
            let here: BTreeSet<String> = room.participants().map(|p| p.user_id.clone()).collect();
            assert_eq!(
                here, self.present,
                "presence reported differs from the participants"
            );
        }
        self.resumes.check_sessions(room, &self.open, &self.records);
        let kept = &self.resumes.kept;
        assert!(room.participant_count() <= room.connection_count());
        let ids: BTreeSet<_> = room.participants().map(|p| p.id.clone()).collect();
        assert_eq!(
            ids.len(),
            room.participant_count(),
            "duplicate participants"
        );
        let users: BTreeSet<_> = room.participants().map(|p| p.user_id.clone()).collect();
        let joined: BTreeSet<_> = self
            .records
            .values()
            .filter(|r| r.joined.is_some())
            .map(|r| r.identity.user_id.clone())
            .chain(
                kept.sessions
                    .iter()
                    .filter(|s| s.until.is_some() && s.record.joined.is_some())
                    .map(|s| s.record.identity.user_id.clone()),
            )
            .collect();
        assert_eq!(
            users, joined,
            "participants are not the users with joined (open or suspended) connections"
        );
        assert_eq!(
            self.records.keys().collect::<Vec<_>>(),
            self.open.iter().collect::<Vec<_>>(),
            "an open connection without a record, or a record without a connection"
        );
        assert!(
            *room.stored() == self.stored,
            "durable state changed without a Persist: room {:?} host {:?}",
            room.stored(),
            self.stored
        );
    }

    /// Hibernation: rebuild the room from what the host kept; it must look the same.
    fn hibernate(&mut self) {
        // A room with a password check in flight is busy, not idle: workerd does not evict an
        // object awaiting a promise, and the fallback never unloads a live room (a restart
        // drops the sockets too). The pending join is not in the records, by design.
        if !self.pending.is_empty() {
            return;
        }
        // A grace period that ended is the host's alarm, due: it runs before the room can be
        // evicted (else the restored room rightly differs: that player left meanwhile).
        if self
            .resumes
            .kept
            .sessions
            .iter()
            .any(|s| s.until.is_some_and(|t| t <= self.now))
        {
            self.tick(false);
        }
        if self.trace {
            eprintln!("@{} hibernate", self.now.wrapping_sub(T0) as i64);
        }
        self.resumes.woke(self.now);
        let (room, effects) = Room::restore_with(
            self.name.clone(),
            Some(self.stored.clone()),
            self.records.values().cloned(),
            self.resumes.kept.clone(),
            self.now,
            {
                self.wakes += 1;
                let mut seed = SEED;
                seed[..4].copy_from_slice(&self.wakes.to_le_bytes());
                seed
            },
        );
        let before: Vec<_> = self.room.participants().cloned().collect();
        let after: Vec<_> = room.participants().cloned().collect();
        assert_eq!(before, after, "participants differ after restore");
        assert_eq!(self.room.settings_proto(), room.settings_proto());
        assert_eq!(self.room.ownership_proto(), room.ownership_proto());
        self.room = room;
        // Right after the restore, as the hosts do.
        self.room.keep_replay(self.resumes.durability);
        self.room.track_presence(true);
        self.present.clear();
        self.presence_synced = false;
        self.apply(&effects, None);
        self.check();
    }

    /// Whether feeding `bytes` would run PBKDF2 (set a password, or check one on a Join).
    fn costs_password_work(&self, bytes: &[u8]) -> bool {
        let Ok(ClientMessage { msg: Some(msg), .. }) = ClientMessage::decode(bytes) else {
            return false;
        };
        // Joins no longer hash in the room (the host answers `VerifyPassword`, counted there).
        let sets = |s: &proto::UpdateSettings| s.password.as_ref().is_some_and(|p| !p.is_empty());
        match msg {
            C::UpdateSettings(s) => sets(&s),
            C::Join(j) => j.create_settings.as_ref().is_some_and(sets),
            _ => false,
        }
    }

    /// The host's answer to the `i`th pending password check, computed as a host would
    /// (`hash.verify`), within the hashing allowance; past it the check stays unanswered.
    fn answer(&mut self, i: usize) {
        if self.pending.is_empty() || self.password_work >= PASSWORD_WORK {
            return;
        }
        self.password_work += 1;
        let (conn, password, hash) = self.pending.remove(i % self.pending.len());
        let ok = hash.verify(&password);
        let effects = self.feed(Input::PasswordChecked { conn, ok });
        if effects
            .iter()
            .any(|e| matches!(e, Effect::Remember(r) if r.conn == conn && r.joined.is_some()))
        {
            self.password_joins += 1;
        }
    }

    /// A `Tick`, now or at the room's deadline (as a host's alarm would fire).
    fn tick(&mut self, at_deadline: bool) {
        let deadline = self.room.next_deadline();
        if at_deadline && let Some(d) = deadline {
            self.now = self.now.max(d);
        }
        let effects = self.feed(Input::Tick);
        if deadline.is_none_or(|d| self.now < d) {
            assert!(
                !effects.iter().any(|e| matches!(e, Effect::Close { .. })),
                "a Tick before the deadline closed a connection"
            );
        }
        assert!(
            self.room.next_deadline().is_none_or(|d| d > self.now),
            "after a Tick the deadline {:?} is not in the future ({})",
            self.room.next_deadline(),
            self.now
        );
    }

    fn frame(&mut self, conn: ConnId, bytes: &[u8]) {
        if self.costs_password_work(bytes) {
            if self.password_work >= PASSWORD_WORK {
                return;
            }
            self.password_work += 1;
        }
        self.feed(Input::Frame {
            conn,
            frame: Frame::Binary(bytes),
        });
    }
}

/// The whole target: one room, a sequence of operations (see the module docs).
pub fn run(data: &[u8]) {
    run_host(data);
}

/// [`run`], returning the host for a look at what the input reached.
pub fn run_host(data: &[u8]) -> Host {
    let mut b = Bytes::new(data);
    let name = b.pick(&ROOMS);
    let mut host = Host::new(name);
    let mut ops = 0;
    // FUZZ_TRACE=1 prints each operation's effects (for reading a crash input).
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    while !b.done() && ops < 400 {
        ops += 1;
        host.trace = trace;
        step(&mut host, &mut b);
    }
    // Everyone leaves: the room must empty cleanly.
    for conn in host.open.clone() {
        host.feed(Input::Disconnect { conn });
    }
    // Suspended ones leave when their grace period ends (the host's alarm).
    if !host.resumes.suspended().is_empty() {
        host.now += Limits::default().resume_grace_ms;
        host.tick(true);
    }
    assert!(
        host.resumes.suspended().is_empty(),
        "suspended after the grace period"
    );
    assert_eq!(
        host.room.participant_count(),
        0,
        "participants left in an empty room"
    );
    host
}

fn step(host: &mut Host, b: &mut Bytes) {
    let op = b.u8() % OPS;
    let conn = ConnId::from(b.u8() % 8);
    match op {
        0 | 1 => {
            let identity = make::pick_identity(b, host.now);
            host.feed(Input::Connect { conn, identity });
        }
        2 => {
            host.feed(Input::Disconnect { conn });
        }
        3..=8 => {
            let msg = make::client_message(b, host.now, &host.resumes.candidates());
            host.frame(conn, &msg.encode_to_vec());
        }
        9 | 10 => {
            let raw = b.slice(2048);
            host.frame(conn, raw);
        }
        11 => {
            let text = b.string(64);
            host.feed(Input::Frame {
                conn,
                frame: Frame::Text(&text),
            });
        }
        12 => {
            let t = b.u8();
            let n = u64::from(t & 63);
            host.now = match t >> 6 {
                0 => host.now + n,
                1 => host.now + n * 100,
                2 => host.now + n * 60_000,
                _ => host.now - n * 1000,
            };
        }
        13 => {
            if b.bool() {
                let rooms = (0..b.u8() % 4).map(|_| make::summary(b)).collect();
                host.feed(Input::RoomList { conn, rooms });
            } else {
                host.feed(Input::RoomListChanged(make::delta(b)));
            }
        }
        14 => host.hibernate(),
        15 => match b.u8() % 6 {
            0 => {
                let effects = host.room.refresh_report(host.now);
                host.apply(&effects, None);
            }
            1 => host.room.count_activity(b.bool()),
            2 => {
                host.feed(Input::Stop);
            }
            3 => host.room.set_limits(tight_limits()),
            5 => {
                let d = b.pick(&DURABILITY);
                host.resumes.durability = d;
                host.room.keep_replay(d);
            }
            _ => {
                let big = vec![0u8; MAX_FRAME_BYTES + 1];
                host.frame(conn, &big);
            }
        },
        16 => {
            let user_id = make::pick_user(b);
            let input = match b.u8() % 4 {
                0 => Input::IdentityChanged { user_id },
                1 => Input::SessionEnded {
                    user_id,
                    session_id: None,
                },
                k => Input::SessionEnded {
                    user_id,
                    session_id: Some(make::SESSIONS[usize::from(k - 2)].to_owned()),
                },
            };
            host.feed(input);
        }
        17 => host.tick(b.bool()),
        18 => host.answer(usize::from(b.u8())),
        19 => {
            host.feed(Input::SubscribeRefused { conn });
        }
        20 => {
            host.feed(Input::Dropped { conn });
        }
        21 => {
            let r = make::resume(b, &host.resumes.candidates());
            host.frame(conn, &resume_frame(r));
        }
        22 => {
            let mut msg = make::client_message(b, host.now, &host.resumes.candidates());
            let sent = host.resumes.client_max.get(&conn).copied().unwrap_or(0);
            msg.seq = match b.u8() % 5 {
                0 | 1 => sent + 1,
                2 => sent,
                3 => sent.saturating_sub(u64::from(b.u8())),
                _ => u64::from(b.u16()),
            };
            host.frame(conn, &msg.encode_to_vec());
        }
        _ => {
            // A client back on a new socket: connect as the user a token was issued to and
            // resume with it (a drop, a half-open socket, or another user's token).
            // The token of that user is the resume's first choice ([`make::resume`] reads 0).
            let mut tokens = host.resumes.candidates();
            let k = usize::from(b.u8());
            let identity = match tokens.len() {
                0 => make::pick_identity(b, host.now),
                n => {
                    tokens.rotate_left(k % n);
                    let t = &host.resumes.tokens;
                    t[t.len() - n + k % n].identity.clone()
                }
            };
            host.feed(Input::Connect { conn, identity });
            let r = make::resume(b, &tokens);
            host.frame(conn, &resume_frame(r));
        }
    }
}

/// How many operations `step` knows (the table in the module docs).
const OPS: u8 = 24;

const DURABILITY: [ReplayDurability; 3] = [
    ReplayDurability::Memory,
    ReplayDurability::WhileSuspended,
    ReplayDurability::Always,
];

fn resume_frame(r: proto::Resume) -> Vec<u8> {
    ClientMessage {
        msg: Some(C::Resume(r)),
        seq: 0,
    }
    .encode_to_vec()
}

/// Limits a host might configure, small enough for the fuzzer to hit every one of them.
fn tight_limits() -> Limits {
    Limits {
        frames: Rate::every(100, 8),
        join: Rate::every(1000, 2),
        abuse_drops: 4,
        conns_per_user: 1,
        conns_per_network: 2,
        password_checks: Rate::every(1000, 1),
        ..Limits::default()
    }
}
