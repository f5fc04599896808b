//! Joining and leaving: a connection arrives (Welcome), a Join that passed admission
//! ([`super::admission`]) makes it a participant (Joined to it, ParticipantJoined to the others,
//! the crown to the creator of a normal room, the creator's settings), and a connection goes
//! (ParticipantLeft with the participant's last connection, the crown dropped with its owner).

use super::perms::Actor;
use super::stored::{self, Change, ChatRecord, RoomKind};
use super::{ConnId, Effect, Out, Profile, Protocol, Room, S, admission, error, send_one};
use crate::Millis;
use crate::identity::Identity;
use crate::limits::{MAX_FRAME_BYTES, PROTOCOL_VERSION};
use crate::proto;

impl Room {
    pub(super) fn on_connect(
        &mut self,
        conn: ConnId,
        identity: Identity,
        protocol: Protocol,
        now: Millis,
        out: &mut Out,
    ) {
        if self.conns.contains_key(&conn) {
            // A host reusing a live id is a host bug; drop the old connection cleanly first.
            self.on_disconnect(conn, now, out);
        }
        if let Err(code) = self.admit_connection(&identity) {
            return admission::refuse_connection(conn, code, out);
        }
        self.add_conn(conn, identity, Profile::default(), protocol, now);
        out.extend(self.record(conn).map(Effect::Remember));
        let you = self.participant_for(conn);
        out.push(send_one(
            conn,
            S::Welcome(proto::Welcome {
                protocol_version: PROTOCOL_VERSION,
                server_time: now,
                you,
                room: self.name.clone(),
                max_frame_bytes: MAX_FRAME_BYTES as u32,
            }),
        ));
    }

    /// Makes `conn` a participant: admission passed (see [`admission`]).
    pub(super) fn complete_join(
        &mut self,
        conn: ConnId,
        join: proto::Join,
        now: Millis,
        out: &mut Out,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let identity = c.identity.clone();
        let user = identity.user_id.clone();
        let already_present = self.member_index_by_user(&user).is_some();
        // The crown: the creator of a normal room gets it; a returning previous owner gets a
        // dropped crown back. Decided before the member exists, so its quota starts right.
        let crown = &self.stored.crown;
        let takes_crown = self.kind == RoomKind::Normal
            && !already_present
            && crown.owner_user.is_none()
            && (!crown.assigned_once || crown.previous_user.as_deref() == Some(user.as_str()));
        // Join-or-create: the creator's settings apply to a room that did not exist yet.
        let creating = takes_crown && !self.stored.crown.assigned_once;
        if let Some(p) = join.create_settings.filter(|_| creating) {
            let actor = Actor::from_roles(&identity.roles, true);
            match self.patched_settings(actor, &p) {
                // Nobody is in the room yet, so this tells no one; Joined carries it.
                Ok(settings) => self.apply_settings(settings, p.password, now, out),
                Err((code, message)) => return error(out, conn, code, message),
            }
        }
        if takes_crown {
            let name = self.conns.get(&conn).map(|c| {
                c.profile
                    .name
                    .clone()
                    .unwrap_or_else(|| c.identity.name.clone())
            });
            self.stored.crown = stored::Crown {
                owner_user: Some(user.clone()),
                owner_name: name.unwrap_or_default(),
                previous_user: None,
                dropped_at: None,
                assigned_once: true,
            };
            out.push(Effect::Persist(Change::Crown(self.stored.crown.clone())));
        }
        let crown_changed = takes_crown;
        let seq = self.next_join_seq;
        self.next_join_seq += 1;
        let is_new = self.join_member(conn, seq, now);

        let token = self.issue_token(conn, now).unwrap_or_default();
        out.extend(self.record(conn).map(Effect::Remember));
        self.keep_session(conn, out);
        let you = self.participant_for(conn);
        out.push(send_one(
            conn,
            S::Joined(self.joined_proto(conn, token, now)),
        ));
        if is_new && let Some(p) = you.clone() {
            self.send_to_others(
                conn,
                S::ParticipantJoined(proto::ParticipantJoined {
                    participant: Some(p),
                }),
                out,
            );
        }
        if crown_changed {
            self.send_to_others(
                conn,
                S::OwnerChanged(proto::OwnerChanged {
                    ownership: Some(self.ownership_proto()),
                }),
                out,
            );
        }
        let welcome = &self.stored.settings.welcome_message;
        if !welcome.is_empty() {
            let name = you.map(|p| p.name).unwrap_or_default();
            out.push(send_one(
                conn,
                S::Chat(proto::ChatMessage {
                    id: 0,
                    time: now,
                    name: self.name.clone(),
                    color: self.stored.settings.color.clone(),
                    text: welcome.replace("%%user%%", &name),
                    ..Default::default()
                }),
            ));
        }
    }

    /// The whole room as `conn` sees it now (Joined, and a resume's snapshot).
    pub(super) fn joined_proto(
        &mut self,
        conn: ConnId,
        resume_token: String,
        now: Millis,
    ) -> proto::Joined {
        let quota = self
            .member_index_of_conn(conn)
            .map(|m| self.members[m].quota.to_proto(now));
        proto::Joined {
            room: self.name.clone(),
            you: self.participant_for(conn),
            participants: self.participants().cloned().collect(),
            server_time: now,
            settings: Some(self.settings_proto()),
            ownership: Some(self.ownership_proto()),
            chat_history: self.stored.chat.iter().map(ChatRecord::to_proto).collect(),
            quota,
            resume_grace_ms: if resume_token.is_empty() {
                0
            } else {
                self.limits.resume_grace_ms.min(u64::from(u32::MAX)) as u32
            },
            resume_token,
            seq: self.seq,
        }
    }

    pub(super) fn on_disconnect(&mut self, conn: ConnId, now: Millis, out: &mut Out) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.resume.is_some() {
            self.session_gone(conn, out);
        }
        if c.protocol == Protocol::Mpp {
            self.mpp.gone(conn);
        }
        if c.subscribed {
            self.subscription_ended(Some(c.identity.user_id.clone()), out);
        }
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
            self.send_to_others(
                conn,
                S::ParticipantLeft(proto::ParticipantLeft {
                    participant_id: gone.info.id,
                }),
                out,
            );
            if self.stored.crown.owner_user.as_deref() == Some(gone.info.user_id.as_str()) {
                self.drop_crown(gone.info.user_id, now, out);
            }
            self.discard_if_fresh(out);
        }
    }
}
