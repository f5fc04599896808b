//! The room state machine (DESIGN §1): `Room::handle(input, now) -> effects`.
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
//! Hibernation: everything the room must remember about a connection is in its [`ConnRecord`],
//! which the host stores with the socket ([`Effect::Remember`]); [`Room::restore`] rebuilds the
//! same room from those records after the host was evicted from memory.

use crate::identity::Identity;
use crate::limits::{MAX_FRAME_BYTES, PROTOCOL_VERSION, close};
use crate::proto::{self, ClientMessage, ErrorCode, ServerMessage, client_message, server_message};
use crate::{Millis, notes};
use bytes::Bytes;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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
}

struct Conn {
    identity: Identity,
    participant_id: String,
    joined: Option<u64>,
}

struct Member {
    info: proto::Participant,
    conns: Vec<ConnId>,
}

pub struct Room {
    name: String,
    conns: BTreeMap<ConnId, Conn>,
    /// In join order.
    members: Vec<Member>,
    next_join_seq: u64,
}

impl Room {
    pub fn new(name: impl Into<String>) -> Room {
        Room {
            name: name.into(),
            conns: BTreeMap::new(),
            members: Vec::new(),
            next_join_seq: 1,
        }
    }

    /// Rebuilds a room from the records its host kept; the room looks to its players exactly as
    /// before (same participants, same order, same ids).
    pub fn restore(name: impl Into<String>, records: impl IntoIterator<Item = ConnRecord>) -> Room {
        let mut room = Room::new(name);
        let mut records: Vec<ConnRecord> = records.into_iter().collect();
        records.sort_by_key(|r| (r.joined.is_none(), r.joined, r.conn));
        for r in records {
            room.add_conn(r.conn, r.identity);
            if let Some(seq) = r.joined {
                room.join_member(r.conn, seq);
                room.next_join_seq = room.next_join_seq.max(seq + 1);
            }
        }
        room
    }

    pub fn name(&self) -> &str {
        &self.name
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

    /// Feeds one input; returns what the host must do.
    pub fn handle(&mut self, input: Input<'_>, now: Millis) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Connect { conn, identity } => self.on_connect(conn, identity, now, &mut out),
            Input::Frame { conn, frame } => self.on_frame(conn, frame, now, &mut out),
            Input::Disconnect { conn } => self.on_disconnect(conn, &mut out),
        }
        out
    }

