//! What the room directory lists about a room, shared by the room (`room`: it reports itself and
//! relays the list to its subscribers) and the directory (`lobby`: it keeps the reports and
//! diffs them). Both depend on this module and neither on the other.

use crate::Millis;
use crate::proto;
use serde::{Deserialize, Serialize};

/// Lobby rooms (`lobby`, `lobby-2`, …) have no owner and lobby quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Lobby,
    Normal,
}

impl RoomKind {
    pub fn of(name: &str) -> RoomKind {
        let numbered_lobby = name.strip_prefix("lobby-").is_some_and(|n| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0')
        });
        if name == "lobby" || numbered_lobby {
            RoomKind::Lobby
        } else {
            RoomKind::Normal
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Lobby => "lobby",
            RoomKind::Normal => "normal",
        }
    }

    pub fn default_capacity(self) -> u32 {
        match self {
            RoomKind::Lobby => 30,
            RoomKind::Normal => 20,
        }
    }
}

/// One room as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub players: u32,
    pub capacity: u32,
    pub visible: bool,
    pub locked: bool,
    pub owner_name: String,
    pub kind: RoomKind,
    pub last_activity: u64,
}

impl Summary {
    pub fn to_proto(&self) -> proto::RoomSummary {
        proto::RoomSummary {
            name: self.name.clone(),
            players: self.players,
            capacity: self.capacity,
            visible: self.visible,
            locked: self.locked,
            owner_name: self.owner_name.clone(),
            kind: self.kind.as_str().into(),
            last_activity: self.last_activity,
        }
    }

    /// Shown in room lists (here and in the shared index): visible and not empty.
    pub fn listed(&self) -> bool {
        self.visible && self.players > 0
    }
}

/// What a room sends the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub summary: Summary,
    /// User ids present (lobbies only: they settle seat reservations).
    #[serde(default)]
    pub users: Vec<String>,
    /// Increases with every report of a room; older reports that arrive late are ignored.
    pub version: u64,
    /// When the directory received it (set by the directory, not the room).
    #[serde(default)]
    pub received_at: Millis,
}

/// A change to the listing, for subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub upserted: Vec<Summary>,
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    pub fn to_proto(&self) -> proto::RoomListChanged {
        proto::RoomListChanged {
            upserted: self.upserted.iter().map(Summary::to_proto).collect(),
            removed: self.removed.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(RoomKind::of("lobby"), RoomKind::Lobby);
        assert_eq!(RoomKind::of("lobby-12"), RoomKind::Lobby);
        for normal in ["lobby-", "lobby-01", "lobby-x", "Lobby", "my lobby"] {
            assert_eq!(RoomKind::of(normal), RoomKind::Normal, "{normal}");
        }
    }
}
