//! Per-user activity (note-ons relayed, chats, joins, last seen) for hosts that keep totals.

use super::Room;
use crate::Millis;
use std::collections::BTreeMap;

/// Per-user activity, gathered only for hosts that keep it ([`Room::count_activity`]): a host
/// without anywhere to put it pays nothing per note.
#[derive(Default)]
pub(super) struct Activity {
    pub(super) counting: bool,
    pub(super) by_user: BTreeMap<String, StatsDelta>,
}

impl Activity {
    /// `user`'s record, seen now; `None` while not counting.
    pub(super) fn of(&mut self, user: &str, now: Millis) -> Option<&mut StatsDelta> {
        if !self.counting {
            return None;
        }
        let st = self.by_user.entry(user.to_owned()).or_default();
        st.last_seen = now;
        Some(st)
    }
}

/// What one user did in the room since the host last asked ([`Room::take_stats`]): note-ons
/// relayed, chat messages posted, joins, and when they were last active. Hosts add the deltas
/// to durable per-user totals (the edge mirrors them to MongoDB's `user_stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsDelta {
    pub notes: u64,
    pub chats: u64,
    pub joins: u64,
    pub last_seen: Millis,
}

impl Room {
    /// Starts (or stops) gathering per-user activity for [`Room::take_stats`]; off by default.
    pub fn count_activity(&mut self, on: bool) {
        self.stats.counting = on;
        if !on {
            self.stats.by_user.clear();
        }
    }

    /// Hands the activity gathered since the last call to the host (and forgets it).
    pub fn take_stats(&mut self) -> BTreeMap<String, StatsDelta> {
        std::mem::take(&mut self.stats.by_user)
    }

    pub fn has_stats(&self) -> bool {
        !self.stats.by_user.is_empty()
    }
}
