//! The room state machine (docs/architecture.md §1): `Room::handle(input, now) -> effects`.
//!
//! A room owns no sockets, clocks or random sources. Hosts assign each connection a [`ConnId`],
//! pass every event in as an [`Input`] with the current time, and carry out the returned
//! [`Effect`]s in order. Broadcasts are encoded once: one [`Effect::Send`] carries one frame and
//! the whole target list, and the host sends that same buffer to every target.
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
//! Layout: this file holds the state and the message handlers; [`stored`] the durable part,
//! [`quota`] the note quota and rate windows, [`perms`] who may do what, [`text`] the checks on
//! text players send; [`budget`] the abuse limits (per-connection budgets, socket caps,
//! password guessing) and `abuse` how they are applied, [`admission`] who may hold a socket
//! and join, `lifecycle` sessions, expiry and storage cleanup.

mod abuse;
pub mod admission;
pub mod budget;
mod lifecycle;
pub mod perms;
pub mod quota;
pub mod stored;
pub mod text;

use crate::identity::Identity;
use crate::limits::{MAX_FRAME_BYTES, PROTOCOL_VERSION, close};
use crate::lobby::{Delta, Report, Summary};
use crate::proto::{self, ClientMessage, ErrorCode, NotesDroppedReason, ServerMessage};
use crate::proto::{client_message::Msg as C, note_event::Kind, server_message::Msg as S};
use crate::{Millis, notes};
use bytes::Bytes;
use perms::{Action, Actor};
use prost::Message;
use quota::{NoteQuota, QuotaParams, RateWindow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use stored::{Ban, CHAT_HISTORY, Change, ChatRecord, MuteEntry, PasswordHash, RoomKind, Stored};

/// Largest room an owner may set; admins may go up to [`MAX_PLAYERS_ADMIN`].
pub const MAX_PLAYERS: u32 = 99;
pub const MAX_PLAYERS_ADMIN: u32 = 10_000;
/// Longest ban an owner's kick may carry.
pub const MAX_BAN_MS: u64 = 60 * 60 * 1000;
/// How long after the crown drops anyone (not just the previous owner) may claim it.
pub const CROWN_CLAIM_DELAY_MS: u64 = 15_000;
/// Chat: at most this many messages per window (the owner and staff get the second pair).
pub const CHAT_RATE: (usize, u64) = (4, 6000);
pub const CHAT_RATE_OWNER: (usize, u64) = (10, 2000);
/// Cursor positions: at most one per 50 ms (20/s) per participant is relayed.
pub const CURSOR_MIN_INTERVAL_MS: u64 = 50;

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
    /// A frame arrived on a connection.
    Frame { conn: ConnId, frame: Frame<'a> },
    /// A connection closed (either side) or failed.
    Disconnect { conn: ConnId },
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
    /// Time passed: connections past their identity's `expires_at` are closed with 4001. Hosts
    /// tick at [`Room::next_deadline`].
    Tick,
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

/// What the host must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send one encoded `ServerMessage` to every target (the same bytes to each).
    Send { to: Targets, frame: Bytes },
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
    /// Talk to the room directory (asynchronously, after the other effects).
    Directory(DirectoryOp),
    /// Check a Join's password off the room's thread (a KDF is slow by design) and feed the
    /// answer back as [`Input::PasswordChecked`] (`hash.verify(&password)`).
    VerifyPassword {
        conn: ConnId,
        password: String,
        hash: PasswordHash,
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
    /// Receives the room directory (see [`crate::lobby`]).
    #[serde(default)]
    pub subscribed: bool,
}

struct Conn {
    identity: Identity,
    participant_id: String,
    joined: Option<u64>,
    profile: Profile,
    subscribed: bool,
    /// What this connection may still send ([`budget`]).
    budget: budget::ConnBudget,
    /// A Join waiting for its password check.
    pending_join: Option<Box<admission::PendingJoin>>,
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
    stats: Activity,
    /// Abuse limits ([`budget::Limits::default`] unless the host sets others).
    limits: budget::Limits,
    /// Room-wide password-check budget and per-user wrong-password delays.
    guard: admission::Guard,
}

/// Per-user activity, gathered only for hosts that keep it ([`Room::count_activity`]): a host
/// without anywhere to put it pays nothing per note.
#[derive(Default)]
struct Activity {
    counting: bool,
    by_user: BTreeMap<String, StatsDelta>,
}

impl Activity {
    /// `user`'s record, seen now; `None` while not counting.
    fn of(&mut self, user: &str, now: Millis) -> Option<&mut StatsDelta> {
        if !self.counting {
            return None;
        }
        let st = self.by_user.entry(user.to_owned()).or_default();
        st.last_seen = now;
        Some(st)
    }
}

/// What one user did in the room since the host last asked ([`Room::take_stats`]): note-ons
/// relayed, chat messages posted, joins, and when they were last active. Hosts add the deltas
/// to durable per-user totals (the edge mirrors them to MongoDB's `user_stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsDelta {
    pub notes: u64,
    pub chats: u64,
    pub joins: u64,
    pub last_seen: Millis,
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
            stats: Activity::default(),
            limits: budget::Limits::default(),
            guard: admission::Guard::default(),
        }
    }

    /// Rebuilds a room from its durable state and the records its host kept; the room looks to
    /// its players exactly as before (same participants, order, ids, settings, crown, chat).
    /// If the owner is no longer connected (the host restarted), the crown drops now, and the
    /// returned effects persist that.
    pub fn restore(
        name: impl Into<String>,
        stored: Option<Stored>,
        records: impl IntoIterator<Item = ConnRecord>,
        now: Millis,
        seed: [u8; 32],
    ) -> (Room, Out) {
        let mut room = Room::blank(name.into(), seed);
        if let Some(s) = stored {
            room.stored = s;
        }
        let mut records: Vec<ConnRecord> = records.into_iter().collect();
        records.sort_by_key(|r| (r.joined.is_none(), r.joined, r.conn));
        for r in records {
            room.add_conn(r.conn, r.identity, r.profile, now);
            if let Some(c) = room.conns.get_mut(&r.conn) {
                c.subscribed = r.subscribed;
            }
            if let Some(seq) = r.joined {
                room.join_member(r.conn, seq, now);
                room.next_join_seq = room.next_join_seq.max(seq + 1);
            }
        }
        let mut out = Vec::new();
        if let Some(owner) = room.stored.crown.owner_user.clone()
            && room.member_index_by_user(&owner).is_none()
        {
            room.drop_crown(owner, now, &mut out);
        }
        // Waking up, the room corrects its directory entry (it may have emptied meanwhile).
        room.report_if_changed(now, &mut out);
        // Rebuilding is not activity: the joins above were counted when they happened.
        room.stats.by_user.clear();
        (room, out)
    }

    /// Starts (or stops) gathering per-user activity for [`Room::take_stats`]; off by default.
    pub fn count_activity(&mut self, on: bool) {
        self.stats.counting = on;
        if !on {
            self.stats.by_user.clear();
        }
    }

    /// Hands the activity gathered since the last call to the host (and forgets it).
    pub fn take_stats(&mut self) -> BTreeMap<String, StatsDelta> {
        std::mem::take(&mut self.stats.by_user)
    }

    pub fn has_stats(&self) -> bool {
        !self.stats.by_user.is_empty()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    /// Participants present, in join order.
    pub fn participants(&self) -> impl Iterator<Item = &proto::Participant> {
        self.members.iter().map(|m| &m.info)
    }

    pub fn participant_count(&self) -> usize {
        self.members.len()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn stored(&self) -> &Stored {
        &self.stored
    }

    pub fn settings_proto(&self) -> proto::RoomSettings {
        let s = &self.stored.settings;
        proto::RoomSettings {
            visible: s.visible,
            has_password: self.stored.password.is_some(),
            max_players: s.max_players,
            owner_only_chat: s.owner_only_chat,
            owner_only_play: s.owner_only_play,
            allow_guests: s.allow_guests,
            allow_bots: s.allow_bots,
            allow_black_midi: s.allow_black_midi,
            welcome_message: s.welcome_message.clone(),
            color: s.color.clone(),
            profanity_filter: s.profanity_filter,
            kind: self.kind.as_str().into(),
        }
    }

    pub fn ownership_proto(&self) -> proto::Ownership {
        let c = &self.stored.crown;
        let owner_id = c
            .owner_user
            .as_deref()
            .map(participant_id)
            .unwrap_or_default();
        proto::Ownership {
            owner_id,
            owner_user_id: c.owner_user.clone().unwrap_or_default(),
            owner_name: if c.owner_user.is_some() {
                c.owner_name.clone()
            } else {
                String::new()
            },
            previous_owner_user_id: c.previous_user.clone().unwrap_or_default(),
            claimable_at: c.dropped_at.map(|t| t + CROWN_CLAIM_DELAY_MS).unwrap_or(0),
        }
    }

    /// Feeds one input; returns what the host must do.
    pub fn handle(&mut self, input: Input<'_>, now: Millis) -> Out {
        let mut out = Vec::new();
        match input {
            Input::Connect { conn, identity } => self.on_connect(conn, identity, now, &mut out),
            Input::Frame { conn, frame } => self.on_frame(conn, frame, now, &mut out),
            Input::Disconnect { conn } => self.on_disconnect(conn, now, &mut out),
            Input::RoomList { conn, rooms } => {
                if self.conns.get(&conn).is_some_and(|c| c.subscribed) {
                    let rooms = rooms.iter().map(Summary::to_proto).collect();
                    out.push(send_one(conn, S::RoomList(proto::RoomList { rooms })));
                }
            }
            Input::RoomListChanged(delta) => {
                let targets: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.subscribed)
                    .map(|(id, _)| *id)
                    .collect();
                if !targets.is_empty() && !delta.is_empty() {
                    out.push(send_many(targets, S::RoomListChanged(delta.to_proto())));
                }
            }
            Input::SessionEnded {
                user_id,
                session_id,
            } => self.on_session_ended(&user_id, session_id.as_deref(), now, &mut out),
            Input::IdentityChanged { user_id } => self.on_identity_changed(&user_id, now, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
            Input::PasswordChecked { conn, ok } => {
                self.on_password_checked(conn, ok, now, &mut out)
            }
            Input::SubscribeRefused { conn } => self.on_subscribe_refused(conn, &mut out),
        }
        self.report_if_changed(now, &mut out);
        out
    }

    /// Makes the next input report to the directory even if nothing changed (the directory
    /// asked: its entry for this room is old).
    pub fn refresh_report(&mut self, now: Millis) -> Out {
        self.reported = None;
        let mut out = Vec::new();
        self.report_if_changed(now, &mut out);
        out
    }

    /// Whether any connection receives the directory.
    pub fn has_subscribers(&self) -> bool {
        self.conns.values().any(|c| c.subscribed)
    }

    /// The room as the directory lists it.
    pub fn summary(&self, last_activity: Millis) -> Summary {
        let crown = &self.stored.crown;
        Summary {
            name: self.name.clone(),
            players: self.members.len() as u32,
            capacity: self.stored.settings.max_players,
            visible: self.stored.settings.visible,
            locked: self.stored.password.is_some(),
            owner_name: if crown.owner_user.is_some() {
                crown.owner_name.clone()
            } else {
                String::new()
            },
            kind: self.kind,
            last_activity,
        }
    }

    /// Reports to the directory when what it lists about the room changed. Compared field by
    /// field without building a summary, since this runs after every input (notes included).
    fn report_if_changed(&mut self, now: Millis, out: &mut Out) {
        let crown = &self.stored.crown;
        let owner = if crown.owner_user.is_some() {
            crown.owner_name.as_str()
        } else {
            ""
        };
        let s = &self.stored.settings;
        let same = self.reported.as_ref().is_some_and(|r| {
            r.players as usize == self.members.len()
                && r.capacity == s.max_players
                && r.visible == s.visible
                && r.locked == self.stored.password.is_some()
                && r.owner_name == owner
        });
        if same {
            return;
        }
        let summary = self.summary(now);
        self.report_version = now.max(self.report_version + 1);
        let users = match self.kind {
            RoomKind::Lobby => self
                .members
                .iter()
                .map(|m| m.info.user_id.clone())
                .collect(),
            RoomKind::Normal => Vec::new(),
        };
        self.reported = Some(summary.clone());
        out.push(Effect::Directory(DirectoryOp::Report(Report {
            summary,
            users,
            version: self.report_version,
            received_at: 0,
        })));
    }

    /// The record a host keeps for `conn`.
    fn record(&self, conn: ConnId) -> Option<ConnRecord> {
        let c = self.conns.get(&conn)?;
        Some(ConnRecord {
            conn,
            identity: c.identity.clone(),
            joined: c.joined,
            profile: c.profile.clone(),
            subscribed: c.subscribed,
        })
    }

    fn on_subscribe(&mut self, conn: ConnId, subscribe: bool, out: &mut Out) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let was_subscribed = std::mem::replace(&mut c.subscribed, subscribe);
        out.extend(self.record(conn).map(Effect::Remember));
        if subscribe {
            let user_id = self
                .conns
                .get(&conn)
                .map(|c| c.identity.user_id.clone())
                .unwrap_or_default();
            out.push(Effect::Directory(DirectoryOp::Subscribe { conn, user_id }));
        } else if was_subscribed {
            let user_id = self.conns.get(&conn).map(|c| c.identity.user_id.clone());
            self.subscription_ended(user_id, out);
        }
    }

    /// A subscribed connection stopped (unsubscribed or went): tell the directory whether the
    /// room, or just this user, no longer follows the list.
    fn subscription_ended(&self, user_id: Option<String>, out: &mut Out) {
        if !self.has_subscribers() {
            out.push(Effect::Directory(DirectoryOp::Unsubscribe));
        } else if let Some(user_id) = user_id
            && !self
                .conns
                .values()
                .any(|c| c.subscribed && c.identity.user_id == user_id)
        {
            out.push(Effect::Directory(DirectoryOp::UnsubscribeUser { user_id }));
        }
    }

    fn on_connect(&mut self, conn: ConnId, identity: Identity, now: Millis, out: &mut Out) {
        if self.conns.contains_key(&conn) {
            // A host reusing a live id is a host bug; drop the old connection cleanly first.
            self.on_disconnect(conn, now, out);
        }
        if let Err(code) = self.admit_connection(&identity) {
            return admission::refuse_connection(conn, code, out);
        }
        self.add_conn(conn, identity, Profile::default(), now);
        out.extend(self.record(conn).map(Effect::Remember));
        let you = self.participant_for(conn);
        out.push(send_one(
            conn,
            S::Welcome(proto::Welcome {
                protocol_version: PROTOCOL_VERSION,
                server_time: now,
                you,
                room: self.name.clone(),
                max_frame_bytes: MAX_FRAME_BYTES as u32,
            }),
        ));
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame<'_>, now: Millis, out: &mut Out) {
        if !self.conns.contains_key(&conn) {
            out.push(Effect::Close {
                conn,
                code: close::INTERNAL_ERROR,
                reason: "unknown connection",
            });
            return;
        }
        let len = match frame {
            Frame::Binary(b) => b.len(),
            Frame::Text(t) => t.len(),
        };
        if len > MAX_FRAME_BYTES {
            self.on_disconnect(conn, now, out);
            out.push(Effect::Close {
                conn,
                code: close::FRAME_TOO_LARGE,
                reason: "frame too large",
            });
            return;
        }
        if !self.frame_budget(conn, now, out) {
            return;
        }
        let bytes = match frame {
            Frame::Binary(b) => b,
            Frame::Text(_) => {
                return error(
                    out,
                    conn,
                    ErrorCode::TextFrame,
                    "text frames are not supported: send binary protobuf ClientMessage frames",
                );
            }
        };
        let msg = match ClientMessage::decode(bytes) {
            Ok(ClientMessage { msg: Some(msg) }) => msg,
            Ok(ClientMessage { msg: None }) => {
                return error(
                    out,
                    conn,
                    ErrorCode::EmptyMessage,
                    "the ClientMessage has no message set",
                );
            }
            Err(e) => {
                return error(
                    out,
                    conn,
                    ErrorCode::MalformedFrame,
                    format!("not a ClientMessage: {e}"),
                );
            }
        };
        if !self.message_budget(conn, &msg, now, out) {
            return;
        }
        match msg {
            C::Ping(ping) => out.push(send_one(
                conn,
                S::Pong(proto::Pong {
                    client_time: ping.client_time,
                    server_time: now,
                }),
            )),
            C::Join(join) => self.on_join(conn, join, now, out),
            C::SubscribeRooms(_) => self.on_subscribe(conn, true, out),
            C::UnsubscribeRooms(_) => self.on_subscribe(conn, false, out),
            other => {
                let Some(m) = self.member_index_of_conn(conn) else {
                    return error(out, conn, ErrorCode::NotJoined, "join the room first");
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
                    C::Ping(_) | C::Join(_) | C::SubscribeRooms(_) | C::UnsubscribeRooms(_) => {}
                }
            }
        }
    }

    // -- joining and leaving ------------------------------------------------------------------

    /// Makes `conn` a participant: admission passed (see [`admission`]).
    fn complete_join(&mut self, conn: ConnId, join: proto::Join, now: Millis, out: &mut Out) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let identity = c.identity.clone();
        let user = identity.user_id.clone();
        let already_present = self.member_index_by_user(&user).is_some();
        // The crown: the creator of a normal room gets it; a returning previous owner gets a
        // dropped crown back. Decided before the member exists, so its quota starts right.
        let crown = &self.stored.crown;
        let takes_crown = self.kind == RoomKind::Normal
            && !already_present
            && crown.owner_user.is_none()
            && (!crown.assigned_once || crown.previous_user.as_deref() == Some(user.as_str()));
        // Join-or-create: the creator's settings apply to a room that did not exist yet.
        let creating = takes_crown && !self.stored.crown.assigned_once;
        if let Some(p) = join.create_settings.filter(|_| creating) {
            let actor = Actor::from_roles(&identity.roles, true);
            match self.patched_settings(actor, &p) {
                // Nobody is in the room yet, so this tells no one; Joined carries it.
                Ok(settings) => self.apply_settings(settings, p.password, now, out),
                Err((code, message)) => return error(out, conn, code, message),
            }
        }
        if takes_crown {
            let name = self.conns.get(&conn).map(|c| {
                c.profile
                    .name
                    .clone()
                    .unwrap_or_else(|| c.identity.name.clone())
            });
            self.stored.crown = stored::Crown {
                owner_user: Some(user.clone()),
                owner_name: name.unwrap_or_default(),
                previous_user: None,
                dropped_at: None,
                assigned_once: true,
            };
            out.push(Effect::Persist(Change::Crown(self.stored.crown.clone())));
        }
        let crown_changed = takes_crown;
        let seq = self.next_join_seq;
        self.next_join_seq += 1;
        let is_new = self.join_member(conn, seq, now);

        out.extend(self.record(conn).map(Effect::Remember));
        let you = self.participant_for(conn);
        let quota = self
            .member_index_of_conn(conn)
            .map(|m| self.members[m].quota.to_proto(now));
        out.push(send_one(
            conn,
            S::Joined(proto::Joined {
                room: self.name.clone(),
                you: you.clone(),
                participants: self.participants().cloned().collect(),
                server_time: now,
                settings: Some(self.settings_proto()),
                ownership: Some(self.ownership_proto()),
                chat_history: self.stored.chat.iter().map(ChatRecord::to_proto).collect(),
                quota,
            }),
        ));
        if is_new && let Some(p) = you.clone() {
            self.send_to_others(
                conn,
                S::ParticipantJoined(proto::ParticipantJoined {
                    participant: Some(p),
                }),
                out,
            );
        }
        if crown_changed {
            self.send_to_others(
                conn,
                S::OwnerChanged(proto::OwnerChanged {
                    ownership: Some(self.ownership_proto()),
                }),
                out,
            );
        }
        let welcome = &self.stored.settings.welcome_message;
        if !welcome.is_empty() {
            let name = you.map(|p| p.name).unwrap_or_default();
            out.push(send_one(
                conn,
                S::Chat(proto::ChatMessage {
                    id: 0,
                    time: now,
                    name: self.name.clone(),
                    color: self.stored.settings.color.clone(),
                    text: welcome.replace("%%user%%", &name),
                    ..Default::default()
                }),
            ));
        }
    }

    fn on_disconnect(&mut self, conn: ConnId, now: Millis, out: &mut Out) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.subscribed {
            self.subscription_ended(Some(c.identity.user_id.clone()), out);
        }
        if c.joined.is_none() {
            return;
        }
        let Some(idx) = self
            .members
            .iter()
            .position(|m| m.info.id == c.participant_id)
        else {
            return;
        };
        let member = &mut self.members[idx];
        member.conns.retain(|&x| x != conn);
        if member.conns.is_empty() {
            let gone = self.members.remove(idx);
            self.send_to_others(
                conn,
                S::ParticipantLeft(proto::ParticipantLeft {
                    participant_id: gone.info.id,
                }),
                out,
            );
            if self.stored.crown.owner_user.as_deref() == Some(gone.info.user_id.as_str()) {
                self.drop_crown(gone.info.user_id, now, out);
            }
            self.discard_if_fresh(out);
        }
    }

    // -- notes --------------------------------------------------------------------------------

    fn on_notes(
        &mut self,
        conn: ConnId,
        m: usize,
        mut batch: proto::NoteBatch,
        now: Millis,
        out: &mut Out,
    ) {
        if let Err(msg) = notes::validate(&batch, now) {
            return error(out, conn, ErrorCode::InvalidNotes, &msg);
        }
        let total = batch.events.len() as u32;
        let dropped_all = |reason: NotesDroppedReason, out: &mut Out| {
            out.push(send_one(
                conn,
                S::NotesDropped(proto::NotesDropped {
                    dropped: total,
                    relayed: 0,
                    reason: reason as i32,
                }),
            ));
        };
        if self.members[m].info.muted_notes {
            return dropped_all(NotesDroppedReason::Muted, out);
        }
        if self.stored.settings.owner_only_play && !self.is_owner(m) {
            return dropped_all(NotesDroppedReason::OwnerOnly, out);
        }
        let drops = self.filter_note_events(conn, m, &mut batch.events, now);
        let relayed = batch.events.len() as u32;
        if drops.quota > 0 {
            out.push(send_one(
                conn,
                S::NotesDropped(proto::NotesDropped {
                    dropped: drops.quota,
                    relayed,
                    reason: NotesDroppedReason::Quota as i32,
                }),
            ));
        }
        if drops.budget > 0 {
            self.over_budget(conn, budget::Kind::NoteEvents, drops.retry_after, now, out);
            if !self.conns.contains_key(&conn) {
                return; // closed for abuse: `m` may be gone too
            }
        }
        if relayed == 0 {
            return;
        }
        let note_ons = batch
            .events
            .iter()
            .filter(|e| matches!(e.kind, Some(Kind::NoteOn(_))))
            .count() as u64;
        if note_ons > 0
            && let Some(st) = self.stats.of(&self.members[m].info.user_id, now)
        {
            st.notes += note_ons;
        }
        batch.sender_id = self.members[m].info.id.clone();
        self.send_to_others(conn, S::Notes(batch), out);
    }

    // -- profile and cursor -------------------------------------------------------------------

    fn on_profile(&mut self, conn: ConnId, m: usize, p: proto::UpdateProfile, out: &mut Out) {
        let name = match p
            .name
            .as_deref()
            .map(crate::names::display_name)
            .transpose()
        {
            Ok(n) => n,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, format!("name {e}")),
        };
        let color = match p.color.as_deref().map(text::color).transpose() {
            Ok(c) => c,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, &e),
        };
        let status = match p
            .status
            .as_deref()
            .map(|s| text::optional_line("status", s, text::MAX_STATUS_CHARS))
            .transpose()
        {
            Ok(s) => s,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, &e),
        };
        let member = &mut self.members[m];
        if let Some(n) = &name {
            member.info.name = n.clone();
        }
        if let Some(c) = &color {
            member.info.color = c.clone();
        }
        if let Some(s) = &status {
            member.info.status = s.clone();
        }
        let info = member.info.clone();
        for c in member.conns.clone() {
            if let Some(conn) = self.conns.get_mut(&c) {
                if name.is_some() {
                    conn.profile.name = name.clone();
                }
                if color.is_some() {
                    conn.profile.color = color.clone();
                }
                if let Some(s) = &status {
                    conn.profile.status = s.clone();
                }
            }
            out.extend(self.record(c).map(Effect::Remember));
        }
        if self.stored.crown.owner_user.as_deref() == Some(info.user_id.as_str()) && name.is_some()
        {
            self.stored.crown.owner_name = info.name.clone();
            out.push(Effect::Persist(Change::Crown(self.stored.crown.clone())));
        }
        self.send_to_all(
            S::ParticipantUpdated(proto::ParticipantUpdated {
                participant: Some(info),
            }),
            out,
        );
    }

    fn on_cursor(&mut self, conn: ConnId, m: usize, x: f32, y: f32, now: Millis, out: &mut Out) {
        if !(x.is_finite()
            && y.is_finite()
            && (0.0..=100.0).contains(&x)
            && (0.0..=100.0).contains(&y))
        {
            return error(
                out,
                conn,
                ErrorCode::InvalidValue,
                "cursor x and y must be within 0-100",
            );
        }
        let member = &mut self.members[m];
        if member
            .last_cursor
            .is_some_and(|t| now < t + CURSOR_MIN_INTERVAL_MS)
        {
            return; // throttled: the next position carries the news
        }
        member.last_cursor = Some(now);
        let id = member.info.id.clone();
        self.send_to_others(
            conn,
            S::Cursor(proto::Cursor {
                participant_id: id,
                x,
                y,
            }),
            out,
        );
    }

    // -- chat ---------------------------------------------------------------------------------

    fn on_chat(&mut self, conn: ConnId, m: usize, raw: &str, now: Millis, out: &mut Out) {
        if self.members[m].info.muted_chat {
            return error(out, conn, ErrorCode::Muted, "you are muted in this room");
        }
        let privileged = self.is_owner(m) || self.actor(m).staff();
        if self.stored.settings.owner_only_chat && !privileged {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner may chat in this room",
            );
        }
        let mut text = match text::chat(raw) {
            Ok(t) => t,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, &e),
        };
        let (max, window) = if privileged {
            CHAT_RATE_OWNER
        } else {
            CHAT_RATE
        };
        if let Err(wait) = self.members[m].chat_rate.try_take(max, window, now) {
            return self.over_budget(conn, budget::Kind::Chat, wait, now, out);
        }
        if self.stored.settings.profanity_filter {
            text = text::mask_profanity(&text);
        }
        let info = &self.members[m].info;
        let record = ChatRecord {
            id: self.stored.next_chat_id,
            time: now,
            participant_id: info.id.clone(),
            user_id: info.user_id.clone(),
            name: info.name.clone(),
            color: info.color.clone(),
            text,
        };
        self.stored.next_chat_id += 1;
        if let Some(st) = self.stats.of(&record.user_id, now) {
            st.chats += 1;
        }
        self.stored.chat.push(record.clone());
        if self.stored.chat.len() > CHAT_HISTORY {
            let excess = self.stored.chat.len() - CHAT_HISTORY;
            self.stored.chat.drain(..excess);
        }
        out.push(Effect::Persist(Change::ChatAppended(record.clone())));
        self.send_to_all(S::Chat(record.to_proto()), out);
    }

    fn on_typing(&mut self, conn: ConnId, m: usize, typing: bool, out: &mut Out) {
        if self.members[m].info.muted_chat {
            return error(out, conn, ErrorCode::Muted, "you are muted in this room");
        }
        let id = self.members[m].info.id.clone();
        self.send_to_others(
            conn,
            S::Typing(proto::Typing {
                participant_id: id,
                typing,
            }),
            out,
        );
    }

    fn on_delete_chat(&mut self, conn: ConnId, m: usize, id: u64, out: &mut Out) {
        let Some(pos) = self.stored.chat.iter().position(|r| r.id == id) else {
            return error(
                out,
                conn,
                ErrorCode::NotFound,
                format!("no chat message {id}"),
            );
        };
        let own = self.stored.chat[pos].user_id == self.members[m].info.user_id;
        if !own && !perms::allowed(self.actor(m), Action::DeleteOthersChat) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only moderators may delete other people's messages",
            );
        }
        self.stored.chat.remove(pos);
        out.push(Effect::Persist(Change::ChatDeleted(id)));
        self.send_to_all(S::ChatDeleted(proto::ChatDeleted { id }), out);
    }

    fn on_clear_chat(&mut self, conn: ConnId, m: usize, out: &mut Out) {
        if !perms::allowed(self.actor(m), Action::ClearChat) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only moderators may clear the chat",
            );
        }
        self.stored.chat.clear();
        out.push(Effect::Persist(Change::ChatCleared));
        self.send_to_all(S::ChatCleared(proto::ChatCleared {}), out);
    }

    // -- settings -----------------------------------------------------------------------------

    fn on_settings(
        &mut self,
        conn: ConnId,
        m: usize,
        p: proto::UpdateSettings,
        now: Millis,
        out: &mut Out,
    ) {
        let actor = self.actor(m);
        if !perms::allowed(actor, Action::ChangeSettings) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner or a moderator may change settings",
            );
        }
        match self.patched_settings(actor, &p) {
            Ok(settings) => self.apply_settings(settings, p.password, now, out),
            Err((code, message)) => error(out, conn, code, message),
        }
    }

    /// The settings with `p` applied, if every given value is valid (all or nothing).
    fn patched_settings(
        &self,
        actor: Actor,
        p: &proto::UpdateSettings,
    ) -> Result<stored::Settings, (ErrorCode, String)> {
        let invalid = |m: String| (ErrorCode::InvalidValue, m);
        let mut s = self.stored.settings.clone();
        if let Some(max) = p.max_players {
            if max == 0 || max > MAX_PLAYERS_ADMIN {
                return Err(invalid(format!("max players must be 1-{MAX_PLAYERS}")));
            }
            if max > MAX_PLAYERS && !perms::allowed(actor, Action::RaiseCapacity) {
                return Err((
                    ErrorCode::NotAllowed,
                    format!("only admins may set max players above {MAX_PLAYERS}"),
                ));
            }
            s.max_players = max;
        }
        if let Some(w) = &p.welcome_message {
            s.welcome_message = text::optional_line("welcome message", w, text::MAX_WELCOME_CHARS)
                .map_err(invalid)?;
        }
        if let Some(c) = &p.color {
            s.color = text::color(c).map_err(invalid)?;
        }
        if p.password
            .as_ref()
            .is_some_and(|pw| pw.chars().count() > text::MAX_PASSWORD_CHARS)
        {
            return Err(invalid(format!(
                "password is over {} characters",
                text::MAX_PASSWORD_CHARS
            )));
        }
        let flags = [
            (p.visible, &mut s.visible),
            (p.owner_only_chat, &mut s.owner_only_chat),
            (p.owner_only_play, &mut s.owner_only_play),
            (p.allow_guests, &mut s.allow_guests),
            (p.allow_bots, &mut s.allow_bots),
            (p.allow_black_midi, &mut s.allow_black_midi),
            (p.profanity_filter, &mut s.profanity_filter),
        ];
        for (new, field) in flags {
            if let Some(v) = new {
                *field = v;
            }
        }
        Ok(s)
    }

    /// Stores validated settings (and a new password, if given), tells everyone, and
    /// re-evaluates quotas when Black MIDI was toggled.
    fn apply_settings(
        &mut self,
        settings: stored::Settings,
        password: Option<String>,
        now: Millis,
        out: &mut Out,
    ) {
        if let Some(pw) = password {
            self.stored.password = if pw.is_empty() {
                None
            } else {
                Some(PasswordHash::new(&pw, self.next_salt()))
            };
            out.push(Effect::Persist(Change::Password(
                self.stored.password.clone(),
            )));
        }
        let quotas_change = settings.allow_black_midi != self.stored.settings.allow_black_midi;
        self.stored.settings = settings;
        out.push(Effect::Persist(Change::Settings(
            self.stored.settings.clone(),
        )));
        self.send_to_all(
            S::SettingsChanged(proto::SettingsChanged {
                settings: Some(self.settings_proto()),
            }),
            out,
        );
        if quotas_change {
            for i in 0..self.members.len() {
                self.refresh_quota(i, now, out);
            }
        }
    }

    fn next_salt(&mut self) -> Vec<u8> {
        self.salts_made += 1;
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(self.name.as_bytes());
        h.update(self.salts_made.to_le_bytes());
        h.finalize()[..16].to_vec()
    }

    // -- the crown ----------------------------------------------------------------------------

    fn on_transfer(&mut self, conn: ConnId, m: usize, target: &str, now: Millis, out: &mut Out) {
        if self.kind == RoomKind::Lobby {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "lobby rooms have no owner",
            );
        }
        if !perms::allowed(self.actor(m), Action::TransferOwnership) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner may give the crown away",
            );
        }
        let Some(t) = self.member_index_by_id(target) else {
            return error(out, conn, ErrorCode::NotFound, "no such participant here");
        };
        let user = self.members[t].info.user_id.clone();
        self.set_owner(Some(user), now, out);
        self.send_to_all(
            S::OwnerChanged(proto::OwnerChanged {
                ownership: Some(self.ownership_proto()),
            }),
            out,
        );
    }

    fn on_drop(&mut self, conn: ConnId, m: usize, now: Millis, out: &mut Out) {
        if !perms::allowed(self.actor(m), Action::DropOwnership) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "you do not hold the crown",
            );
        }
        let user = self.members[m].info.user_id.clone();
        self.drop_crown(user, now, out);
    }

    fn on_claim(&mut self, conn: ConnId, m: usize, now: Millis, out: &mut Out) {
        if self.kind == RoomKind::Lobby {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "lobby rooms have no owner",
            );
        }
        let crown = &self.stored.crown;
        if crown.owner_user.is_some() {
            return error(out, conn, ErrorCode::NotAllowed, "someone holds the crown");
        }
        let user = self.members[m].info.user_id.clone();
        let previous = crown.previous_user.as_deref() == Some(user.as_str());
        let ready_at = crown
            .dropped_at
            .map(|t| t + CROWN_CLAIM_DELAY_MS)
            .unwrap_or(0);
        if !previous && !self.actor(m).staff() && now < ready_at {
            return error(
                out,
                conn,
                ErrorCode::NotYet,
                format!("the crown can be claimed in {} ms", ready_at - now),
            );
        }
        self.set_owner(Some(user), now, out);
        self.send_to_all(
            S::OwnerChanged(proto::OwnerChanged {
                ownership: Some(self.ownership_proto()),
            }),
            out,
        );
    }

    fn drop_crown(&mut self, previous: String, now: Millis, out: &mut Out) {
        self.set_owner(None, now, out);
        self.stored.crown.previous_user = Some(previous);
        self.stored.crown.dropped_at = Some(now);
        out.push(Effect::Persist(Change::Crown(self.stored.crown.clone())));
        self.send_to_all(
            S::OwnerChanged(proto::OwnerChanged {
                ownership: Some(self.ownership_proto()),
            }),
            out,
        );
    }

    /// Moves the crown (persisted), and re-evaluates the quotas of the old and new owner.
    fn set_owner(&mut self, user: Option<String>, now: Millis, out: &mut Out) {
        let old = self.stored.crown.owner_user.clone();
        let name = user
            .as_deref()
            .and_then(|u| self.member_index_by_user(u))
            .map(|i| self.members[i].info.name.clone())
            .unwrap_or_default();
        let crown = &mut self.stored.crown;
        crown.owner_user = user.clone();
        crown.owner_name = name;
        if user.is_some() {
            crown.assigned_once = true;
            crown.previous_user = None;
            crown.dropped_at = None;
        }
        out.push(Effect::Persist(Change::Crown(crown.clone())));
        for u in [old, user].into_iter().flatten() {
            if let Some(i) = self.member_index_by_user(&u) {
                self.refresh_quota(i, now, out);
            }
        }
    }

    // -- moderation ---------------------------------------------------------------------------

    fn on_kick(
        &mut self,
        conn: ConnId,
        m: usize,
        target: &str,
        ban_ms: u64,
        now: Millis,
        out: &mut Out,
    ) {
        let actor = self.actor(m);
        let action = if ban_ms > 0 {
            Action::Ban
        } else {
            Action::Kick
        };
        if !perms::allowed(actor, action) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner or a moderator may kick",
            );
        }
        if ban_ms > MAX_BAN_MS {
            return error(
                out,
                conn,
                ErrorCode::InvalidValue,
                "a ban lasts at most 1 hour (3600000 ms)",
            );
        }
        let t = match self.moderation_target(m, target, "kick") {
            Ok(t) => t,
            Err((code, msg)) => return error(out, conn, code, msg),
        };
        let user = self.members[t].info.user_id.clone();
        let banned_until = if ban_ms > 0 { now + ban_ms } else { 0 };
        if ban_ms > 0 {
            self.stored
                .bans
                .retain(|b| b.user_id != user && b.until > now);
            // The network too, so the banned player cannot come back as a new guest.
            let network = self.members[t]
                .conns
                .iter()
                .find_map(|c| self.conns.get(c)?.identity.network.clone());
            self.stored.bans.push(Ban {
                user_id: user.clone(),
                until: banned_until,
                network,
            });
            out.push(Effect::Persist(Change::Bans(self.stored.bans.clone())));
        }
        let by = self.members[m].info.id.clone();
        let victims = self.members[t].conns.clone();
        out.push(send_many(
            victims.clone(),
            S::Kicked(proto::Kicked {
                by_participant_id: by,
                banned_until,
            }),
        ));
        for v in victims {
            self.on_disconnect(v, now, out);
            out.push(Effect::Close {
                conn: v,
                code: close::KICKED,
                reason: "kicked",
            });
        }
    }

    fn on_unban(&mut self, conn: ConnId, m: usize, user: &str, out: &mut Out) {
        if !perms::allowed(self.actor(m), Action::Unban) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner or a moderator may unban",
            );
        }
        let before = self.stored.bans.len();
        self.stored.bans.retain(|b| b.user_id != user);
        if self.stored.bans.len() == before {
            return error(
                out,
                conn,
                ErrorCode::NotFound,
                "that user is not banned here",
            );
        }
        out.push(Effect::Persist(Change::Bans(self.stored.bans.clone())));
    }

    fn on_mute(
        &mut self,
        conn: ConnId,
        m: usize,
        target: &str,
        notes: bool,
        chat: bool,
        out: &mut Out,
    ) {
        let actor = self.actor(m);
        if !perms::allowed(actor, Action::Mute) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner or a moderator may mute",
            );
        }
        let t = match self.moderation_target(m, target, "mute") {
            Ok(t) => t,
            Err((code, msg)) => return error(out, conn, code, msg),
        };
        let info = &mut self.members[t].info;
        info.muted_notes = notes;
        info.muted_chat = chat;
        let user = info.user_id.clone();
        let info = info.clone();
        self.stored.mutes.retain(|e| e.user_id != user);
        if notes || chat {
            self.stored.mutes.push(MuteEntry {
                user_id: user,
                notes,
                chat,
            });
        }
        out.push(Effect::Persist(Change::Mutes(self.stored.mutes.clone())));
        self.send_to_all(
            S::ParticipantUpdated(proto::ParticipantUpdated {
                participant: Some(info),
            }),
            out,
        );
    }

    /// The member that member `m` may kick or mute: present, not `m`, and not staff unless
    /// `m` is an admin.
    fn moderation_target(
        &self,
        m: usize,
        target: &str,
        verb: &str,
    ) -> Result<usize, (ErrorCode, String)> {
        let t = self
            .member_index_by_id(target)
            .ok_or_else(|| (ErrorCode::NotFound, "no such participant here".to_owned()))?;
        if t == m {
            return Err((
                ErrorCode::InvalidValue,
                format!("you cannot {verb} yourself"),
            ));
        }
        if !perms::may_target(self.actor(m), self.actor(t)) {
            return Err((
                ErrorCode::NotAllowed,
                format!("only an admin may {verb} a moderator or admin"),
            ));
        }
        Ok(t)
    }

    // -- helpers ------------------------------------------------------------------------------

    fn add_conn(&mut self, conn: ConnId, identity: Identity, profile: Profile, now: Millis) {
        let participant_id = participant_id(&identity.user_id);
        self.conns.insert(
            conn,
            Conn {
                identity,
                participant_id,
                joined: None,
                profile,
                subscribed: false,
                budget: budget::ConnBudget::new(&self.limits, now),
                pending_join: None,
            },
        );
    }

    /// Marks `conn` joined with sequence `seq`; true when its user was not present before.
    fn join_member(&mut self, conn: ConnId, seq: u64, now: Millis) -> bool {
        let Some(pid) = self.conns.get(&conn).map(|c| c.participant_id.clone()) else {
            return false;
        };
        if let Some(m) = self.members.iter_mut().find(|m| m.info.id == pid) {
            // Another connection of a present participant takes on the profile the participant
            // shows (every connection's record must carry it: any one of them may be the last
            // left to rebuild the participant from after hibernation).
            let profile = m
                .conns
                .iter()
                .find_map(|other| self.conns.get(other))
                .map(|other| other.profile.clone());
            let since = m.since;
            m.conns.push(conn);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.joined = Some(since);
                if let Some(p) = profile {
                    c.profile = p;
                }
            }
            return false;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.joined = Some(seq);
        if let Some(st) = self.stats.of(&c.identity.user_id, now) {
            st.joins += 1;
        }
        let mut info = participant_info(&c.participant_id, &c.identity, &c.profile);
        if let Some(mute) = self.stored.mutes.iter().find(|e| e.user_id == info.user_id) {
            info.muted_notes = mute.notes;
            info.muted_chat = mute.chat;
        }
        let (params, limited) = self.quota_params_for(&info.user_id);
        self.members.push(Member {
            info,
            since: seq,
            conns: vec![conn],
            quota: NoteQuota::new(params, limited, now),
            chat_rate: RateWindow::default(),
            last_cursor: None,
            sounding: abuse::Sounding::default(),
        });
        true
    }

    fn quota_params_for(&self, user: &str) -> (QuotaParams, bool) {
        let params = match self.kind {
            RoomKind::Lobby => quota::LOBBY,
            RoomKind::Normal if self.stored.crown.owner_user.as_deref() == Some(user) => {
                quota::OWNER
            }
            RoomKind::Normal => quota::NORMAL,
        };
        (params, !self.stored.settings.allow_black_midi)
    }

    /// Re-evaluates a member's quota; tells the member when it changed.
    fn refresh_quota(&mut self, i: usize, now: Millis, out: &mut Out) {
        let (params, limited) = self.quota_params_for(&self.members[i].info.user_id);
        let member = &mut self.members[i];
        if member.quota.set(params, limited, now) {
            out.push(send_many(
                member.conns.clone(),
                S::Quota(member.quota.to_proto(now)),
            ));
        }
    }

    fn participant_for(&self, conn: ConnId) -> Option<proto::Participant> {
        let c = self.conns.get(&conn)?;
        Some(
            self.members
                .iter()
                .find(|m| m.info.id == c.participant_id)
                .map(|m| m.info.clone())
                .unwrap_or_else(|| participant_info(&c.participant_id, &c.identity, &c.profile)),
        )
    }

    fn member_index_of_conn(&self, conn: ConnId) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        c.joined?;
        self.member_index_by_id(&c.participant_id)
    }

    fn member_index_by_id(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.id == id)
    }

    fn member_index_by_user(&self, user: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.user_id == user)
    }

    fn is_owner(&self, m: usize) -> bool {
        self.stored.crown.owner_user.as_deref() == Some(self.members[m].info.user_id.as_str())
    }

    fn actor(&self, m: usize) -> Actor {
        Actor::from_roles(&self.members[m].info.roles, self.is_owner(m))
    }

    fn joined_conns(&self, except: Option<ConnId>) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(id, c)| Some(**id) != except && c.joined.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn send_to_others(&self, except: ConnId, msg: S, out: &mut Out) {
        let targets = self.joined_conns(Some(except));
        if !targets.is_empty() {
            out.push(send_many(targets, msg));
        }
    }

    fn send_to_all(&self, msg: S, out: &mut Out) {
        let targets = self.joined_conns(None);
        if !targets.is_empty() {
            out.push(send_many(targets, msg));
        }
    }
}

