//! Multiplayer Piano (MPP) protocol bridge, sans-I/O: MPP clients and bots play in the same
//! rooms as our protobuf players.
//!
//! MPP speaks text WebSocket frames, each a JSON array of `{"m": ...}` messages (the public
//! description is `docs/protocol.md` of MPP's frontend repository). This module only translates:
//! - in: [`parse_frame`] a frame into typed [`MppIn`] messages, then [`MppIn::into_action`] each
//!   into what happens: a `ClientMessage` for the current room, a room change (`ch`), sign-in
//!   (`hi`), or a [`notification`] for what our rooms do not have (`dm`, `custom`, `devices`).
//! - out: [`Channel::encode`] the room's `ServerMessage`s into MPP messages, [`frame`] them.
//!
//! - before a room: [`Session`], what a socket does between `hi` and its first `ch`.
//!
//! The room's rules (budgets, quotas, permissions, bounds) stay in `room`: an MPP message is
//! checked exactly as the protobuf message it becomes. What MPP cannot express either way is left
//! out, listed in README "MPP clients".

mod inbound;
pub mod keys;
mod outbound;
mod session;

pub use inbound::{Action, ChannelSettings, MppIn, MppNote, parse_frame, parse_message};
pub use outbound::{CHAT_HISTORY, Channel, participant};
pub use session::{FRAMES_PER_WINDOW, Session, Step, WINDOW_MS};

use crate::Millis;
use crate::proto;
use serde_json::{Value, json};
use std::fmt;

/// Most messages in one frame (MPP's own client sends a handful; bots batch notes in `n`).
pub const MAX_MESSAGES_PER_FRAME: usize = 64;

/// MPP's WebSocket close codes. The core (room and [`Session`]) closes MPP connections with our
/// codes, like any other; each host's transport, where it sends an MPP client its close frame,
/// turns them into MPP's with [`close::for_mpp`], once, so host-made closes (drain, idle) are
/// covered too and none of our 4001–4004 reaches an MPP client meaning what MPP means by it.
pub mod close {
    use crate::limits::close as ours;

    /// "Server closing.": reconnect in a few seconds.
    pub const SERVER_CLOSING: u16 = 4000;
    /// "Exceeded x bytes per y seconds": the byte budget (or one oversized frame).
    pub const BYTE_QUOTA: u16 = 4002;
    /// "Timed out.": nothing heard from the client for too long.
    pub const TIMED_OUT: u16 = 4004;
    /// "Exceeded x messages per y seconds": the message budget.
    pub const MESSAGE_RATE: u16 = 4007;
    /// "Client limit reached.": too many connections of one user.
    pub const CLIENT_LIMIT: u16 = 4009;

    /// The code an MPP client gets for one of ours: MPP's where MPP has one for what happened;
    /// a normal closure (the reason and a `notification` say why) for ours that MPP lacks and
    /// whose numbers mean something else there (session ended 4001, kicked 4003); standard
    /// codes as they are.
    pub fn for_mpp(code: u16) -> u16 {
        match code {
            ours::FRAME_TOO_LARGE => BYTE_QUOTA,
            ours::POLICY_VIOLATION => MESSAGE_RATE,
            // Reconnecting is the remedy for both (a new identity comes with the new socket).
            ours::SERVICE_RESTART | ours::IDENTITY_CHANGED => SERVER_CLOSING,
            ours::GOING_AWAY => TIMED_OUT,
            ours::TOO_MANY_CONNECTIONS => CLIENT_LIMIT,
            ours::SESSION_ENDED | ours::KICKED => ours::NORMAL,
            other => other,
        }
    }
}

/// A frame refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Over [`crate::limits::MAX_FRAME_BYTES`]: close (1009, for MPP [`close::BYTE_QUOTA`]).
    TooLarge {
        len: usize,
    },
    NotJson(String),
    NotArray,
    Empty,
    TooManyMessages {
        count: usize,
    },
}

/// One message refused (the rest of its frame still counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MppError {
    NotObject,
    MissingType,
    UnknownType(String),
    Field {
        m: &'static str,
        field: &'static str,
        expected: &'static str,
    },
    BadNote(String),
}

