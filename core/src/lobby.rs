//! The room directory (sans-I/O), hosted by the Lobby Durable Object.
//!
//! Rooms report their [`Summary`] on every join, leave and settings change (and when they
//! wake); the directory keeps the latest report per room, lists the visible, non-empty ones,
//! and tells its caller what changed so subscribers get deltas instead of the whole list.
//! It also places players asking for "the next available lobby" into `lobby`, `lobby-2`, …,
//! counting players it has just sent to a lobby (reservations) so a burst of requests cannot
//! overfill one before the lobby's own reports catch up.

use crate::Millis;
use crate::proto;
use crate::room::stored::RoomKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long a lobby seat stays reserved for a player the directory sent there.
pub const RESERVATION_MS: u64 = 15_000;
/// Capacity assumed for a lobby that has not reported yet.
pub const LOBBY_CAPACITY: u32 = 30;
/// An entry not refreshed for this long is checked with its room (which reports afresh): a room
/// whose players vanished without it noticing (its host restarted) must not stay listed.
pub const STALE_AFTER_MS: u64 = 10 * 60 * 1000;
/// How often the Lobby object looks for stale entries, while it has any entries.
pub const SWEEP_EVERY_MS: u64 = 5 * 60 * 1000;

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Directory {
    rooms: BTreeMap<String, Report>,
    #[serde(skip)]
    reservations: Vec<(String, String, Millis)>,
}

impl Directory {
    pub fn new() -> Directory {
        Directory::default()
    }

    /// Rebuilds the directory from stored reports.
    pub fn from_reports(reports: impl IntoIterator<Item = Report>) -> Directory {
        let rooms = reports
            .into_iter()
            .map(|r| (r.summary.name.clone(), r))
            .collect();
        Directory {
            rooms,
            reservations: Vec::new(),
        }
    }

    /// Records a report received at `now`. Returns the listing change (possibly empty), or
    /// `None` when the report was older than the one held and ignored. An empty room leaves the
    /// directory.
    pub fn report(&mut self, mut report: Report, now: Millis) -> Option<Delta> {
        report.received_at = now;
        let name = report.summary.name.clone();
        let before = self.rooms.get(&name);
        if before.is_some_and(|b| b.version > report.version) {
            return None;
        }
        let was_listed = before.is_some_and(|b| b.summary.listed());
        let now_listed = report.summary.listed();
        let changed = before.is_none_or(|b| b.summary != report.summary);
        let mut delta = Delta::default();
        if now_listed && changed {
            delta.upserted.push(report.summary.clone());
        } else if was_listed && !now_listed {
            delta.removed.push(name.clone());
        }
        if report.summary.players == 0 {
            self.rooms.remove(&name);
        } else {
            self.rooms.insert(name, report);
        }
        Some(delta)
    }

