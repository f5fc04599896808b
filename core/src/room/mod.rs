//! The room state machine (docs/architecture.md §1): `Room::handle(input, now) -> effects`.
//!
//! A room owns no sockets, clocks or random sources. Hosts assign each connection a [`ConnId`],
//! pass every event in as an [`Input`] with the current time, and carry out the returned
//! [`Effect`]s in order. Broadcasts are encoded once per protocol in use: one [`Effect::Send`]
//! carries one frame and the whole target list, and the host sends that same buffer to every
//! target. Connections speak protobuf, or MPP JSON ([`Protocol`], `mpp.rs`): with MPP
//! connections present, a broadcast becomes one protobuf `Send` and one MPP `Send`.
//!
//! Participants vs connections: a participant is a user in the room; one user may hold several
//! connections (two tabs, a MIDI bridge next to the browser) and is still one participant, as in
//! Multiplayer Piano. The participant appears on its first joined connection and leaves with its
//! last. Notes from one connection reach every other connection, the same user's included.
//!
//! Hibernation and restarts: everything the room must remember about a connection is in its
//! [`ConnRecord`], which the host stores with the socket ([`Effect::Remember`]); everything that
//! outlives connections (settings, crown, bans, mutes, chat) is reported as [`Effect::Persist`]
//! changes for durable storage. [`Room::restore`] rebuilds the same room from both.
//!
//! Layout, one file per concern (this file: the types, construction and the dispatch):
//! - what arrives: `wire` checks and decodes frames and encodes what leaves; `abuse` charges
//!   each message to the sender's [`budget`].
//! - who is in: [`admission`] who may hold a socket and join (bans, capacity, passwords),
//!   `join` joining and leaving, `members` participants and their connections,
//!   `lifecycle` sessions, expiry and storage cleanup.
//! - what they do: `notes` (with [`quota`]), `chat`, `profile` (and cursors),
//!   `settings`, `crown`, `moderation`, with [`perms`] deciding who may and [`text`]
//!   checking what they write.
//! - around the room: `directory` the room list, `stats` per-user activity, [`stored`] the
//!   durable part, `hibernation` rebuilding a room from it and its hosts' records.

mod abuse;
pub mod admission;
pub mod budget;
mod chat;
mod counting;
mod crown;
mod directory;
mod hibernation;
mod join;
mod lifecycle;
mod members;
mod moderation;
mod mpp;
mod notes;
pub mod perms;
mod presence;
mod profile;
pub mod quota;
pub mod replay;
pub mod resume;
mod settings;
mod stats;
pub mod stored;
pub mod text;
mod wire;

pub use crate::identity::participant_id;
pub use crate::limits::CROWN_CLAIM_DELAY_MS;
pub use chat::{CHAT_RATE, CHAT_RATE_OWNER};
pub use members::participant_of;
pub use moderation::MAX_BAN_MS;
pub use profile::CURSOR_MIN_INTERVAL_MS;
pub use replay::{ReplayDurability, ReplayEntry};
pub use resume::{Keep, Kept, Session};
pub use settings::{MAX_PLAYERS, MAX_PLAYERS_ADMIN};
pub use stats::{STATS_EVERY_MS, STATS_MAX_WAIT_MS, StatsDelta};
pub use wire::fell_behind;

