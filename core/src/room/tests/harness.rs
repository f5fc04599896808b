//! The one test harness of the room. [`Host`] drives a room the way a host does (in the spirit of
//! quinn-proto's test `Pair`): it owns the room and a clock, keeps what a host keeps (each
//! socket's record, the durable state), answers password checks at once, and sorts what the room
//! sends into an inbox per connection. The free functions below are the same steps one at a
//! time, for tests that look at the effects of one input: builders of client frames, and
//! decoders of what the room sends.
//!
//! Every test file starts with `use super::harness::*;`: the room's types, the wire types and
//! these helpers.

pub(super) use super::super::budget::{self, Limits, Rate};
pub(super) use super::super::perms::Actor;
pub(super) use super::super::stored::{self, Ban, RoomKind, Stored};
pub(super) use super::super::*;
pub(super) use crate::Millis;
pub(super) use crate::identity::Identity;
pub(super) use crate::limits::{MAX_FRAME_BYTES, close};
pub(super) use crate::proto::{
    self, ClientMessage, ControlChange, ErrorCode, JoinFailure, NoteEvent, NoteOff, NoteOn,
    NotesDroppedReason, ServerMessage, client_message, note_event, server_message,
};
pub(super) use crate::proto::{
    client_message::Msg as M, note_event::Kind as E, server_message::Msg as SM,
};
pub(super) use prost::Message;
pub(super) use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// The host.

/// A room as its host sees it: the room, the clock, what the host keeps (each socket's last
/// record, the durable state) and what each connection has received, decoded.
pub(super) struct Host {
    pub room: Room,
    pub now: Millis,
    pub records: BTreeMap<ConnId, ConnRecord>,
    pub stored: Stored,
    /// What the host keeps for resuming ([`Effect::Keep`]).
    pub kept: Kept,
    inbox: BTreeMap<ConnId, Vec<SM>>,
    closed: BTreeMap<ConnId, u16>,
    /// Activity totals from [`Effect::Stats`], and how many hand-overs made them.
    pub stats: BTreeMap<String, StatsDelta>,
    pub stats_handovers: usize,
    /// Who is here according to [`Effect::Presence`].
    pub present: std::collections::BTreeSet<String>,
}

impl Host {
    /// A new room `name` at [`NOW`].
    pub fn new(name: &str) -> Host {
        Host {
            room: room(name),
            now: NOW,
            records: BTreeMap::new(),
            stored: Stored::new(RoomKind::of(name)),
            kept: Kept::default(),
            inbox: BTreeMap::new(),
            closed: BTreeMap::new(),
            stats: BTreeMap::new(),
            stats_handovers: 0,
            present: Default::default(),
        }
    }

    /// Feeds one input at the current time and carries out the effects as a host does:
    /// password checks answered at once, records and durable changes kept, frames delivered.
    /// Returns the effects too, for tests that look at them.
    pub fn input(&mut self, input: Input<'_>) -> Vec<Effect> {
        let fx = drive(&mut self.room, input, self.now);
        self.carry_out(&fx);
        fx
    }

    fn carry_out(&mut self, fx: &[Effect]) {
        keep_records(&mut self.records, fx);
        keep_stored(&mut self.stored, fx);
        for e in fx {
            if let Effect::Keep(k) = e {
                self.kept.apply(k.clone());
            }
        }
        for (to, msg) in sent(fx) {
            for conn in to {
                self.inbox.entry(conn).or_default().push(msg.clone());
            }
        }
        for e in fx {
            match e {
                Effect::Close { conn, code, .. } => {
                    self.closed.insert(*conn, *code);
                }
                Effect::Stats(deltas) => {
                    self.stats_handovers += 1;
                    for (user, d) in deltas {
                        let t = self.stats.entry(user.clone()).or_default();
                        t.notes += d.notes;
                        t.chats += d.chats;
                        t.joins += d.joins;
                        t.leaves += d.leaves;
                        t.played_ms += d.played_ms;
                        t.join_failures += d.join_failures;
                        t.last_seen = t.last_seen.max(d.last_seen);
                    }
                }
                Effect::Presence { joined, left } => {
                    for p in joined {
                        assert!(self.present.insert(p.user_id.clone()), "joined twice");
                    }
                    for u in left {
                        assert!(self.present.remove(u), "left without joining");
                    }
                }
                _ => {}
            }
        }
    }

