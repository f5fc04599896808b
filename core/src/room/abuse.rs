//! Applying the budgets ([`super::budget`]) to what connections send.
//!
//! Order per frame: the frame budget before decoding (the cheapest refusal), then the budget of
//! the message's kind, then, for note batches, each event: note-ons pay the note quota,
//! note-offs of sounding notes are free (so no note ever sticks), everything else pays the
//! connection's note-event budget. Drops are counted; one notice per kind per interval; past
//! the abuse bound the connection is closed (1008).

use super::budget::Kind;
use super::{ConnId, Out, Room, S, send_one};
use crate::Millis;
use crate::proto::{self, ErrorCode, NoteEvent, client_message::Msg as C, note_event};

/// The notes a participant holds down: one bit per channel and note (256 bytes), so a note-off
/// is free exactly when it ends a note that is sounding.
#[derive(Debug, Clone, Default)]
pub(super) struct Sounding([u128; 16]);

impl Sounding {
    fn bit(channel: u32, note: u32) -> Option<(usize, u128)> {
        // Validated batches have channel < 16 and note < 128; anything else is not sounding.
        (channel < 16 && note < 128).then(|| (channel as usize, 1u128 << note))
    }

    fn press(&mut self, channel: u32, note: u32) {
        if let Some((c, b)) = Self::bit(channel, note) {
            self.0[c] |= b;
        }
    }

    /// Releases the note; whether it was sounding.
    fn release(&mut self, channel: u32, note: u32) -> bool {
        let Some((c, b)) = Self::bit(channel, note) else {
            return false;
        };
        let was = self.0[c] & b != 0;
        self.0[c] &= !b;
        was
    }
}

/// What a batch lost, and why.
#[derive(Debug, Default)]
pub(super) struct EventDrops {
    /// Note-ons the note quota could not pay for.
    pub quota: u32,
    /// Other events over the note-event budget, and when the budget has room again.
    pub budget: u32,
    pub retry_after: u64,
}

/// The budget a message is charged to (Join has its own path; chat its own window).
fn kind_of(msg: &C) -> Option<Kind> {
    Some(match msg {
        C::Ping(_) => Kind::Ping,
        C::Notes(_) => Kind::NoteBatches,
        C::Typing(_) => Kind::Typing,
        C::UpdateProfile(_) => Kind::Profile,
        C::Cursor(_) => Kind::Cursor,
        C::UpdateSettings(_) => Kind::Settings,
        C::SubscribeRooms(_) | C::UnsubscribeRooms(_) => Kind::Subscribe,
        C::DeleteChat(_)
        | C::ClearChat(_)
        | C::TransferOwnership(_)
        | C::DropOwnership(_)
        | C::ClaimOwnership(_)
        | C::Kick(_)
        | C::Unban(_)
        | C::Mute(_) => Kind::Moderation,
        // A resume spends a join: guessing tokens costs what joining does.
        C::Resume(_) => Kind::Join,
        C::Join(_) | C::Chat(_) => return None,
    })
}

impl Room {
    /// Charges a frame, before it is decoded; false when it is dropped.
    pub(super) fn frame_budget(&mut self, conn: ConnId, now: Millis, out: &mut Out) -> bool {
        self.charge(conn, Kind::Frames, now, out)
    }

    /// Charges a decoded message to its kind's budget; false when it is dropped.
    pub(super) fn message_budget(
        &mut self,
        conn: ConnId,
        msg: &C,
        now: Millis,
        out: &mut Out,
    ) -> bool {
        match kind_of(msg) {
            Some(kind) => self.charge(conn, kind, now, out),
            None => true,
        }
    }

    fn charge(&mut self, conn: ConnId, kind: Kind, now: Millis, out: &mut Out) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        match c.budget.charge(&self.limits, kind, now) {
            Ok(()) => true,
            Err(wait) => {
                self.over_budget(conn, kind, wait, now, out);
                false
            }
        }
    }

    /// A message of `kind` was dropped for its budget: counts it, tells the sender (once per
    /// interval), closes a persistent abuser. The connection may be gone afterwards.
    pub(super) fn over_budget(
        &mut self,
        conn: ConnId,
        kind: Kind,
        retry_after: u64,
        now: Millis,
        out: &mut Out,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let over = c.budget.dropped(&self.limits, kind, retry_after, now);
        if over.close {
            return self.close_abusive(conn, now, out);
        }
        if let Some(wait) = over.notice {
            out.push(send_one(
                conn,
                S::Error(proto::Error {
                    code: ErrorCode::RateLimited as i32,
                    message: format!("too many {}: dropped; try again in {wait} ms", kind.noun()),
                    retry_after_ms: wait,
                }),
            ));
        }
    }

    /// Keeps the events member `m` (sending on `conn`) may relay, in order.
    pub(super) fn filter_note_events(
        &mut self,
        conn: ConnId,
        m: usize,
        events: &mut Vec<NoteEvent>,
        now: Millis,
    ) -> EventDrops {
        let mut drops = EventDrops::default();
        let (Some(c), Some(member)) = (self.conns.get_mut(&conn), self.members.get_mut(m)) else {
            return drops;
        };
        let limits = &self.limits;
        events.retain(|e| {
            let free = match &e.kind {
                Some(note_event::Kind::NoteOn(on)) => {
                    if !member.quota.spend_one(now) {
                        drops.quota += 1;
                        return false;
                    }
                    member.sounding.press(on.channel, on.note);
                    return true;
                }
                Some(note_event::Kind::NoteOff(off)) => {
                    member.sounding.release(off.channel, off.note)
                }
                _ => false,
            };
            if free {
                return true;
            }
            match c.budget.charge(limits, Kind::NoteEvents, now) {
                Ok(()) => true,
                Err(wait) => {
                    drops.budget += 1;
                    drops.retry_after = wait;
                    false
                }
            }
        });
        drops
    }
}