use crate::Millis;
pub use crate::backlog::Delivery;
use crate::identity::Identity;
use crate::listing::{Delta, Report, Summary};
use crate::proto::client_message::Msg as C;
use crate::proto::{self, server_message::Msg as S};
use bytes::Bytes;
use quota::{NoteQuota, RateWindow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stored::{Change, PasswordHash, RoomKind, Stored};
use wire::{error, send_many, send_one};

/// A connection, named by its host. Hosts that store ids in JavaScript keep them below 2^53.
pub type ConnId = u64;

/// One WebSocket frame as received.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Binary(&'a [u8]),
    Text(&'a str),
}

/// Everything that can happen to a room.
#[derive(Debug, Clone)]
pub enum Input<'a> {
    /// A connection was accepted for a verified identity.
    Connect { conn: ConnId, identity: Identity },
    /// The same, for a connection speaking Multiplayer Piano JSON ([`Protocol::Mpp`]): it sends
    /// text frames of MPP messages and is sent the same ([`Effect::Send`]).
    ConnectMpp { conn: ConnId, identity: Identity },
    /// A frame arrived on a connection.
    Frame { conn: ConnId, frame: Frame<'a> },
    /// A connection closed for good: the client said goodbye (close code 1000 or 1001) or the
    /// host closed it. The participant leaves with its last connection.
    Disconnect { conn: ConnId },
    /// A connection failed or closed without a goodbye (no close frame, another code): a joined
    /// one keeps its place for the grace period and may be resumed (docs/resume.md); any other
    /// is a [`Input::Disconnect`].
    Dropped { conn: ConnId },
    /// The directory's full list, fetched by the host for a new subscriber.
    RoomList { conn: ConnId, rooms: Vec<Summary> },
    /// A change to the directory's list, pushed by the directory.
    RoomListChanged(Delta),
    /// A member's session ended (logout, revocation): close that user's connections of that
    /// session (`None`: of every session) with 4001.
    SessionEnded {
        user_id: String,
        session_id: Option<String>,
    },
    /// A user's roles changed: close that user's connections with 4002 (the client reconnects
    /// with a fresh token carrying the new roles).
    IdentityChanged { user_id: String },
    /// Time passed: connections past their identity's `expires_at` are closed with 4001, and
    /// activity due is handed over ([`Effect::Stats`]). Hosts tick at [`Room::next_deadline`].
    Tick,
    /// The host is about to drop the room (shutdown, lease lost): what only memory holds is
    /// handed over now ([`Effect::Stats`]), and every published participant is reported gone
    /// ([`Effect::Presence`]; a host handing the room to another may ignore that).
    Stop,
    /// The answer to [`Effect::VerifyPassword`]: the room completes or refuses the join.
    PasswordChecked { conn: ConnId, ok: bool },
    /// The directory refused `conn`'s subscription (its user subscribes from too many rooms):
    /// the room unsubscribes it and tells it `TOO_MANY_SUBSCRIPTIONS`.
    SubscribeRefused { conn: ConnId },
}

/// Who receives a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    One(ConnId),
    Many(Vec<ConnId>),
}

impl Targets {
    pub fn as_slice(&self) -> &[ConnId] {
        match self {
            Targets::One(c) => std::slice::from_ref(c),
            Targets::Many(v) => v,
        }
    }
}

/// What a connection speaks; the host knows it from the entry the socket came through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Binary frames of protobuf `ClientMessage`/`ServerMessage` (`/ws`).
    #[default]
    Protobuf,
    /// Text frames of Multiplayer Piano JSON messages (`crate::mpp`).
    Mpp,
}

impl Protocol {
    fn is_protobuf(&self) -> bool {
        *self == Protocol::Protobuf
    }
}

