//! What happens when a note batch arrives: validated ([`crate::notes`]), refused whole for a
//! muted player or in an owner-only room, filtered event by event (the note quota and the
//! note-event budget, [`super::abuse`]), stamped with the sender's participant id and relayed,
//! encoded once, to every other connection. Also which note quota a participant plays with.

use super::quota::{self, QuotaParams};
use super::stored::RoomKind;
use super::{ConnId, Out, Room, S, budget, error, send_many, send_one};
use crate::Millis;
use crate::metrics::{self, Fam};
use crate::proto::{self, ErrorCode, NotesDroppedReason, note_event::Kind};

impl Room {
    pub(super) fn on_notes(
        &mut self,
        conn: ConnId,
        m: usize,
        mut batch: proto::NoteBatch,
        now: Millis,
        out: &mut Out,
    ) {
        if let Err(msg) = crate::notes::validate(&batch, now) {
            return error(out, conn, ErrorCode::InvalidNotes, &msg);
        }
        let total = batch.events.len() as u32;
        let dropped_all = |room: &mut Room, reason: NotesDroppedReason, out: &mut Out| {
            room.count(Fam::NotesDropped, reason as usize, u64::from(total));
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
            return dropped_all(self, NotesDroppedReason::Muted, out);
        }
        if self.stored.settings.owner_only_play && !self.is_owner(m) {
            return dropped_all(self, NotesDroppedReason::OwnerOnly, out);
        }
        let drops = self.filter_note_events(conn, m, &mut batch.events, now);
        let relayed = batch.events.len() as u32;
        self.count(
            Fam::NotesDropped,
            NotesDroppedReason::Quota as usize,
            drops.quota.into(),
        );
        self.count(Fam::NotesDropped, metrics::DROP_BUDGET, drops.budget.into());
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
        self.count(Fam::NotesRelayed, 0, relayed.into());
        self.send_to_others(conn, S::Notes(batch), out);
    }

    pub(super) fn quota_params_for(&self, user: &str) -> (QuotaParams, bool) {
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
    pub(super) fn refresh_quota(&mut self, i: usize, now: Millis, out: &mut Out) {
        let (params, limited) = self.quota_params_for(&self.members[i].info.user_id);
        let targets = self.with_socket(&self.members[i].conns);
        let member = &mut self.members[i];
        if member.quota.set(params, limited, now) && !targets.is_empty() {
            out.push(send_many(targets, S::Quota(member.quota.to_proto(now))));
        }
    }
}
