//! Chat: who may post (muted players and, in owner-only rooms, everyone but the owner and staff
//! may not), the text checks and optional profanity filter ([`super::text`]), the per-player
//! rate, the kept history ([`super::stored::CHAT_HISTORY`]), typing notices, and deleting or
//! clearing messages.

use super::perms::{self, Action};
use super::stored::{CHAT_HISTORY, Change, ChatRecord};
use super::{ConnId, Effect, Out, Room, S, budget, error, text};
use crate::Millis;
use crate::proto::{self, ErrorCode};

/// Chat: at most this many messages per window (the owner and staff get the second pair).
pub const CHAT_RATE: (usize, u64) = (4, 6000);
pub const CHAT_RATE_OWNER: (usize, u64) = (10, 2000);

impl Room {
    pub(super) fn on_chat(
        &mut self,
        conn: ConnId,
        m: usize,
        raw: &str,
        now: Millis,
        out: &mut Out,
    ) {
        if self.members[m].info.muted_chat {
            return error(out, conn, ErrorCode::Muted, "you are muted in this room");
        }
        let privileged = self.is_owner(m) || self.actor(m).staff();
        if self.stored.settings.owner_only_chat && !privileged {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner may chat in this room",
            );
        }
        let mut text = match text::chat(raw) {
            Ok(t) => t,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, &e),
        };
        let (max, window) = if privileged {
            CHAT_RATE_OWNER
        } else {
            CHAT_RATE
        };
        if let Err(wait) = self.members[m].chat_rate.try_take(max, window, now) {
            return self.over_budget(conn, budget::Kind::Chat, wait, now, out);
        }
        if self.stored.settings.profanity_filter {
            text = text::mask_profanity(&text);
        }
        let info = &self.members[m].info;
        let record = ChatRecord {
            id: self.stored.next_chat_id,
            time: now,
            participant_id: info.id.clone(),
            user_id: info.user_id.clone(),
            name: info.name.clone(),
            color: info.color.clone(),
            text,
        };
        self.stored.next_chat_id += 1;
        if let Some(st) = self.stats.of(&record.user_id, now) {
            st.chats += 1;
        }
        self.stored.chat.push(record.clone());
        if self.stored.chat.len() > CHAT_HISTORY {
            let excess = self.stored.chat.len() - CHAT_HISTORY;
            self.stored.chat.drain(..excess);
        }
        out.push(Effect::Persist(Change::ChatAppended(record.clone())));
        self.send_to_all(S::Chat(record.to_proto()), out);
    }

    pub(super) fn on_typing(&mut self, conn: ConnId, m: usize, typing: bool, out: &mut Out) {
        if self.members[m].info.muted_chat {
            return error(out, conn, ErrorCode::Muted, "you are muted in this room");
        }
        let id = self.members[m].info.id.clone();
        self.send_to_others(
            conn,
            S::Typing(proto::Typing {
                participant_id: id,
                typing,
            }),
            out,
        );
    }

    pub(super) fn on_delete_chat(&mut self, conn: ConnId, m: usize, id: u64, out: &mut Out) {
        let Some(pos) = self.stored.chat.iter().position(|r| r.id == id) else {
            return error(
                out,
                conn,
                ErrorCode::NotFound,
                format!("no chat message {id}"),
            );
        };
        let own = self.stored.chat[pos].user_id == self.members[m].info.user_id;
        if !own && !perms::allowed(self.actor(m), Action::DeleteOthersChat) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only moderators may delete other people's messages",
            );
        }
        self.stored.chat.remove(pos);
        out.push(Effect::Persist(Change::ChatDeleted(id)));
        self.send_to_all(S::ChatDeleted(proto::ChatDeleted { id }), out);
    }

    pub(super) fn on_clear_chat(&mut self, conn: ConnId, m: usize, out: &mut Out) {
        if !perms::allowed(self.actor(m), Action::ClearChat) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only moderators may clear the chat",
            );
        }
        self.stored.chat.clear();
        out.push(Effect::Persist(Change::ChatCleared));
        self.send_to_all(S::ChatCleared(proto::ChatCleared {}), out);
    }
}