    /// Rooms whose last report is older than [`STALE_AFTER_MS`].
    pub fn stale(&self, now: Millis) -> Vec<String> {
        self.rooms
            .values()
            .filter(|r| r.received_at.saturating_add(STALE_AFTER_MS) <= now)
            .map(|r| r.summary.name.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Report> {
        self.rooms.get(name)
    }

    pub fn reports(&self) -> impl Iterator<Item = &Report> {
        self.rooms.values()
    }

    /// The visible, non-empty rooms: most players first, then by name.
    pub fn listing(&self) -> Vec<Summary> {
        let mut list: Vec<Summary> = self
            .rooms
            .values()
            .map(|r| &r.summary)
            .filter(|s| s.listed())
            .cloned()
            .collect();
        list.sort_by(|a, b| b.players.cmp(&a.players).then_with(|| a.name.cmp(&b.name)));
        list
    }

    /// The lobby `user` should join: the first of `lobby`, `lobby-2`, … with a free seat,
    /// counting players present and seats reserved in the last [`RESERVATION_MS`]. Reserves
    /// the seat. A user already present in or sent to a lobby is sent there again.
    pub fn next_lobby(&mut self, user: &str, now: Millis) -> String {
        self.reservations
            .retain(|(_, _, at)| now < at + RESERVATION_MS);
        for n in 1u32.. {
            let name = if n == 1 {
                "lobby".to_owned()
            } else {
                format!("lobby-{n}")
            };
            let report = self.rooms.get(&name);
            let present = report.map(|r| r.users.as_slice()).unwrap_or_default();
            let mut occupants: Vec<&str> = present.iter().map(String::as_str).collect();
            for (u, lobby, _) in &self.reservations {
                if *lobby == name && !occupants.contains(&u.as_str()) {
                    occupants.push(u);
                }
            }
            if occupants.contains(&user) {
                return name;
            }
            let capacity = report.map(|r| r.summary.capacity).unwrap_or(LOBBY_CAPACITY) as usize;
            if occupants.len() < capacity {
                self.reservations.push((user.to_owned(), name.clone(), now));
                return name;
            }
        }
        unreachable!("some lobby always has room")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, players: u32, visible: bool, version: u64) -> Report {
        Report {
            summary: Summary {
                name: name.into(),
                players,
                capacity: 20,
                visible,
                locked: false,
                owner_name: String::new(),
                kind: RoomKind::of(name),
                last_activity: 1,
            },
            users: (0..players).map(|i| format!("{name}-u{i}")).collect(),
            version,
            received_at: 0,
        }
    }

    #[test]
    fn lists_visible_rooms_by_players_and_reports_deltas() {
        let mut d = Directory::new();
        assert_eq!(
            d.report(report("b", 3, true, 1), 0).unwrap().upserted.len(),
            1
        );
        d.report(report("a", 3, true, 1), 0);
        d.report(report("c", 7, true, 1), 0);
        let private = d.report(report("secret", 9, false, 1), 0).unwrap();
        assert!(private.is_empty(), "a private room is never listed");
        let names: Vec<_> = d.listing().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["c", "a", "b"]);
        // Made private: removed from the listing.
        assert_eq!(
            d.report(report("a", 3, false, 2), 0).unwrap().removed,
            ["a"]
        );
        // Emptied: leaves the directory.
        assert_eq!(d.report(report("b", 0, true, 2), 0).unwrap().removed, ["b"]);
        assert!(d.get("b").is_none());
        // Same summary again: no change.
        assert!(d.report(report("c", 7, true, 3), 0).unwrap().is_empty());
        // A late, older report is ignored.
        assert_eq!(d.report(report("c", 1, true, 2), 0), None);
        assert_eq!(d.listing()[0].players, 7);
    }

    #[test]
    fn entries_not_refreshed_for_ten_minutes_are_stale() {
        let mut d = Directory::new();
        d.report(report("old", 1, true, 1), 1000);
        d.report(report("new", 1, true, 1), 1000 + STALE_AFTER_MS);
        assert_eq!(d.stale(1000 + STALE_AFTER_MS), ["old"]);
        d.report(report("old", 1, true, 2), 2000 + STALE_AFTER_MS);
        assert!(
            d.stale(1000 + STALE_AFTER_MS).is_empty(),
            "a fresh report (even unchanged) refreshes"
        );
    }

    #[test]
    fn thirty_one_players_fill_lobby_then_lobby_2() {
        let mut d = Directory::new();
        let mut placed = BTreeMap::<String, u32>::new();
        for i in 0..31 {
            *placed
                .entry(d.next_lobby(&format!("p{i}"), 1000))
                .or_default() += 1;
        }
        assert_eq!(
            placed,
            BTreeMap::from([("lobby".into(), 30), ("lobby-2".into(), 1)])
        );
        // Asking again sends a player to the same lobby.
        assert_eq!(d.next_lobby("p30", 1000), "lobby-2");
        // Once reservations expire, the lobby's own report counts.
        let mut lobby = report("lobby", 29, true, 5);
        lobby.summary.capacity = 30;
        d.report(lobby, 0);
        assert_eq!(d.next_lobby("late", 1000 + RESERVATION_MS), "lobby");
        assert_eq!(d.next_lobby("later", 1000 + RESERVATION_MS), "lobby-2");
    }
}
