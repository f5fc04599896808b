//! The room core driven by arbitrary input sequences, through a model host that does what a
//! real host does with the effects (keeps the records, applies the durable changes, forgets
//! closed connections) and checks the room's promises after every input.
//!
//! Input format: byte 0 picks the room name ([`ROOMS`]); then a list of operations, each one
//! byte `op` followed by its arguments:
//!
//! | `op % 20` | operation |
//! |---|---|
//! | 0, 1 | `Connect` a connection id (0-7) as an identity (the cast, or arbitrary strings; with a session, expiry and network) |
//! | 2 | `Disconnect` |
//! | 3-8 | a binary frame holding a structured `ClientMessage` ([`room_input::client_message`]) |
//! | 9, 10 | a binary frame of raw bytes (up to 2 KiB) |
//! | 11 | a text frame |
//! | 12 | time moves: 0-63 ms, 0-6.3 s, 0-63 min forward, or up to 63 s back |
//! | 13 | the directory answers: `RoomList` or `RoomListChanged` |
//! | 14 | hibernation (unless a password check is in flight): `Room::restore` from what the host kept, which must rebuild the same room |
//! | 15 | a host call: `refresh_report`, `count_activity`, `Input::Stop`, `track_presence`, tight `set_limits`, or an oversized frame |
//! | 16 | `SessionEnded` (one session or all) or `IdentityChanged` for a user |
//! | 17 | `Tick`: now, or at `next_deadline` as a host's alarm would |
//! | 18 | the host answers a pending `VerifyPassword` with `PasswordChecked` (truthfully) |
//! | 19 | `SubscribeRefused` (the directory's per-user cap) |
//!
//! Frames may name connections the host never opened (the room must refuse, not panic).
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

use super::input::Bytes;
use super::room_input::{self as make, ROOMS};
use piano_core::Millis;
use piano_core::limits::MAX_FRAME_BYTES;
use piano_core::limits::close;
use piano_core::proto::{self, ClientMessage, ServerMessage, client_message::Msg as C};
use piano_core::room::budget::{Limits, Rate};
use piano_core::room::stored::PasswordHash;
use piano_core::room::stored::{RoomKind, Stored};
use piano_core::room::{ConnId, ConnRecord, DirectoryOp, Effect, Frame, Input, Room};
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
        }
    }

    /// Feeds one input and checks the effects and the room afterwards; returns the effects.
    pub fn feed(&mut self, input: Input<'_>) -> Vec<Effect> {
        // A frame for a connection the host never opened is answered with a Close for it.
        let unknown = match &input {
            Input::Frame { conn, .. } if !self.open.contains(conn) => Some(*conn),
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
            // Real hosts never reuse an id (the edge draws 53 random bits, the fallback counts),
            // so an answer still in flight for the old connection would name an unknown one:
            // the reused id must not receive it. (The room cannot tell the two apart.)
            self.pending.retain(|p| p.0 != *conn);
        }
        if let Input::Disconnect { conn } = &input {
            self.forget(*conn);
        }
        if self.trace {
            eprintln!("@{} {input:?}", self.now - T0);
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
    }

    /// Carries out the effects as a host would, checking each.
    fn apply(&mut self, effects: &[Effect], unknown: Option<ConnId>) {
        for e in effects {
            match e {
                Effect::Send { to, frame, .. } => {
                    let targets = to.as_slice();
                    assert!(!targets.is_empty(), "Send without targets");
                    let unique: BTreeSet<_> = targets.iter().collect();
                    assert_eq!(unique.len(), targets.len(), "duplicate targets {targets:?}");
                    for t in targets {
                        assert!(
                            self.open.contains(t) || Some(*t) == unknown,
                            "Send to connection {t}, which is not open (open: {:?})",
                            self.open
                        );
                    }
                    let msg = ServerMessage::decode(frame.as_ref()).expect("frames decode");
                    assert!(msg.msg.is_some(), "empty ServerMessage");
                }
                // A room change leaves this room as a close does (the socket lives on elsewhere).
                Effect::Close { conn, .. } | Effect::ChangeRoom { conn, .. } => {
                    assert!(
                        self.open.contains(conn) || Some(*conn) == unknown,
                        "Close of connection {conn}, which is not open"
                    );
                    self.forget(*conn);
                }
                Effect::Remember(record) => {
                    assert!(
                        self.open.contains(&record.conn),
                        "Remember for connection {}, which is not open",
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
                Effect::Directory(_) | Effect::Stats(_) | Effect::Keep(_) => {}
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
        assert_eq!(
            room.connection_count(),
            self.open.len(),
            "the room and the host disagree on the open connections"
        );
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
            .collect();
        assert_eq!(
            users, joined,
            "participants are not the users with joined connections"
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
        if self.trace {
            eprintln!("@{} hibernate", self.now - T0);
        }
        let (room, effects) = Room::restore(
            self.name.clone(),
            Some(self.stored.clone()),
            self.records.values().cloned(),
            self.now,
            SEED,
        );
        let before: Vec<_> = self.room.participants().cloned().collect();
        let after: Vec<_> = room.participants().cloned().collect();
        assert_eq!(before, after, "participants differ after restore");
        assert_eq!(self.room.settings_proto(), room.settings_proto());
        assert_eq!(self.room.ownership_proto(), room.ownership_proto());
        self.room = room;
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
    assert_eq!(host.room.participant_count(), 0);
    host
}

fn step(host: &mut Host, b: &mut Bytes) {
    let op = b.u8() % 20;
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
            let msg = make::client_message(b, host.now);
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
        15 => match b.u8() % 5 {
            0 => {
                let effects = host.room.refresh_report(host.now);
                host.apply(&effects, None);
            }
            1 => host.room.count_activity(b.bool()),
            2 => {
                host.feed(Input::Stop);
            }
            3 => host.room.set_limits(tight_limits()),
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
        _ => {
            host.feed(Input::SubscribeRefused { conn });
        }
    }
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
