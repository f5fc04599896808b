//! Per-user activity (note-ons relayed, chats, joins, last seen) for hosts that keep totals.
//! The room decides when the host gets it ([`Effect::Stats`]): [`STATS_EVERY_MS`] after the last
//! activity, or [`STATS_MAX_WAIT_MS`] after the first not yet handed over if the players keep
//! playing (the host's timer is [`Room::next_deadline`]), at once when someone joins or leaves
//! (a room may hibernate or stop right after), and on [`super::Input::Stop`]. Each hand-over
//! costs the host storage writes per player (billed per row at the edge), so a room that plays
//! for an hour hands over once a minute, not every few seconds.

use super::{Effect, Out, Room};
use crate::Millis;
use std::collections::BTreeMap;

/// How long after the last activity the room hands it over: shorter than the ~10 s after which
/// an idle edge room may hibernate and forget what it holds in memory.
pub const STATS_EVERY_MS: Millis = 5_000;
/// The longest activity waits while the players keep playing (a room that plays does not
/// hibernate; a crash or a deploy loses at most this much of it).
pub const STATS_MAX_WAIT_MS: Millis = 60_000;

/// Per-user activity, gathered only for hosts that keep it ([`Room::count_activity`]): a host
/// without anywhere to put it pays nothing per note.
#[derive(Default)]
pub(super) struct Activity {
    pub(super) counting: bool,
    pub(super) by_user: BTreeMap<String, StatsDelta>,
    /// When what `by_user` holds must reach the host.
    pub(super) due: Option<Millis>,
    /// When its first entry came.
    first: Option<Millis>,
    /// Participants at the last hand-over: a join or leave hands over at once.
    members_seen: usize,
    /// Since when each participant's time in the room is not yet counted (`played_ms`). A
    /// room rebuilt after hibernation starts them again from its wake: time spent hibernated
    /// (nobody sent anything) is not counted.
    playing: BTreeMap<String, Millis>,
}

impl Activity {
    /// `user`'s record, seen now; `None` while not counting.
    pub(super) fn of(&mut self, user: &str, now: Millis) -> Option<&mut StatsDelta> {
        if !self.counting {
            return None;
        }
        let first = *self.first.get_or_insert(now);
        self.due = Some((now + STATS_EVERY_MS).min(first + STATS_MAX_WAIT_MS));
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
    /// Time spent in the room as a participant (joined, not yet left), in ms.
    #[serde(default)]
    pub played_ms: u64,
    /// Times this user left the room (their last socket went, or they were kicked).
    #[serde(default)]
    pub leaves: u64,
    /// Joins this user asked for and the room refused (full, banned, wrong password, …).
    #[serde(default)]
    pub join_failures: u64,
}

impl Room {
    /// Starts (or stops) gathering per-user activity for [`Room::take_stats`]; off by default.
    pub fn count_activity(&mut self, on: bool) {
        self.stats.counting = on;
        if !on {
            self.stats.by_user.clear();
            self.stats.due = None;
            self.stats.first = None;
            self.stats.playing.clear();
        }
    }

    /// Counts a refused join for the user behind `conn` (analytics: join failures).
    pub(super) fn count_join_failure(&mut self, conn: super::ConnId, now: Millis) {
        if let Some(user) = self.conns.get(&conn).map(|c| c.identity.user_id.clone())
            && let Some(st) = self.stats.of(&user, now)
        {
            st.join_failures += 1;
        }
    }

    /// Credits participants' time in the room: whoever left since the last input gets what
    /// they had not been credited (which makes a hand-over due at once), whoever arrived
    /// starts counting; with `all`, everyone present is credited up to `now` (a hand-over).
    fn credit_time(&mut self, now: Millis, all: bool) {
        let st = &mut self.stats;
        // A join or leave changes the number of participants: the common input costs one
        // comparison.
        if !st.counting || (!all && st.playing.len() == self.members.len()) {
            return;
        }
        let here: std::collections::BTreeSet<&str> = self
            .members
            .iter()
            .map(|m| m.info.user_id.as_str())
            .collect();
        let gone: Vec<String> = st
            .playing
            .keys()
            .filter(|u| !here.contains(u.as_str()))
            .cloned()
            .collect();
        for user in gone {
            if let Some(since) = st.playing.remove(&user) {
                let d = st.by_user.entry(user).or_default();
                d.played_ms += now.saturating_sub(since);
                d.leaves += 1;
                d.last_seen = d.last_seen.max(now);
            }
        }
        for user in here {
            let since = st.playing.entry(user.to_owned()).or_insert(now);
            if all && *since < now {
                let d = st.by_user.entry(user.to_owned()).or_default();
                d.played_ms += now - *since;
                *since = now;
            }
        }
    }

    /// Whether activity is waiting to be handed over.
    pub fn has_stats(&self) -> bool {
        !self.stats.by_user.is_empty()
    }

    /// After every input: hands the activity over when it is due, when the participants
    /// changed, or when the host asks (`now_please`: [`super::Input::Stop`]).
    pub(super) fn stats_if_due(&mut self, now: Millis, now_please: bool, out: &mut Out) {
        let members = self.members.len();
        let changed = std::mem::replace(&mut self.stats.members_seen, members) != members;
        let due = now_please || changed || self.stats.due.is_some_and(|d| d <= now);
        self.credit_time(now, due);
        if self.stats.by_user.is_empty() || !due {
            return;
        }
        self.stats.due = None;
        self.stats.first = None;
        out.push(Effect::Stats(std::mem::take(&mut self.stats.by_user)));
    }
}
