//! Who is in the room, for hosts that publish it (the edge's and the fallback's shared presence
//! keys in Redis). The room tells the host who arrived and who left as [`Effect::Presence`], so
//! neither host keeps its own copy of the participant list to compare against.

use super::{Effect, Out, Room};
use crate::proto;
use std::collections::BTreeSet;

/// Tracking state: off by default (a host without anywhere to publish pays nothing).
#[derive(Default)]
pub(super) struct Presence {
    tracking: bool,
    /// User ids the host was last told are here.
    published: BTreeSet<String>,
    /// Compare in full at the next input (the published set came from the host's storage).
    dirty: bool,
}

impl Room {
    /// Starts (or stops) reporting [`Effect::Presence`]. Started on a room that already has
    /// participants (a wake, a restore), the next change reports all of them as arrived.
    pub fn track_presence(&mut self, on: bool) {
        self.presence = Presence {
            tracking: on,
            ..Presence::default()
        };
    }

    /// Starts reporting [`Effect::Presence`] from what the host had published before it
    /// stopped (kept in its storage): whoever is gone now (sockets lost in a restart) is
    /// reported as left at the next input, whoever is new as arrived.
    pub fn resume_presence(&mut self, published: impl IntoIterator<Item = String>) {
        self.presence = Presence {
            tracking: true,
            published: published.into_iter().collect(),
            dirty: true,
        };
    }

    /// On [`super::Input::Stop`]: the room is going away, so whoever was published leaves.
    pub(super) fn presence_withdraw(&mut self, out: &mut Out) {
        let left: Vec<String> = std::mem::take(&mut self.presence.published)
            .into_iter()
            .collect();
        self.presence.tracking = false;
        if !left.is_empty() {
            out.push(Effect::Presence {
                joined: Vec::new(),
                left,
            });
        }
    }

    /// After every input: who arrived and who left since the last report. A join or leave
    /// always changes the number of participants, so the common case costs one comparison.
    pub(super) fn presence_if_changed(&mut self, out: &mut Out) {
        let p = &mut self.presence;
        if !p.tracking || (!p.dirty && self.members.len() == p.published.len()) {
            return;
        }
        p.dirty = false;
        let here: BTreeSet<&str> = self
            .members
            .iter()
            .map(|m| m.info.user_id.as_str())
            .collect();
        let joined: Vec<proto::Participant> = self
            .members
            .iter()
            .filter(|m| !self.presence.published.contains(&m.info.user_id))
            .map(|m| m.info.clone())
            .collect();
        let left: Vec<String> = self
            .presence
            .published
            .iter()
            .filter(|u| !here.contains(u.as_str()))
            .cloned()
            .collect();
        self.presence.published = here.into_iter().map(str::to_owned).collect();
        if !joined.is_empty() || !left.is_empty() {
            out.push(Effect::Presence { joined, left });
        }
    }
}
