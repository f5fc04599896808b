//! Participants and their connections: who is in the room, how a connection becomes part of a
//! participant (one user, many tabs, one participant), the record a host keeps per socket, and
//! sending to everyone or everyone else.

use super::perms::Actor;
use super::profile::color_for;
use super::quota::{NoteQuota, RateWindow};
use super::{
    Conn, ConnId, ConnRecord, Delivery, Effect, Member, Out, Profile, Protocol, Room, S, Targets,
    abuse, budget, send_many,
};
use crate::Millis;
use crate::identity::{Identity, participant_id};
use crate::proto;

impl Room {
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

    /// The record a host keeps for `conn`.
    pub(super) fn record(&self, conn: ConnId) -> Option<ConnRecord> {
        let c = self.conns.get(&conn)?;
        Some(ConnRecord {
            conn,
            identity: c.identity.clone(),
            joined: c.joined,
            profile: c.profile.clone(),
            subscribed: c.subscribed,
            protocol: c.protocol,
        })
    }

    pub(super) fn add_conn(
        &mut self,
        conn: ConnId,
        identity: Identity,
        profile: Profile,
        protocol: Protocol,
        now: Millis,
    ) {
        let participant_id = participant_id(&identity.user_id);
        if protocol == Protocol::Mpp {
            self.mpp.conns += 1;
        }
        self.conns.insert(
            conn,
            Conn {
                identity,
                participant_id,
                joined: None,
                profile,
                subscribed: false,
                protocol,
                budget: budget::ConnBudget::new(&self.limits, now),
                pending_join: None,
                resume: None,
            },
        );
    }

    /// Marks `conn` joined with sequence `seq`; true when its user was not present before.
    pub(super) fn join_member(&mut self, conn: ConnId, seq: u64, now: Millis) -> bool {
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

    pub(super) fn participant_for(&self, conn: ConnId) -> Option<proto::Participant> {
        let c = self.conns.get(&conn)?;
        Some(
            self.members
                .iter()
                .find(|m| m.info.id == c.participant_id)
                .map(|m| m.info.clone())
                .unwrap_or_else(|| participant_info(&c.participant_id, &c.identity, &c.profile)),
        )
    }

    pub(super) fn member_index_of_conn(&self, conn: ConnId) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        c.joined?;
        self.member_index_by_id(&c.participant_id)
    }

    pub(super) fn member_index_by_id(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.id == id)
    }

    pub(super) fn member_index_by_user(&self, user: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.user_id == user)
    }

    pub(super) fn is_owner(&self, m: usize) -> bool {
        self.stored.crown.owner_user.as_deref() == Some(self.members[m].info.user_id.as_str())
    }

    pub(super) fn actor(&self, m: usize) -> Actor {
        Actor::from_roles(&self.members[m].info.roles, self.is_owner(m))
    }

    /// Joined connections with a socket (suspended ones have none), but `except`.
    pub(super) fn joined_conns(&self, except: Option<ConnId>) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(id, c)| {
                Some(**id) != except
                    && c.joined.is_some()
                    && c.resume.as_ref().is_none_or(|r| r.until.is_none())
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Those of `conns` with a socket (a member's suspended connections are sent nothing).
    pub(super) fn with_socket(&self, conns: &[ConnId]) -> Vec<ConnId> {
        conns
            .iter()
            .copied()
            .filter(|c| self.conns.get(c).is_some_and(|c| !c.is_suspended()))
            .collect()
    }

    pub(super) fn send_to_others(&mut self, except: ConnId, msg: S, out: &mut Out) {
        let targets = self.joined_conns(Some(except));
        self.broadcast(targets, Some(except), msg, out);
    }

    pub(super) fn send_to_all(&mut self, msg: S, out: &mut Out) {
        let targets = self.joined_conns(None);
        self.broadcast(targets, None, msg, out);
    }

    /// Sends `msg` to every joined connection but `except`: numbered and kept for replay when
    /// it is what a resuming connection must not miss (docs/resume.md §2), even when only
    /// suspended connections are left to want it.
    fn broadcast(&mut self, targets: Vec<ConnId>, except: Option<ConnId>, msg: S, out: &mut Out) {
        let replayable = !matches!(msg, S::Cursor(_) | S::Typing(_));
        if replayable && (!targets.is_empty() || self.any_suspended()) {
            let delivery = Delivery::of(&msg);
            let frame = self.numbered(msg, except, out);
            if !targets.is_empty() {
                out.push(Effect::Send {
                    to: Targets::Many(targets),
                    frame,
                    delivery,
                });
            }
        } else if !targets.is_empty() {
            out.push(send_many(targets, msg));
        }
    }
}

/// How a room shows `identity` before any profile change (what MPP's `hi` answers with).
pub fn participant_of(identity: &Identity) -> proto::Participant {
    participant_info(
        &participant_id(&identity.user_id),
        identity,
        &Profile::default(),
    )
}

pub(super) fn participant_info(
    id: &str,
    identity: &Identity,
    profile: &Profile,
) -> proto::Participant {
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
