//! Frames in and out: the checks on a frame before it is decoded (size, binary, a
//! `ClientMessage` with a message set), encoding each server message once, and the typed
//! errors every handler answers with.

use super::{ConnId, Delivery, Effect, Frame, Out, Protocol, Room, S, Targets};
use crate::Millis;
use crate::limits::{MAX_FRAME_BYTES, close};
use crate::proto::{self, ClientMessage, ErrorCode, ServerMessage, client_message::Msg as C};
use bytes::Bytes;
use prost::Message;

impl Room {
    /// The message in `conn`'s frame, or `None` with the answer already in `out`: an unknown
    /// connection is closed (1011), an oversized frame closes its connection (1009), a frame over
    /// the connection's frame budget is dropped (counted before decoding, the cheapest refusal),
    /// and text frames, empty and undecodable messages get typed errors.
    pub(super) fn decode_frame(
        &mut self,
        conn: ConnId,
        frame: Frame<'_>,
        now: Millis,
        out: &mut Out,
    ) -> Option<(C, u64)> {
        if !self.conns.contains_key(&conn) {
            out.push(Effect::Close {
                conn,
                code: close::INTERNAL_ERROR,
                reason: "unknown connection",
            });
            return None;
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
            return None;
        }
        if !self.frame_budget(conn, now, out) {
            return None;
        }
        let bytes = match frame {
            Frame::Binary(b) => b,
            Frame::Text(_) => {
                error(
                    out,
                    conn,
                    ErrorCode::TextFrame,
                    "text frames are not supported: send binary protobuf ClientMessage frames",
                );
                return None;
            }
        };
        match ClientMessage::decode(bytes) {
            Ok(ClientMessage {
                msg: Some(msg),
                seq,
            }) => Some((msg, seq)),
            Ok(ClientMessage { msg: None, .. }) => {
                error(
                    out,
                    conn,
                    ErrorCode::EmptyMessage,
                    "the ClientMessage has no message set",
                );
                None
            }
            Err(e) => {
                error(
                    out,
                    conn,
                    ErrorCode::MalformedFrame,
                    format!("not a ClientMessage: {e}"),
                );
                None
            }
        }
    }
}

/// `msg` numbered `seq` (docs/resume.md §2).
pub(super) fn encode_seq(msg: S, seq: u64) -> Bytes {
    Bytes::from(
        ServerMessage {
            msg: Some(msg),
            seq,
        }
        .encode_to_vec(),
    )
}

pub(super) fn encode(msg: S) -> Bytes {
    Bytes::from(
        ServerMessage {
            msg: Some(msg),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

pub(super) fn send_one(conn: ConnId, msg: S) -> Effect {
    Effect::Send {
        to: Targets::One(conn),
        delivery: Delivery::of(&msg),
        frame: encode(msg),
    }
}

pub(super) fn send_many(conns: Vec<ConnId>, msg: S) -> Effect {
    Effect::Send {
        to: Targets::Many(conns),
        delivery: Delivery::of(&msg),
        frame: encode(msg),
    }
}

/// The notice that `skipped` fresh frames were not sent to a connection that fell behind
/// (`crate::backlog`), in the connection's protocol; the host queues it.
pub fn fell_behind(protocol: Protocol, skipped: u32) -> Bytes {
    match protocol {
        Protocol::Protobuf => encode(S::FellBehind(proto::FellBehind { skipped })),
        Protocol::Mpp => {
            Bytes::from(crate::mpp::frame(&[crate::mpp::fell_behind(skipped)]).unwrap_or_default())
        }
    }
}

pub(super) fn error(out: &mut Out, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
    out.push(send_one(
        conn,
        S::Error(proto::Error {
            code: code as i32,
            message: message.into(),
            retry_after_ms: 0,
        }),
    ));
}