/// What the host must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send one frame to every target (the same bytes to each). The targets all speak one
    /// [`Protocol`]: an encoded `ServerMessage` sent as a binary frame to protobuf connections,
    /// UTF-8 MPP JSON sent as a text frame to MPP connections (the host knows which it holds).
    ///
    /// `delivery`: whether the host may skip it for a connection that fell behind
    /// ([`crate::backlog`]).
    Send {
        to: Targets,
        frame: Bytes,
        delivery: Delivery,
    },
    /// Close the connection with this WebSocket close code. The room has already forgotten it.
    Close {
        conn: ConnId,
        code: u16,
        reason: &'static str,
    },
    /// Store this record with the connection (replacing the previous one); it is what
    /// [`Room::restore`] needs after hibernation.
    Remember(ConnRecord),
    /// Write this change to durable storage.
    Persist(Change),
    /// Keep this for resuming connections after the room's memory is gone (docs/resume.md):
    /// the host's own storage, never mirrored to other backends.
    Keep(Keep),
    /// Talk to the room directory (asynchronously, after the other effects).
    Directory(DirectoryOp),
    /// Check a Join's password off the room's thread (a KDF is slow by design) and feed the
    /// answer back as [`Input::PasswordChecked`] (`hash.verify(&password)`).
    VerifyPassword {
        conn: ConnId,
        password: String,
        hash: PasswordHash,
    },
    /// Who arrived in and who left the room since the last report, for a host that publishes
    /// presence ([`Room::track_presence`]): participants' info, and the user ids that left.
    Presence {
        joined: Vec<proto::Participant>,
        left: Vec<String>,
    },
    /// Per-user activity to add to durable totals, for a host that keeps them
    /// ([`Room::count_activity`]; when: `stats.rs`).
    Stats(BTreeMap<String, StatsDelta>),
    /// An MPP connection asked for another room (`ch`): it has left this one (no close frame:
    /// the socket stays open). The host connects it to `room` ([`Input::ConnectMpp`]) and feeds
    /// it `frame` there, the `ch` that asked (with its settings for a new room).
    ChangeRoom {
        conn: ConnId,
        room: String,
        frame: String,
    },
}

/// What the host must tell, or ask, the room directory.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectoryOp {
    /// The room's summary changed (or the room woke up): report it.
    Report(Report),
    /// `conn` subscribed: register the room as a subscriber, fetch the full list and feed it
    /// back as [`Input::RoomList`]. The directory caps subscriptions per user: over the cap the
    /// host feeds [`Input::SubscribeRefused`].
    Subscribe { conn: ConnId, user_id: String },
    /// Nobody in the room is subscribed any more.
    Unsubscribe,
    /// `user_id`'s last subscribed connection here went (others still are): it no longer
    /// counts against that user's subscription cap.
    UnsubscribeUser { user_id: String },
}

/// A player's own changes to how the room shows them (over what the token says).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
}

/// What a room remembers per connection across hibernation. Small on purpose: the Workers
/// runtime caps a socket attachment at 16 KiB, and this is a few hundred bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    pub conn: ConnId,
    pub identity: Identity,
    /// Join order within the room, once the connection has joined.
    #[serde(default)]
    pub joined: Option<u64>,
    #[serde(default)]
    pub profile: Profile,
    /// Receives the room directory (`directory`).
    #[serde(default)]
    pub subscribed: bool,
    #[serde(default, skip_serializing_if = "Protocol::is_protobuf")]
    pub protocol: Protocol,
}

struct Conn {
    identity: Identity,
    participant_id: String,
    joined: Option<u64>,
    profile: Profile,
    subscribed: bool,
    protocol: Protocol,
    /// What this connection may still send ([`budget`]).
    budget: budget::ConnBudget,
    /// A Join waiting for its password check.
    pending_join: Option<Box<admission::PendingJoin>>,
    /// Joined protobuf connections: the resume token's hash, client seqs, the grace period.
    resume: Option<resume::Resumable>,
}

impl Conn {
    /// Dropped and waiting to be resumed (no socket).
    fn is_suspended(&self) -> bool {
        self.resume.as_ref().is_some_and(|r| r.until.is_some())
    }
}

struct Member {
    info: proto::Participant,
    /// Join sequence of the participant's first connection; every connection of the member
    /// records it, so the room's order survives any of them leaving.
    since: u64,
    conns: Vec<ConnId>,
    quota: NoteQuota,
    chat_rate: RateWindow,
    last_cursor: Option<Millis>,
    /// Notes held down, so their note-offs pass free.
    sounding: abuse::Sounding,
}

