//! The crown (room ownership): given away by its owner, dropped (by its owner, or when the owner
//! leaves), then claimable by the previous owner at once and by anyone after
//! [`CROWN_CLAIM_DELAY_MS`]. Lobbies have no owner. The owner plays with a larger note quota.

use super::perms::{self, Action};
use super::stored::{Change, RoomKind};
use super::{ConnId, Effect, Out, Room, S, error, participant_id};
use crate::Millis;
use crate::limits::CROWN_CLAIM_DELAY_MS;
use crate::proto::{self, ErrorCode};

impl Room {
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

    pub(super) fn on_transfer(
        &mut self,
        conn: ConnId,
        m: usize,
        target: &str,
        now: Millis,
        out: &mut Out,
    ) {
        if self.refused_in_lobby(conn, out) {
            return;
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
        self.announce_owner(out);
    }

    pub(super) fn on_drop(&mut self, conn: ConnId, m: usize, now: Millis, out: &mut Out) {
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

    pub(super) fn on_claim(&mut self, conn: ConnId, m: usize, now: Millis, out: &mut Out) {
        if self.refused_in_lobby(conn, out) {
            return;
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
        self.announce_owner(out);
    }

    /// Lobbies have no owner: refuses (and returns true) there.
    fn refused_in_lobby(&self, conn: ConnId, out: &mut Out) -> bool {
        let lobby = self.kind == RoomKind::Lobby;
        if lobby {
            error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "lobby rooms have no owner",
            );
        }
        lobby
    }

    pub(super) fn drop_crown(&mut self, previous: String, now: Millis, out: &mut Out) {
        self.set_owner(None, now, out);
        self.stored.crown.previous_user = Some(previous);
        self.stored.crown.dropped_at = Some(now);
        out.push(Effect::Persist(Change::Crown(self.stored.crown.clone())));
        self.announce_owner(out);
    }

    /// Tells everyone in the room who holds the crown now.
    fn announce_owner(&mut self, out: &mut Out) {
        self.send_to_all(
            S::OwnerChanged(proto::OwnerChanged {
                ownership: Some(self.ownership_proto()),
            }),
            out,
        );
    }

    /// Moves the crown (persisted), and re-evaluates the quotas of the old and new owner.
    pub(super) fn set_owner(&mut self, user: Option<String>, now: Millis, out: &mut Out) {
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
}