    fn on_connect(&mut self, conn: ConnId, identity: Identity, now: Millis, out: &mut Vec<Effect>) {
        if self.conns.contains_key(&conn) {
            // A host reusing a live id is a host bug; drop the old connection cleanly first.
            self.on_disconnect(conn, out);
        }
        let record = ConnRecord {
            conn,
            identity: identity.clone(),
            joined: None,
        };
        self.add_conn(conn, identity);
        let you = self.participant_for(conn);
        out.push(Effect::Remember(record));
        out.push(send_one(
            conn,
            server_message::Msg::Welcome(proto::Welcome {
                protocol_version: PROTOCOL_VERSION,
                server_time: now,
                you,
                room: self.name.clone(),
                max_frame_bytes: MAX_FRAME_BYTES as u32,
            }),
        ));
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame<'_>, now: Millis, out: &mut Vec<Effect>) {
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
            self.on_disconnect(conn, out);
            out.push(Effect::Close {
                conn,
                code: close::FRAME_TOO_LARGE,
                reason: "frame too large",
            });
            return;
        }
        let bytes = match frame {
            Frame::Binary(b) => b,
            Frame::Text(_) => {
                out.push(error(
                    conn,
                    ErrorCode::TextFrame,
                    "text frames are not supported: send binary protobuf ClientMessage frames",
                ));
                return;
            }
        };
        let msg = match ClientMessage::decode(bytes) {
            Ok(ClientMessage { msg: Some(msg) }) => msg,
            Ok(ClientMessage { msg: None }) => {
                out.push(error(
                    conn,
                    ErrorCode::EmptyMessage,
                    "the ClientMessage has no message set",
                ));
                return;
            }
            Err(e) => {
                out.push(error(
                    conn,
                    ErrorCode::MalformedFrame,
                    &format!("not a ClientMessage: {e}"),
                ));
                return;
            }
        };
        match msg {
            client_message::Msg::Ping(ping) => out.push(send_one(
                conn,
                server_message::Msg::Pong(proto::Pong {
                    client_time: ping.client_time,
                    server_time: now,
                }),
            )),
            client_message::Msg::Join(_) => self.on_join(conn, now, out),
            client_message::Msg::Notes(batch) => self.on_notes(conn, batch, now, out),
        }
    }

    fn on_join(&mut self, conn: ConnId, now: Millis, out: &mut Vec<Effect>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.joined.is_some() {
            out.push(error(
                conn,
                ErrorCode::AlreadyJoined,
                "this connection has already joined",
            ));
            return;
        }
        let seq = self.next_join_seq;
        self.next_join_seq += 1;
        let is_new_participant = self.join_member(conn, seq);
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let you = self.participant_for(conn);
        out.push(Effect::Remember(ConnRecord {
            conn,
            identity: c.identity.clone(),
            joined: Some(seq),
        }));
        out.push(send_one(
            conn,
            server_message::Msg::Joined(proto::Joined {
                room: self.name.clone(),
                you: you.clone(),
                participants: self.participants().cloned().collect(),
                server_time: now,
            }),
        ));
        if is_new_participant {
            if let (Some(p), others) = (you, self.joined_conns_except(conn)) {
                if !others.is_empty() {
                    out.push(send_many(
                        others,
                        server_message::Msg::ParticipantJoined(proto::ParticipantJoined {
                            participant: Some(p),
                        }),
                    ));
                }
            }
        }
    }

    fn on_notes(
        &mut self,
        conn: ConnId,
        mut batch: proto::NoteBatch,
        now: Millis,
        out: &mut Vec<Effect>,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.joined.is_none() {
            out.push(error(
                conn,
                ErrorCode::NotJoined,
                "join the room before sending notes",
            ));
            return;
        }
        if let Err(msg) = notes::validate(&batch, now) {
            out.push(error(conn, ErrorCode::InvalidNotes, &msg));
            return;
        }
        batch.sender_id = c.participant_id.clone();
        let targets = self.joined_conns_except(conn);
        if !targets.is_empty() {
            out.push(send_many(targets, server_message::Msg::Notes(batch)));
        }
    }

    fn on_disconnect(&mut self, conn: ConnId, out: &mut Vec<Effect>) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
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
            let others = self.joined_conns_except(conn);
            if !others.is_empty() {
                out.push(send_many(
                    others,
                    server_message::Msg::ParticipantLeft(proto::ParticipantLeft {
                        participant_id: gone.info.id,
                    }),
                ));
            }
        }
    }

    fn add_conn(&mut self, conn: ConnId, identity: Identity) {
        let participant_id = participant_id(&identity.user_id);
        self.conns.insert(
            conn,
            Conn {
                identity,
                participant_id,
                joined: None,
            },
        );
    }

    /// Marks `conn` joined with sequence `seq`; true when its user was not present before.
    fn join_member(&mut self, conn: ConnId, seq: u64) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.joined = Some(seq);
        if let Some(m) = self
            .members
            .iter_mut()
            .find(|m| m.info.id == c.participant_id)
        {
            m.conns.push(conn);
            return false;
        }
        let info = participant_info(&c.participant_id, &c.identity);
        self.members.push(Member {
            info,
            conns: vec![conn],
        });
        true
    }

    fn participant_for(&self, conn: ConnId) -> Option<proto::Participant> {
        let c = self.conns.get(&conn)?;
        Some(
            self.members
                .iter()
                .find(|m| m.info.id == c.participant_id)
                .map(|m| m.info.clone())
                .unwrap_or_else(|| participant_info(&c.participant_id, &c.identity)),
        )
    }

    fn joined_conns_except(&self, except: ConnId) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(id, c)| **id != except && c.joined.is_some())
            .map(|(id, _)| *id)
            .collect()
    }
}

fn participant_info(id: &str, identity: &Identity) -> proto::Participant {
    proto::Participant {
        id: id.to_owned(),
        user_id: identity.user_id.clone(),
        name: identity.name.clone(),
        roles: identity.roles.clone(),
        color: color_for(&identity.user_id),
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

fn encode(msg: server_message::Msg) -> Bytes {
    Bytes::from(ServerMessage { msg: Some(msg) }.encode_to_vec())
}

fn send_one(conn: ConnId, msg: server_message::Msg) -> Effect {
    Effect::Send {
        to: Targets::One(conn),
        frame: encode(msg),
    }
}

fn send_many(conns: Vec<ConnId>, msg: server_message::Msg) -> Effect {
    Effect::Send {
        to: Targets::Many(conns),
        frame: encode(msg),
    }
}

fn error(conn: ConnId, code: ErrorCode, message: &str) -> Effect {
    send_one(
        conn,
        server_message::Msg::Error(proto::Error {
            code: code as i32,
            message: message.to_owned(),
        }),
    )
}

#[cfg(test)]
mod tests;
