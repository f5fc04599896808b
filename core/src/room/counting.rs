//! The room's share of the metrics (`crate::metrics`): messages in and out by kind, note events
//! relayed and dropped, joins refused, typed errors sent, sockets closed because their session
//! ended or their roles changed. The room counts into its own
//! [`Counters`]; the host drains them (`Room::drain_counters`) and adds them to its totals (the
//! fallback into process-wide atomics, the edge's Room objects to the directory's aggregate), so
//! both hosts count the same things the same way.

use super::{C, Effect, Out, Room};
use crate::limits::close;
use crate::metrics::{Counters, Fam};
use crate::proto::{ServerMessage, server_message::Msg as S};
use prost::Message;

/// The `ClientMessage` field number of a message (its kind in `metrics::IN_KINDS`).
pub(super) fn in_kind(msg: &C) -> usize {
    match msg {
        C::Join(_) => 1,
        C::Notes(_) => 2,
        C::Ping(_) => 3,
        C::UpdateProfile(_) => 4,
        C::Chat(_) => 5,
        C::Typing(_) => 6,
        C::DeleteChat(_) => 7,
        C::ClearChat(_) => 8,
        C::UpdateSettings(_) => 9,
        C::TransferOwnership(_) => 10,
        C::DropOwnership(_) => 11,
        C::ClaimOwnership(_) => 12,
        C::Kick(_) => 13,
        C::Unban(_) => 14,
        C::Mute(_) => 15,
        C::Cursor(_) => 16,
        C::SubscribeRooms(_) => 17,
        C::UnsubscribeRooms(_) => 18,
        C::Resume(_) => 19,
    }
}

/// The field number of an encoded `ServerMessage`'s message, read from its first tag without
/// decoding the rest (a relayed note batch is not decoded again to be counted).
fn out_kind(frame: &[u8]) -> usize {
    let mut key = 0u64;
    for (i, b) in frame.iter().take(4).enumerate() {
        key |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (key >> 3) as usize;
        }
    }
    0
}

impl Room {
    /// Everything counted since the host last took it.
    pub fn take_counters(&mut self) -> Counters {
        self.counters.take()
    }

    /// Hands each counted `(slot, n)` to `f`, leaving zeros (what a host does after every
    /// input, without allocating).
    pub fn drain_counters(&mut self, f: impl FnMut(usize, u64)) {
        self.counters.drain(f);
    }

    pub(super) fn count(&mut self, fam: Fam, i: usize, n: u64) {
        self.counters.add(fam, i, n);
    }

    /// Counts the protobuf frames in `out` (from `skip` on: the effects this input added),
    /// before MPP connections' share is translated; `native` are effects already in MPP JSON.
    /// Only errors, refused joins and dropped-note notices are decoded, for their code.
    pub(super) fn count_sent(&mut self, out: &Out, native: &[usize]) {
        for (i, effect) in out.iter().enumerate() {
            let (to, frame) = match effect {
                Effect::Send { to, frame, .. } => (to, frame),
                Effect::Close { code, .. }
                    if *code == close::SESSION_ENDED || *code == close::IDENTITY_CHANGED =>
                {
                    self.counters.add(Fam::SessionCloses, 0, 1);
                    continue;
                }
                _ => continue,
            };
            if native.contains(&i) {
                continue;
            }
            let kind = out_kind(frame);
            let n = to.as_slice().len() as u64;
            self.counters.add(Fam::MessagesOut, kind, n);
            if !matches!(kind, 7 | 8) {
                continue;
            }
            match ServerMessage::decode(&frame[..]) {
                Ok(ServerMessage {
                    msg: Some(S::Error(e)),
                    ..
                }) => self.counters.add(Fam::Errors, e.code.max(0) as usize, n),
                Ok(ServerMessage {
                    msg: Some(S::JoinFailed(j)),
                    ..
                }) => self
                    .counters
                    .add(Fam::JoinFailures, j.reason.max(0) as usize, n),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    #[test]
    fn the_kind_of_a_frame_is_its_first_field_number() {
        let frame = ServerMessage {
            msg: Some(S::FellBehind(proto::FellBehind { skipped: 3 })),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(out_kind(&frame), 22);
        let frame = ServerMessage {
            msg: Some(S::Pong(proto::Pong::default())),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(out_kind(&frame), 6);
        assert_eq!(out_kind(&[]), 0);
        assert_eq!(out_kind(&[0xff, 0xff, 0xff, 0xff, 0xff]), 0);
    }
}