    pub fn connect(&mut self, conn: ConnId, identity: Identity) -> Vec<Effect> {
        self.closed.remove(&conn);
        self.input(Input::Connect { conn, identity })
    }

    /// Sends one client message from `conn`.
    pub fn send(&mut self, conn: ConnId, m: M) -> Vec<Effect> {
        self.frame(conn, &client(m))
    }

    /// Sends raw bytes from `conn`, as one binary frame.
    pub fn frame(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<Effect> {
        self.input(Input::Frame {
            conn,
            frame: Frame::Binary(bytes),
        })
    }

    /// Connects `user` (a guest) on `conn` and joins; returns the join's effects.
    pub fn enter(&mut self, conn: ConnId, user: &str) -> Vec<Effect> {
        self.connect(conn, ident(user));
        self.send(conn, M::Join(proto::Join::default()))
    }

    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Effect> {
        self.input(Input::Disconnect { conn })
    }

    /// `conn`'s socket fails (no goodbye): a joined connection is suspended.
    pub fn drop_conn(&mut self, conn: ConnId) -> Vec<Effect> {
        self.records.remove(&conn);
        self.input(Input::Dropped { conn })
    }

    /// Moves the clock on.
    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// What `conn` received since the last look (and forgets it).
    pub fn take(&mut self, conn: ConnId) -> Vec<SM> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// The close code `conn` was closed with, if it was.
    pub fn closed(&self, conn: ConnId) -> Option<u16> {
        self.closed.get(&conn).copied()
    }

    /// The room hibernates and wakes (or its host restarts, when `sockets_survive` is false):
    /// it is rebuilt from what the host kept. Returns the wake's effects, carried out.
    pub fn wake(&mut self, sockets_survive: bool) -> Vec<Effect> {
        if !sockets_survive {
            self.records.clear();
        }
        let (room, fx) = Room::restore_with(
            self.room.name().to_owned(),
            Some(self.stored.clone()),
            self.records.values().cloned(),
            self.kept.clone(),
            self.now,
            SEED,
        );
        self.room = room;
        self.carry_out(&fx);
        fx
    }
}

// ---------------------------------------------------------------------------------------------
// Rooms and who is in them.

pub(super) const NOW: Millis = 1_800_000_000_000;

pub(super) const SEED: [u8; 32] = [7; 32];

pub(super) fn room(name: &str) -> Room {
    Room::new(name, SEED)
}

/// A normal room "r" whose stored state was changed first.
pub(super) fn room_with(f: impl FnOnce(&mut Stored)) -> Room {
    let mut stored = Stored::new(RoomKind::Normal);
    f(&mut stored);
    Room::restore("r", Some(stored), [], NOW, SEED).0
}

pub(super) fn ident(user: &str) -> Identity {
    Identity {
        user_id: user.into(),
        name: format!("name of {user}"),
        roles: vec!["guest".into()],
        ..Default::default()
    }
}

pub(super) fn ident_with(user: &str, roles: &[&str]) -> Identity {
    Identity {
        user_id: user.into(),
        name: user.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

pub(super) fn on_net(user: &str, roles: &[&str], network: &str) -> Identity {
    Identity {
        network: Some(network.into()),
        ..ident_with(user, roles)
    }
}

pub(super) fn member(user: &str, session: &str, expires_at: Option<Millis>) -> Identity {
    Identity {
        session_id: Some(session.into()),
        expires_at,
        ..ident_with(user, &["member"])
    }
}

pub(super) fn pid(user: &str) -> String {
    participant_id(user)
}

// ---------------------------------------------------------------------------------------------
// Client frames.

pub(super) fn client(msg: client_message::Msg) -> Vec<u8> {
    ClientMessage {
        msg: Some(msg),
        ..Default::default()
    }
    .encode_to_vec()
}

pub(super) fn join() -> Vec<u8> {
    client(client_message::Msg::Join(proto::Join::default()))
}

pub(super) fn join_with(password: &str) -> M {
    M::Join(proto::Join {
        password: password.into(),
        create_settings: None,
    })
}

pub(super) fn notes(time: Millis) -> Vec<u8> {
    client(client_message::Msg::Notes(notes_batch(time)))
}

/// One note-on at `time` (with a forged sender the room must overwrite).
pub(super) fn notes_batch(time: Millis) -> proto::NoteBatch {
    proto::NoteBatch {
        time,
        events: vec![NoteEvent {
            delay: 0,
            kind: Some(note_event::Kind::NoteOn(NoteOn {
                note: 60,
                velocity: 90,
                channel: 0,
            })),
        }],
        sender_id: "forged".into(),
    }
}

pub(super) fn chat(text: &str) -> client_message::Msg {
    client_message::Msg::Chat(proto::SendChat { text: text.into() })
}

pub(super) fn ev(kind: E) -> NoteEvent {
    NoteEvent {
        delay: 0,
        kind: Some(kind),
    }
}

pub(super) fn on(note: u32) -> E {
    E::NoteOn(NoteOn {
        note,
        velocity: 80,
        channel: 0,
    })
}

pub(super) fn off(note: u32) -> E {
    E::NoteOff(NoteOff { note, channel: 0 })
}

pub(super) fn pedal(value: u32) -> E {
    E::ControlChange(ControlChange {
        control: 64,
        value,
        channel: 0,
    })
}

pub(super) fn batch_at(time: Millis, events: Vec<NoteEvent>) -> M {
    M::Notes(proto::NoteBatch {
        time,
        events,
        sender_id: String::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Driving a room one input at a time.

/// What a host does with an input: hands it to the room and checks the passwords the room
/// asks about at once (feeding the answers back), so a Join's answer is in the effects.
pub(super) fn drive(room: &mut Room, input: Input<'_>, now: Millis) -> Vec<Effect> {
    let mut fx = room.handle(input, now);
    let mut i = 0;
    while i < fx.len() {
        if let Effect::VerifyPassword {
            conn,
            password,
            hash,
        } = &fx[i]
        {
            let (conn, ok) = (*conn, hash.verify(password));
            fx.extend(room.handle(Input::PasswordChecked { conn, ok }, now));
        }
        i += 1;
    }
    fx
}

pub(super) fn binary(room: &mut Room, conn: ConnId, bytes: &[u8]) -> Vec<Effect> {
    drive(
        room,
        Input::Frame {
            conn,
            frame: Frame::Binary(bytes),
        },
        NOW,
    )
}

pub(super) fn msg(room: &mut Room, conn: ConnId, m: client_message::Msg) -> Vec<Effect> {
    binary(room, conn, &client(m))
}

pub(super) fn msg_at(
    room: &mut Room,
    conn: ConnId,
    m: client_message::Msg,
    at: Millis,
) -> Vec<Effect> {
    drive(
        room,
        Input::Frame {
            conn,
            frame: Frame::Binary(&client(m)),
        },
        at,
    )
}

pub(super) fn connect(room: &mut Room, conn: ConnId, user: &str) -> Vec<Effect> {
    room.handle(
        Input::Connect {
            conn,
            identity: ident(user),
        },
        NOW,
    )
}

pub(super) fn connect_as(room: &mut Room, conn: ConnId, who: Identity) -> Vec<Effect> {
    room.handle(
        Input::Connect {
            conn,
            identity: who,
        },
        NOW,
    )
}

/// Connects and joins; returns the join effects.
pub(super) fn enter(room: &mut Room, conn: ConnId, user: &str) -> Vec<Effect> {
    connect(room, conn, user);
    binary(room, conn, &join())
}

pub(super) fn enter_as(room: &mut Room, conn: ConnId, user: &str, roles: &[&str]) -> Vec<Effect> {
    room.handle(
        Input::Connect {
            conn,
            identity: ident_with(user, roles),
        },
        NOW,
    );
    binary(room, conn, &join())
}

/// What a host stores per socket: the last Remember; a closed socket's record goes with it.
pub(super) fn keep_records(records: &mut BTreeMap<ConnId, ConnRecord>, fx: &[Effect]) {
    for e in fx {
        match e {
            Effect::Remember(r) => {
                records.insert(r.conn, r.clone());
            }
            Effect::Close { conn, .. } | Effect::ChangeRoom { conn, .. } => {
                records.remove(conn);
            }
            Effect::Send { .. }
            | Effect::Persist(_)
            | Effect::Keep(_)
            | Effect::Directory(_)
            | Effect::VerifyPassword { .. }
            | Effect::Presence { .. }
            | Effect::Stats(_) => {}
        }
    }
}

/// What a host's durable storage holds after these effects.
pub(super) fn keep_stored(stored: &mut Stored, fx: &[Effect]) {
    for e in fx {
        if let Effect::Persist(change) = e {
            stored.apply(change.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading effects.

/// The (targets, decoded message) of every Send effect.
pub(super) fn sent(effects: &[Effect]) -> Vec<(Vec<ConnId>, server_message::Msg)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, frame, .. } => {
                let mut t = to.as_slice().to_vec();
                t.sort();
                Some((
                    t,
                    ServerMessage::decode(frame.clone()).unwrap().msg.unwrap(),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Every byte the room sends in these effects, to check what never goes out (passwords).
pub(super) fn sent_bytes(effects: &[Effect]) -> Vec<u8> {
    effects
        .iter()
        .flat_map(|e| match e {
            Effect::Send { frame, .. } => frame.to_vec(),
            _ => vec![],
        })
        .collect()
}

pub(super) fn find<T>(fx: &[Effect], f: impl Fn(&server_message::Msg) -> Option<T>) -> Option<T> {
    sent(fx).iter().find_map(|(_, m)| f(m))
}

pub(super) fn error_code(effects: &[Effect]) -> Option<ErrorCode> {
    sent(effects).into_iter().find_map(|(_, m)| match m {
        server_message::Msg::Error(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    })
}

pub(super) fn join_failure(fx: &[Effect]) -> Option<(JoinFailure, u64)> {
    find(fx, |m| match m {
        server_message::Msg::JoinFailed(f) => {
            Some((JoinFailure::try_from(f.reason).ok()?, f.retry_after_ms))
        }
        _ => None,
    })
}

pub(super) fn joined(fx: &[Effect]) -> bool {
    find(fx, |m| matches!(m, SM::Joined(_)).then_some(())).is_some()
}

pub(super) fn verify_requests(fx: &[Effect]) -> Vec<(ConnId, String)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::VerifyPassword { conn, password, .. } => Some((*conn, password.clone())),
            _ => None,
        })
        .collect()
}

/// The retry-after of every `RATE_LIMITED` error in the effects.
pub(super) fn rate_notices(fx: &[Effect]) -> Vec<u64> {
    sent(fx)
        .into_iter()
        .filter_map(|(_, m)| match m {
            SM::Error(e) if e.code == ErrorCode::RateLimited as i32 => Some(e.retry_after_ms),
            _ => None,
        })
        .collect()
}

pub(super) fn closes(fx: &[Effect]) -> Vec<(ConnId, u16)> {
    let mut v: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Close { conn, code, .. } => Some((*conn, *code)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Note batches relayed to others (the sender's own conn excluded from the targets).
pub(super) fn relayed_events(fx: &[Effect]) -> Option<usize> {
    find(fx, |m| match m {
        SM::Notes(b) => Some(b.events.len()),
        _ => None,
    })
}

pub(super) fn reports(fx: &[Effect]) -> Vec<crate::lobby::Summary> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Directory(DirectoryOp::Report(r)) => Some(r.summary.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn discards(fx: &[Effect]) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::Persist(stored::Change::Discard)))
        .count()
}