fn participant_info(id: &str, identity: &Identity, profile: &Profile) -> proto::Participant {
    proto::Participant {
        id: id.to_owned(),
        user_id: identity.user_id.clone(),
        name: profile
            .name
            .clone()
            .unwrap_or_else(|| identity.name.clone()),
        roles: identity.roles.clone(),
        color: profile
            .color
            .clone()
            .unwrap_or_else(|| color_for(&identity.user_id)),
        status: profile.status.clone(),
        muted_notes: false,
        muted_chat: false,
    }
}

/// Participant ids are derived from the user id: stable across reconnects and hibernation with
/// nothing to store, and short (12 characters), since every relayed note batch carries one.
pub fn participant_id(user_id: &str) -> String {
    use base64::Engine;
    let digest = Sha256::digest(user_id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9])
}

/// A default colour per user, bright enough to read on a dark keyboard.
fn color_for(user_id: &str) -> String {
    let d = Sha256::digest(format!("color:{user_id}").as_bytes());
    let hue = f64::from(u16::from_be_bytes([d[0], d[1]])) / 65536.0 * 360.0;
    let (r, g, b) = hsl_to_rgb(hue, 0.65, 0.6);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn hsl_to_rgb(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = l - c / 2.0;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    (to(r), to(g), to(b))
}

fn encode(msg: S) -> Bytes {
    Bytes::from(ServerMessage { msg: Some(msg) }.encode_to_vec())
}

fn send_one(conn: ConnId, msg: S) -> Effect {
    Effect::Send {
        to: Targets::One(conn),
        frame: encode(msg),
    }
}

fn send_many(conns: Vec<ConnId>, msg: S) -> Effect {
    Effect::Send {
        to: Targets::Many(conns),
        frame: encode(msg),
    }
}

fn error(out: &mut Out, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
    out.push(send_one(
        conn,
        S::Error(proto::Error {
            code: code as i32,
            message: message.into(),
            retry_after_ms: 0,
        }),
    ));
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_admission;
#[cfg(test)]
mod tests_budget;
#[cfg(test)]
mod tests_lifecycle;