pub struct Room {
    name: String,
    kind: RoomKind,
    conns: BTreeMap<ConnId, Conn>,
    /// In join order.
    members: Vec<Member>,
    next_join_seq: u64,
    stored: Stored,
    /// Host-provided randomness for password salts (the core has no random source).
    seed: [u8; 32],
    salts_made: u64,
    /// What the directory was last told, and the version of that report.
    reported: Option<Summary>,
    report_version: u64,
    /// Activity per user id since the host last took it.
    stats: stats::Activity,
    /// Who the host was last told is here.
    presence: presence::Presence,
    /// Abuse limits ([`budget::Limits::default`] unless the host sets others).
    limits: budget::Limits,
    /// Room-wide password-check budget and per-user wrong-password delays.
    guard: admission::Guard,
    /// MPP connections present, and what MPP's whole-channel messages need (`mpp.rs`).
    mpp: mpp::MppState,
    /// What the room counted for the host's metrics since it last took them (`counting.rs`).
    counters: crate::metrics::Counters,
    /// The last `ServerMessage.seq` given (`replay.rs`).
    seq: u64,
    replay: replay::Replay,
    /// Which replay entries the host is asked to keep, and whether it is asked now.
    durability: ReplayDurability,
    keeping: bool,
    /// The connection and `ClientMessage.seq` of the message being handled, if numbered.
    origin: Option<(ConnId, u64)>,
}

type Out = Vec<Effect>;

impl Room {
    /// A room that never existed before (the directory has nothing to learn about it yet).
    pub fn new(name: impl Into<String>, seed: [u8; 32]) -> Room {
        let mut room = Room::blank(name.into(), seed);
        room.reported = Some(room.summary(0));
        room
    }

