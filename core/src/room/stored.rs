//! The part of a room that outlives its connections: settings, crown, bans, mutes and chat.
//!
//! The room reports every change as a [`Change`] ([`super::Effect::Persist`]); the host writes
//! it to durable storage (the Durable Object's SQLite) and hands the whole [`Stored`] back to
//! [`super::Room::restore`] when the room is loaded again, after hibernation or a restart.

use crate::proto;
use serde::{Deserialize, Serialize};

// Kept here too: hosts and the room name it as part of the durable state.
pub use crate::listing::RoomKind;

/// Chat messages a room keeps (and sends to each joiner).
pub const CHAT_HISTORY: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub visible: bool,
    pub max_players: u32,
    pub owner_only_chat: bool,
    pub owner_only_play: bool,
    pub allow_guests: bool,
    pub allow_bots: bool,
    pub allow_black_midi: bool,
    pub welcome_message: String,
    pub color: String,
    pub profanity_filter: bool,
}

impl Settings {
    pub fn defaults(kind: RoomKind) -> Settings {
        Settings {
            visible: true,
            max_players: kind.default_capacity(),
            owner_only_chat: false,
            owner_only_play: false,
            allow_guests: true,
            allow_bots: true,
            allow_black_midi: false,
            welcome_message: String::new(),
            color: "#3b5054".into(),
            profanity_filter: false,
        }
    }
}

pub use crate::password::PasswordHash;

/// Who holds the crown, by user id (participant ids derive from it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crown {
    pub owner_user: Option<String>,
    pub owner_name: String,
    /// While dropped: who held it last, and when it fell.
    pub previous_user: Option<String>,
    pub dropped_at: Option<u64>,
    /// The room has had its first owner (the creator); later joiners do not get the crown
    /// just for arriving.
    pub assigned_once: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub user_id: String,
    pub until: u64,
    /// The banned connection's network key: new guest identities from it are refused too
    /// (members from it still pass: a shared NAT holds innocent people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MuteEntry {
    pub user_id: String,
    pub notes: bool,
    pub chat: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRecord {
    pub id: u64,
    pub time: u64,
    pub participant_id: String,
    pub user_id: String,
    pub name: String,
    pub color: String,
    pub text: String,
}

impl ChatRecord {
    pub fn to_proto(&self) -> proto::ChatMessage {
        proto::ChatMessage {
            id: self.id,
            time: self.time,
            participant_id: self.participant_id.clone(),
            user_id: self.user_id.clone(),
            name: self.name.clone(),
            color: self.color.clone(),
            text: self.text.clone(),
        }
    }
}

/// Everything durable about a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub settings: Settings,
    pub password: Option<PasswordHash>,
    pub crown: Crown,
    pub bans: Vec<Ban>,
    pub mutes: Vec<MuteEntry>,
    /// Oldest first, at most [`CHAT_HISTORY`].
    pub chat: Vec<ChatRecord>,
    /// Next chat message id (ids are never reused, even after a clear).
    pub next_chat_id: u64,
}

impl Stored {
    pub fn new(kind: RoomKind) -> Stored {
        Stored {
            settings: Settings::defaults(kind),
            password: None,
            crown: Crown::default(),
            bans: Vec::new(),
            mutes: Vec::new(),
            chat: Vec::new(),
            next_chat_id: 1,
        }
    }
}

impl Stored {
    /// Whether this is still a fresh room's durable state: nothing anyone would miss if the
    /// storage went away (default settings, no password, nobody banned or muted, never a chat
    /// message). The crown does not count: it only records who came first.
    pub fn is_fresh(&self, kind: RoomKind) -> bool {
        self.settings == Settings::defaults(kind)
            && self.password.is_none()
            && self.bans.is_empty()
            && self.mutes.is_empty()
            && self.chat.is_empty()
            && self.next_chat_id == 1
    }

    /// Applies a change as a host's storage would: what a host that keeps the whole state in
    /// one place does, and the model the other hosts' storage must agree with.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Settings(s) => self.settings = s,
            Change::Password(p) => self.password = p,
            Change::Crown(c) => self.crown = c,
            Change::Bans(b) => self.bans = b,
            Change::Mutes(m) => self.mutes = m,
            Change::ChatAppended(r) => {
                self.next_chat_id = self.next_chat_id.max(r.id + 1);
                self.chat.push(r);
                let excess = self.chat.len().saturating_sub(CHAT_HISTORY);
                self.chat.drain(..excess);
            }
            Change::ChatDeleted(id) => self.chat.retain(|r| r.id != id),
            Change::ChatCleared => self.chat.clear(),
            Change::Discard => {
                // Only sent for fresh state (see `is_fresh`): the settings are the defaults
                // already, and what remains is the crown.
                self.crown = Crown::default();
                self.password = None;
                self.bans.clear();
                self.mutes.clear();
                self.chat.clear();
                self.next_chat_id = 1;
            }
        }
    }
}

/// One durable change, for the host to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Settings(Settings),
    Password(Option<PasswordHash>),
    Crown(Crown),
    Bans(Vec<Ban>),
    Mutes(Vec<MuteEntry>),
    /// Append; the host keeps the newest [`CHAT_HISTORY`] and `next_chat_id = record.id + 1`.
    ChatAppended(ChatRecord),
    ChatDeleted(u64),
    ChatCleared,
    /// The last participant left and the room is still in a fresh room's state
    /// ([`Stored::is_fresh`]): the host deletes the room's storage (nothing of it is worth
    /// keeping, and anonymous probes must not leave databases behind).
    Discard,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let h = PasswordHash::new("s3cret", vec![1, 2, 3]);
        assert!(h.verify("s3cret"));
        assert!(!h.verify("S3cret"));
        assert!(!h.verify(""));
        assert_ne!(h.hash, b"s3cret".to_vec());
    }
}
