//! Moderation: kicks (with an optional ban, by user and, for the kicked player's network,
//! against coming back as a new guest), unbans and mutes (notes, chat or both), each checked
//! against [`super::perms`]: the owner and moderators act, only admins act on staff.

use super::perms::{self, Action};
use super::stored::{Ban, Change, MuteEntry};
use super::{ConnId, Effect, Out, Room, S, error, send_many};
use crate::Millis;
use crate::limits::close;
use crate::proto::{self, ErrorCode};

/// Longest ban an owner's kick may carry.
pub const MAX_BAN_MS: u64 = 60 * 60 * 1000;

impl Room {
    pub(super) fn on_kick(
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
        // Suspended connections are only closed (they have no socket to tell).
        let told = self.with_socket(&victims);
        if !told.is_empty() {
            out.push(send_many(
                told,
                S::Kicked(proto::Kicked {
                    by_participant_id: by,
                    banned_until,
                }),
            ));
        }
        for v in victims {
            self.on_disconnect(v, now, out);
            out.push(Effect::Close {
                conn: v,
                code: close::KICKED,
                reason: "kicked",
            });
        }
    }

    pub(super) fn on_unban(&mut self, conn: ConnId, m: usize, user: &str, out: &mut Out) {
        if !perms::allowed(self.actor(m), Action::Unban) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner or a moderator may unban",
            );
        }
        let before = self.stored.bans.len();
        // By user id, or by participant id: the only id MPP clients see (`mpp`).
        self.stored
            .bans
            .retain(|b| b.user_id != user && super::participant_id(&b.user_id) != user);
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

    pub(super) fn on_mute(
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
    pub(super) fn moderation_target(
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
}
