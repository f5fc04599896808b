//! Connections speaking Multiplayer Piano JSON ([`Protocol::Mpp`], translation in `crate::mpp`).
//!
//! In: an MPP text frame is checked like any frame (size, frame budget), parsed, and each of its
//! messages goes the way of the protobuf message it becomes (its kind's budget, its handler).
//! Out: after an input, each `Send` with MPP targets is split in two: the protobuf frame for the
//! others, and one MPP JSON frame for all MPP targets (translated once, whatever their number).
//! A room without MPP connections never comes here.

use super::{C, ConnId, Delivery, Effect, Out, Protocol, Room, S, Targets};
use crate::Millis;
use crate::limits::{MAX_FRAME_BYTES, close};
use crate::mpp::{self, Action};
use crate::proto::{self, ServerMessage};
use bytes::Bytes;
use prost::Message;
use serde_json::Value;

/// What a room keeps for its MPP connections.
#[derive(Debug, Default)]
pub(super) struct MppState {
    /// Open MPP connections.
    pub(super) conns: usize,
    /// MPP connections that went during this input: their last frames and closes are MPP too.
    gone: Vec<ConnId>,
    /// Positions in this input's effects of frames already in MPP form.
    pub(super) native: Vec<usize>,
    /// What MPP's whole-channel messages are written from.
    channel: mpp::Channel,
}

impl MppState {
    pub(super) fn present(&self) -> bool {
        self.conns > 0
    }

    pub(super) fn gone(&mut self, conn: ConnId) {
        self.conns = self.conns.saturating_sub(1);
        self.gone.push(conn);
    }

    fn involved(&self) -> bool {
        self.conns > 0 || !self.gone.is_empty()
    }
}

impl Room {
    pub(super) fn speaks_mpp(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.protocol == Protocol::Mpp)
    }

    pub(super) fn on_mpp_frame(
        &mut self,
        conn: ConnId,
        frame: super::Frame<'_>,
        now: Millis,
        out: &mut Out,
    ) {
        let bytes = match frame {
            super::Frame::Text(t) => t.as_bytes(),
            super::Frame::Binary(b) => b,
        };
        if bytes.len() > MAX_FRAME_BYTES {
            self.on_disconnect(conn, now, out);
            return out.push(Effect::Close {
                conn,
                code: close::FRAME_TOO_LARGE,
                reason: "frame too large",
            });
        }
        if !self.frame_budget(conn, now, out) {
            return;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return self.mpp_send(
                conn,
                mpp::notification("Bad message", "frames are UTF-8 JSON text"),
                out,
            );
        };
        let messages = match mpp::parse_frame(text) {
            Ok(m) => m,
            Err(e) => {
                return self.mpp_send(conn, mpp::notification("Bad message", &e.to_string()), out);
            }
        };
        // One notice per frame is enough to say what is wrong with it.
        let mut noticed = false;
        for message in messages {
            let Some(own) = self.conns.get(&conn).map(|c| c.participant_id.clone()) else {
                return; // closed meanwhile (over budget, kicked)
            };
            let notice = match message.and_then(|m| m.into_action(Some(&own))) {
                Err(e) => Some(mpp::notification("Bad message", &e.to_string())),
                Ok(Action::Room(msg)) => {
                    self.on_message(conn, msg, now, out);
                    None
                }
                Ok(Action::Join { room, join }) if room == self.name => {
                    self.on_message(conn, C::Join(join), now, out);
                    None
                }
                Ok(Action::Join { room, join }) => {
                    let frame = mpp::ch_frame(&room, join.create_settings.as_ref());
                    self.on_disconnect(conn, now, out);
                    return out.push(Effect::ChangeRoom { conn, room, frame });
                }
                Ok(Action::Hi { .. }) => self
                    .participant_for(conn)
                    .map(|you| mpp::hi(&you, now, "", None)),
                Ok(Action::Bye) => {
                    self.on_disconnect(conn, now, out);
                    return out.push(Effect::Close {
                        conn,
                        code: close::NORMAL,
                        reason: "bye",
                    });
                }
                Ok(Action::Unsupported(what)) => Some(mpp::unsupported(what)),
            };
            if let Some(n) = notice {
                let is_hi = n["m"] == "hi";
                if is_hi || !noticed {
                    self.mpp_send(conn, n, out);
                }
                noticed |= !is_hi;
            }
        }
    }

    /// A message already in MPP form for one MPP connection.
    fn mpp_send(&mut self, conn: ConnId, message: Value, out: &mut Out) {
        if let Some(frame) = mpp::frame(&[message]) {
            self.mpp.native.push(out.len());
            out.push(Effect::Send {
                to: Targets::One(conn),
                frame: Bytes::from(frame),
                delivery: Delivery::Reliable,
            });
        }
    }

    /// Splits each `Send` with MPP targets into a protobuf `Send` and one MPP `Send` (closes
    /// keep our codes: hosts give MPP clients MPP's, `mpp::close::for_mpp`).
    pub(super) fn mpp_outbound(&mut self, out: &mut Out) {
        if !self.mpp.involved() {
            return;
        }
        let native = std::mem::take(&mut self.mpp.native);
        let gone = std::mem::take(&mut self.mpp.gone);
        let is_mpp = |conns: &std::collections::BTreeMap<ConnId, super::Conn>, c: &ConnId| {
            conns
                .get(c)
                .map_or(gone.contains(c), |c| c.protocol == Protocol::Mpp)
        };
        for (i, effect) in std::mem::take(out).into_iter().enumerate() {
            match effect {
                Effect::Send {
                    to,
                    frame,
                    delivery,
                } if !native.contains(&i) => {
                    let (theirs, ours): (Vec<ConnId>, Vec<ConnId>) = to
                        .as_slice()
                        .iter()
                        .copied()
                        .partition(|c| is_mpp(&self.conns, c));
                    if theirs.is_empty() {
                        out.push(Effect::Send {
                            to,
                            frame,
                            delivery,
                        });
                        continue;
                    }
                    if !ours.is_empty() {
                        out.push(Effect::Send {
                            to: targets(ours),
                            frame: frame.clone(),
                            delivery,
                        });
                    }
                    // The room encoded it a moment ago: it decodes.
                    let Ok(ServerMessage { msg: Some(msg), .. }) =
                        ServerMessage::decode(&frame[..])
                    else {
                        continue;
                    };
                    if matches!(msg, S::SettingsChanged(_) | S::OwnerChanged(_)) {
                        let participants: Vec<proto::Participant> =
                            self.participants().cloned().collect();
                        self.mpp.channel.sync(&self.name, participants);
                    }
                    if let Some(text) = mpp::frame(&self.mpp.channel.encode(&msg)) {
                        out.push(Effect::Send {
                            to: targets(theirs),
                            frame: Bytes::from(text),
                            delivery,
                        });
                    }
                }
                e => out.push(e),
            }
        }
    }
}

fn targets(mut conns: Vec<ConnId>) -> Targets {
    if conns.len() == 1 {
        Targets::One(conns.remove(0))
    } else {
        Targets::Many(conns)
    }
}