impl FrameError {
    /// The close code, when the socket must close rather than be told.
    pub fn close_code(&self) -> Option<u16> {
        matches!(self, FrameError::TooLarge { .. }).then_some(crate::limits::close::FRAME_TOO_LARGE)
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len } => write!(
                f,
                "frame of {len} bytes is over {} bytes",
                crate::limits::MAX_FRAME_BYTES
            ),
            FrameError::NotJson(e) => write!(f, "not JSON: {e}"),
            FrameError::NotArray => f.write_str("a frame is a JSON array of messages"),
            FrameError::Empty => f.write_str("a frame needs at least one message"),
            FrameError::TooManyMessages { count } => write!(
                f,
                "{count} messages in one frame, at most {MAX_MESSAGES_PER_FRAME}"
            ),
        }
    }
}

impl fmt::Display for MppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MppError::NotObject => f.write_str("a message is a JSON object"),
            MppError::MissingType => f.write_str("a message needs a string \"m\""),
            MppError::UnknownType(m) => write!(f, "unknown message type {m:?}"),
            MppError::Field { m, field, expected } => {
                write!(f, "\"{m}\": \"{field}\" must be {expected}")
            }
            MppError::BadNote(n) => write!(f, "\"n\": {n:?} is not a piano key (a-1 … c7)"),
        }
    }
}

/// An MPP `notification` (shown by MPP's client over the piano).
pub fn notification(title: &str, text: &str) -> Value {
    json!({
        "m": "notification", "class": "short", "duration": 7000,
        "target": "#piano", "title": title, "text": text,
    })
}

/// The `notification` that `skipped` note batches and cursor moves were not sent to a client
/// that fell behind its room (`crate::backlog`).
pub fn fell_behind(skipped: u32) -> Value {
    notification(
        "Connection behind",
        &format!(
            "Your connection fell behind the room: {skipped} note batches and cursor moves were skipped so you hear what is played now."
        ),
    )
}

/// The `notification` for something MPP has and our rooms do not ([`Action::Unsupported`]).
pub fn unsupported(what: &str) -> Value {
    let text = match what {
        "dm" => "Direct messages are not available on this server: chat in the room instead.",
        "custom" | "+custom" | "-custom" => {
            "Custom messages are not available on this server; they were not sent."
        }
        "devices" => "This server does not collect MIDI device lists; nothing was stored.",
        _ => "This message is not supported on this server.",
    };
    notification("Not supported", text)
}

/// The reply to `hi`: who the client is (`u`, participant info without `id`), the server time,
/// the message of the day, and `token` when the server made one (a new guest) for reuse.
pub fn hi(you: &proto::Participant, now: Millis, motd: &str, token: Option<&str>) -> Value {
    let mut u = participant(you);
    u.remove("id");
    u.remove("x");
    u.remove("y");
    let mut hi = json!({"m": "hi", "t": now, "u": u, "motd": motd, "permissions": {}});
    if let Some(token) = token {
        hi["token"] = token.into();
    }
    hi
}

/// The `ch` frame that asks for `room` (with its settings for a new room), for a host taking an
/// MPP connection there (`room::Effect::ChangeRoom`).
pub fn ch_frame(room: &str, create: Option<&proto::UpdateSettings>) -> String {
    let mut ch = json!({"m": "ch", "_id": room});
    if let Some(s) = create {
        let mut set = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                set.insert(k.into(), v);
            }
        };
        put("visible", s.visible.map(Value::from));
        put("chat", s.owner_only_chat.map(|o| Value::from(!o)));
        put("crownsolo", s.owner_only_play.map(Value::from));
        put("limit", s.max_players.map(Value::from));
        put("color", s.color.clone().map(Value::from));
        put("no cussing", s.profanity_filter.map(Value::from));
        ch["set"] = Value::Object(set);
    }
    json!([ch]).to_string()
}

/// One text frame for these messages, or `None` when there are none.
pub fn frame(messages: &[Value]) -> Option<String> {
    if messages.is_empty() {
        return None;
    }
    // Serialising `Value`s cannot fail (string keys only).
    serde_json::to_string(messages).ok()
}

#[cfg(test)]
mod tests;