    fn blank(name: String, seed: [u8; 32]) -> Room {
        let kind = RoomKind::of(&name);
        Room {
            name,
            kind,
            conns: BTreeMap::new(),
            members: Vec::new(),
            next_join_seq: 1,
            stored: Stored::new(kind),
            seed,
            salts_made: 0,
            reported: None,
            report_version: 0,
            stats: stats::Activity::default(),
            presence: presence::Presence::default(),
            limits: budget::Limits::default(),
            guard: admission::Guard::default(),
            mpp: mpp::MppState::default(),
            counters: crate::metrics::Counters::default(),
            // A new room starts at 0; a loaded one above anything before ([`replay::first_seq`]).
            seq: 0,
            replay: replay::Replay::default(),
            durability: ReplayDurability::default(),
            keeping: false,
            origin: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    pub fn stored(&self) -> &Stored {
        &self.stored
    }

    /// Feeds one input; returns what the host must do.
    pub fn handle(&mut self, input: Input<'_>, now: Millis) -> Out {
        let mut out = Vec::new();
        let mut stop = false;
        // Zero MPP connections before and after: the protobuf path, untouched.
        let mpp = self.mpp.present();
        match input {
            Input::Connect { conn, identity } => {
                self.on_connect(conn, identity, Protocol::Protobuf, now, &mut out)
            }
            Input::ConnectMpp { conn, identity } => {
                self.on_connect(conn, identity, Protocol::Mpp, now, &mut out)
            }
            Input::Frame { conn, frame } => self.on_frame(conn, frame, now, &mut out),
            Input::Disconnect { conn } => self.on_disconnect(conn, now, &mut out),
            Input::Dropped { conn } => self.on_dropped(conn, now, &mut out),
            Input::RoomList { conn, rooms } => self.on_room_list(conn, &rooms, &mut out),
            Input::RoomListChanged(delta) => self.on_room_list_changed(&delta, &mut out),
            Input::SessionEnded {
                user_id,
                session_id,
            } => self.on_session_ended(&user_id, session_id.as_deref(), now, &mut out),
            Input::IdentityChanged { user_id } => self.on_identity_changed(&user_id, now, &mut out),
            Input::Tick => {
                self.expire_suspended(now, &mut out);
                self.on_tick(now, &mut out)
            }
            Input::PasswordChecked { conn, ok } => {
                self.on_password_checked(conn, ok, now, &mut out)
            }
            Input::SubscribeRefused { conn } => self.on_subscribe_refused(conn, &mut out),
            Input::Stop => {
                stop = true;
                self.keep_moved_sessions(&mut out);
            }
        }
        self.origin = None;
        self.keep_remembered(&mut out);
        self.report_if_changed(now, &mut out);
        if stop {
            self.presence_withdraw(&mut out);
        } else {
            self.presence_if_changed(&mut out);
        }
        self.stats_if_due(now, stop, &mut out);
        self.count_sent(&out, &self.mpp.native.clone());
        if mpp || self.mpp.present() {
            self.mpp_outbound(&mut out);
        }
        out
    }

    /// A frame from `conn`: checked and decoded ([`wire`]), charged to the sender's budgets
    /// ([`abuse`]), then handed to the handler of its concern.
    fn on_frame(&mut self, conn: ConnId, frame: Frame<'_>, now: Millis, out: &mut Out) {
        if self.mpp.present() && self.speaks_mpp(conn) {
            return self.on_mpp_frame(conn, frame, now, out);
        }
        let Some((msg, seq)) = self.decode_frame(conn, frame, now, out) else {
            return self.count(crate::metrics::Fam::MessagesIn, 0, 1);
        };
        // A numbered message processed before (re-sent after a resume) is dropped unseen.
        if seq > 0 && !self.first_time(conn, seq) {
            return;
        }
        self.on_message(conn, msg, now, out);
    }

    /// A decoded message (from either protocol): charged, then handled.
    fn on_message(&mut self, conn: ConnId, msg: C, now: Millis, out: &mut Out) {
        self.count(crate::metrics::Fam::MessagesIn, counting::in_kind(&msg), 1);
        if !self.message_budget(conn, &msg, now, out) {
            return;
        }
        match msg {
            // Time sync: the client estimates its offset to the room's clock from the pong,
            // to schedule the notes it hears.
            C::Ping(ping) => {
                let last_client_seq = self.ack(conn, out);
                out.push(send_one(
                    conn,
                    S::Pong(proto::Pong {
                        client_time: ping.client_time,
                        server_time: now,
                        last_client_seq,
                    }),
                ))
            }
            C::Join(join) => self.on_join(conn, join, now, out),
            C::Resume(resume) => self.on_resume(conn, resume, now, out),
            C::SubscribeRooms(_) => self.on_subscribe(conn, true, out),
            C::UnsubscribeRooms(_) => self.on_subscribe(conn, false, out),
            other => {
                let Some(m) = self.member_index_of_conn(conn) else {
                    return error(
                        out,
                        conn,
                        proto::ErrorCode::NotJoined,
                        "join the room first",
                    );
                };
                match other {
                    C::Notes(batch) => self.on_notes(conn, m, batch, now, out),
                    C::UpdateProfile(p) => self.on_profile(conn, m, p, out),
                    C::Chat(c) => self.on_chat(conn, m, &c.text, now, out),
                    C::Typing(t) => self.on_typing(conn, m, t.typing, out),
                    C::DeleteChat(d) => self.on_delete_chat(conn, m, d.id, out),
                    C::ClearChat(_) => self.on_clear_chat(conn, m, out),
                    C::UpdateSettings(s) => self.on_settings(conn, m, s, now, out),
                    C::TransferOwnership(t) => {
                        self.on_transfer(conn, m, &t.participant_id, now, out)
                    }
                    C::DropOwnership(_) => self.on_drop(conn, m, now, out),
                    C::ClaimOwnership(_) => self.on_claim(conn, m, now, out),
                    C::Kick(k) => self.on_kick(conn, m, &k.participant_id, k.ban_ms, now, out),
                    C::Unban(u) => self.on_unban(conn, m, &u.user_id, out),
                    C::Mute(mu) => {
                        self.on_mute(conn, m, &mu.participant_id, mu.notes, mu.chat, out)
                    }
                    C::Cursor(c) => self.on_cursor(conn, m, c.x, c.y, now, out),
                    C::Ping(_)
                    | C::Join(_)
                    | C::Resume(_)
                    | C::SubscribeRooms(_)
                    | C::UnsubscribeRooms(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
