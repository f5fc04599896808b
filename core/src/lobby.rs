//! The room directory (sans-I/O), hosted by the Lobby Durable Object.
//!
//! Rooms report their [`Summary`] on every join, leave and settings change (and when they
//! wake); the directory keeps the latest report per room, lists the visible, non-empty ones,
//! and tells its caller what changed so subscribers get deltas instead of the whole list.
//! It also places players asking for "the next available lobby" into `lobby`, `lobby-2`, …,
//! counting players it has just sent to a lobby (reservations) so a burst of requests cannot
//! overfill one before the lobby's own reports catch up.
//!
//! Churn: a host that pushes changes to subscribed rooms turns on coalescing
//! ([`Directory::coalesce_every`]): changes then gather for one tick and go out as one net delta
//! ([`Directory::take_delta`] once [`Directory::next_flush`] is due), so a room toggled a hundred
//! times in a tick costs each subscriber one push, and a room listed then emptied within a tick
//! costs nothing. [`Subscribers`] keeps who is subscribed where, caps the rooms one user may
//! subscribe in, and drops rooms that stop answering pushes.

use crate::Millis;
pub use crate::listing::{Delta, Report, Summary};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How long a lobby seat stays reserved for a player the directory sent there.
pub const RESERVATION_MS: u64 = 15_000;
/// Capacity assumed for a lobby that has not reported yet.
pub const LOBBY_CAPACITY: u32 = 30;
/// An entry not refreshed for this long is checked with its room (which reports afresh): a room
/// whose players vanished without it noticing (its host restarted) must not stay listed.
pub const STALE_AFTER_MS: u64 = 10 * 60 * 1000;
/// How often the Lobby object looks for stale entries, while it has any entries.
pub const SWEEP_EVERY_MS: u64 = 5 * 60 * 1000;
/// How long listing changes gather before subscribers get them as one delta (when coalescing).
pub const PUSH_TICK_MS: u64 = 250;
/// The most rooms one user may be subscribed to the room list in at once; one more is refused
/// (`too_many_subscriptions`). A player normally watches the list from the one room they are in.
pub const MAX_SUBSCRIBED_ROOMS_PER_USER: usize = 4;
/// Pushes that fail in a row (error or timeout) before a room is no longer pushed to.
pub const MAX_PUSH_FAILURES: u32 = 3;
/// The most pushes a host should have in flight at once.
pub const PUSH_CONCURRENCY: usize = 16;
/// A push not answered within this long counts as failed.
pub const PUSH_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Directory {
    rooms: BTreeMap<String, Report>,
    #[serde(skip)]
    reservations: Vec<(String, String, Millis)>,
    /// The tick, when changes are coalesced for subscribers (off: nothing is gathered).
    #[serde(skip)]
    tick: Option<u64>,
    /// Rooms whose listing changed since the last delta, each with the listed summary
    /// subscribers last saw (`None`: not listed). Bounded by the rooms changed in one tick.
    #[serde(skip)]
    pending: BTreeMap<String, Option<Summary>>,
    /// When the gathered changes are due: one tick after the first of them (a fixed deadline,
    /// not a debounce, so steady churn cannot postpone it).
    #[serde(skip)]
    flush_at: Option<Millis>,
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
            ..Directory::default()
        }
    }

    /// Gathers listing changes for `tick_ms` and hands them out as one net delta
    /// ([`Directory::take_delta`]). Without it, only [`Directory::report`]'s own deltas exist.
    pub fn coalesce_every(mut self, tick_ms: u64) -> Directory {
        self.tick = Some(tick_ms);
        self
    }

    /// When gathered changes are due for [`Directory::take_delta`] (`None`: nothing waits).
    pub fn next_flush(&self) -> Option<Millis> {
        self.flush_at
    }

    /// The net change since the last delta, once due at `now`: each changed room's current
    /// listing against what subscribers last saw, so a room listed and emptied within the tick
    /// nets out, and a room changed ten times appears once. `None` when nothing is due or
    /// everything netted out.
    pub fn take_delta(&mut self, now: Millis) -> Option<Delta> {
        if self.flush_at.is_none_or(|at| now < at) {
            return None;
        }
        self.flush_at = None;
        let mut delta = Delta::default();
        for (name, seen) in std::mem::take(&mut self.pending) {
            let current = self.listed(&name);
            match (seen, current) {
                (seen, current) if seen.as_ref() == current => {}
                (_, Some(current)) => delta.upserted.push(current.clone()),
                (Some(_), None) => delta.removed.push(name),
                (None, None) => {}
            }
        }
        (!delta.is_empty()).then_some(delta)
    }

    fn listed(&self, name: &str) -> Option<&Summary> {
        self.rooms
            .get(name)
            .map(|r| &r.summary)
            .filter(|s| s.listed())
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
        if let Some(tick) = self.tick
            && !delta.is_empty()
        {
            let seen = self.listed(&name).cloned();
            self.pending.entry(name.clone()).or_insert(seen);
            self.flush_at.get_or_insert(now.saturating_add(tick));
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

/// Refused: the user already holds subscriptions in [`MAX_SUBSCRIBED_ROOMS_PER_USER`] rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySubscriptions {
    pub limit: usize,
}

/// How a push to a subscribed room went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Delivered,
    /// The room has no subscribers any more (it missed telling the directory).
    Gone,
    /// An error or a timeout.
    Failed,
}

/// The rooms the directory pushes listing changes to, with the users subscribed in each.
///
/// A room is registered while any of its connections is subscribed; the users are tracked so
/// one user cannot make the directory push to more than [`MAX_SUBSCRIBED_ROOMS_PER_USER`] rooms.
/// A subscription without a user (from a room host that does not name one) registers the room
/// but counts against nobody.
#[derive(Debug, Clone, Default)]
pub struct Subscribers {
    rooms: BTreeMap<String, Subscribed>,
    by_user: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Clone, Default)]
struct Subscribed {
    users: BTreeSet<String>,
    /// Pushes failed in a row.
    failures: u32,
}

impl Subscribers {
    pub fn new() -> Subscribers {
        Subscribers::default()
    }

    /// Rebuilds the set from stored `(room, user)` pairs (no user: the room alone).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, Option<String>)>) -> Subscribers {
        let mut s = Subscribers::new();
        for (room, user) in pairs {
            // Stored pairs were admitted once; a lowered cap must not drop them on load.
            s.insert(&room, user.as_deref());
        }
        s
    }

    /// `user` (if named) subscribes in `room`. Refused when that would make the user subscribed
    /// in more than [`MAX_SUBSCRIBED_ROOMS_PER_USER`] rooms; the room is then not registered
    /// for the user (it may still be for others).
    pub fn subscribe(
        &mut self,
        room: &str,
        user: Option<&str>,
    ) -> Result<(), TooManySubscriptions> {
        if let Some(user) = user {
            let held = self.by_user.get(user);
            let already = held.is_some_and(|rooms| rooms.contains(room));
            if !already && held.map_or(0, BTreeSet::len) >= MAX_SUBSCRIBED_ROOMS_PER_USER {
                return Err(TooManySubscriptions {
                    limit: MAX_SUBSCRIBED_ROOMS_PER_USER,
                });
            }
        }
        self.insert(room, user);
        Ok(())
    }

    fn insert(&mut self, room: &str, user: Option<&str>) {
        let entry = self.rooms.entry(room.to_owned()).or_default();
        if let Some(user) = user {
            entry.users.insert(user.to_owned());
            self.by_user
                .entry(user.to_owned())
                .or_default()
                .insert(room.to_owned());
        }
    }

    /// `user` is no longer subscribed in `room` (the room stays registered for the others).
    pub fn unsubscribe_user(&mut self, room: &str, user: &str) {
        if let Some(entry) = self.rooms.get_mut(room) {
            entry.users.remove(user);
        }
        self.forget(user, room);
    }

    /// Nobody in `room` is subscribed any more: no more pushes there.
    pub fn remove_room(&mut self, room: &str) {
        if let Some(entry) = self.rooms.remove(room) {
            for user in entry.users {
                self.forget(&user, room);
            }
        }
    }

    fn forget(&mut self, user: &str, room: &str) {
        if let Some(rooms) = self.by_user.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// The rooms to push to.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    pub fn contains(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// The rooms `user` is subscribed in.
    pub fn rooms_of(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, BTreeSet::len)
    }

    /// Records how a push to `room` went. Returns true when the room was dropped: it answered
    /// that nobody there is subscribed, or failed [`MAX_PUSH_FAILURES`] times in a row.
    pub fn pushed(&mut self, room: &str, outcome: Pushed) -> bool {
        let Some(entry) = self.rooms.get_mut(room) else {
            return false;
        };
        let drop = match outcome {
            Pushed::Delivered => {
                entry.failures = 0;
                false
            }
            Pushed::Gone => true,
            Pushed::Failed => {
                entry.failures += 1;
                entry.failures >= MAX_PUSH_FAILURES
            }
        };
        if drop {
            self.remove_room(room);
        }
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listing::RoomKind;

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

    fn toggled(name: &str, players: u32, version: u64, locked: bool) -> Report {
        let mut r = report(name, players, true, version);
        r.summary.locked = locked;
        r
    }

    #[test]
    fn changes_within_a_tick_go_out_as_one_net_delta() {
        let mut d = Directory::new().coalesce_every(PUSH_TICK_MS);
        d.report(report("kept", 2, true, 1), 0);
        d.report(report("going", 2, true, 1), 0);
        assert_eq!(d.next_flush(), Some(PUSH_TICK_MS));
        assert_eq!(d.take_delta(PUSH_TICK_MS - 1), None, "not due yet");
        let first = d.take_delta(PUSH_TICK_MS).unwrap();
        assert_eq!(first.upserted.len(), 2);
        assert_eq!(d.next_flush(), None, "nothing waits after a flush");

        let t = 1000;
        // A hundred and one settings toggles: one upsert, with the last state.
        for v in 2..103 {
            d.report(toggled("kept", 2, v, v % 2 == 0), t + v);
        }
        // Listed and emptied within the tick: nets out.
        d.report(report("flash", 1, true, 1), t);
        d.report(report("flash", 0, true, 2), t + 1);
        // Listed before the tick and emptied in it: removed.
        d.report(report("going", 0, true, 2), t + 2);
        // The deadline is fixed from the first change: later changes do not postpone it.
        assert_eq!(d.next_flush(), Some(t + 2 + PUSH_TICK_MS));
        let delta = d.take_delta(t + 2 + PUSH_TICK_MS).unwrap();
        assert_eq!(delta.upserted.len(), 1);
        assert!(delta.upserted[0].locked, "the last toggle wins");
        assert_eq!(delta.removed, ["going"]);

        // Changed and changed back within a tick: subscribers already have it.
        let t = 5000;
        d.report(toggled("kept", 2, 200, false), t);
        d.report(toggled("kept", 2, 201, true), t + 1);
        assert!(d.next_flush().is_some());
        assert_eq!(d.take_delta(t + PUSH_TICK_MS), None);
        assert_eq!(d.next_flush(), None);
    }

    #[test]
    fn without_coalescing_nothing_is_gathered() {
        let mut d = Directory::new();
        assert_eq!(
            d.report(report("a", 1, true, 1), 0).unwrap().upserted.len(),
            1
        );
        assert_eq!(d.next_flush(), None);
        assert_eq!(d.take_delta(u64::MAX), None);
    }

    #[test]
    fn churn_costs_each_subscriber_one_push_per_tick() {
        // The measured attack: 200 rooms, each subscribed, 200 settings toggles spread over 2 s.
        let mut d = Directory::new().coalesce_every(PUSH_TICK_MS);
        let rooms = 200u64;
        for r in 0..rooms {
            d.report(report(&format!("r{r}"), 1, true, 1), 0);
        }
        let _ = d.take_delta(PUSH_TICK_MS);
        let (mut pushes, mut uncoalesced) = (0u64, 0u64);
        let start = 1000;
        for i in 0..200u64 {
            let now = start + i * 10;
            let r = d.report(toggled(&format!("r{}", i % rooms), 1, 2 + i, true), now);
            if r.is_some_and(|delta| !delta.is_empty()) {
                uncoalesced += rooms;
            }
            if d.take_delta(now).is_some() {
                pushes += rooms;
            }
        }
        if d.take_delta(u64::MAX).is_some() {
            pushes += rooms;
        }
        assert_eq!(uncoalesced, 200 * rooms);
        // 2 s of churn at one delta per 250 ms tick.
        assert!(pushes <= 9 * rooms, "{pushes} pushes");
    }

    #[test]
    fn a_user_subscribes_in_at_most_four_rooms() {
        let mut s = Subscribers::new();
        for r in 0..MAX_SUBSCRIBED_ROOMS_PER_USER {
            s.subscribe(&format!("r{r}"), Some("guest:x")).unwrap();
        }
        assert_eq!(
            s.subscribe("r9", Some("guest:x")),
            Err(TooManySubscriptions {
                limit: MAX_SUBSCRIBED_ROOMS_PER_USER
            })
        );
        assert!(
            !s.contains("r9"),
            "a refused subscription registers nothing"
        );
        // Again in a room already held: fine. Others and unnamed subscriptions: not counted.
        s.subscribe("r0", Some("guest:x")).unwrap();
        s.subscribe("r9", Some("guest:y")).unwrap();
        s.subscribe("r8", None).unwrap();
        assert_eq!(s.rooms().len(), 6);
        // Leaving one room frees a place.
        s.unsubscribe_user("r1", "guest:x");
        assert!(
            s.contains("r1"),
            "the room stays registered until it says none is left"
        );
        s.subscribe("r9", Some("guest:x")).unwrap();
        assert_eq!(s.rooms_of("guest:x"), 4);
        // A room with nobody subscribed frees all of its users' places.
        s.remove_room("r9");
        assert_eq!(s.rooms_of("guest:x"), 3);
        assert_eq!(s.rooms_of("guest:y"), 0);
        // Reloaded from storage: the same counts.
        let reloaded = Subscribers::from_pairs([
            ("r0".to_owned(), Some("guest:x".to_owned())),
            ("r0".to_owned(), None),
            ("r1".to_owned(), Some("guest:x".to_owned())),
        ]);
        assert_eq!(reloaded.rooms(), ["r0", "r1"]);
        assert_eq!(reloaded.rooms_of("guest:x"), 2);
    }

    #[test]
    fn rooms_that_stop_answering_are_dropped() {
        let mut s = Subscribers::new();
        s.subscribe("flaky", Some("u1")).unwrap();
        s.subscribe("gone", Some("u2")).unwrap();
        for _ in 1..MAX_PUSH_FAILURES {
            assert!(!s.pushed("flaky", Pushed::Failed));
        }
        // A delivery resets the count: failures must be in a row.
        assert!(!s.pushed("flaky", Pushed::Delivered));
        for _ in 1..MAX_PUSH_FAILURES {
            assert!(!s.pushed("flaky", Pushed::Failed));
        }
        assert!(s.pushed("flaky", Pushed::Failed));
        assert!(!s.contains("flaky"));
        assert_eq!(s.rooms_of("u1"), 0);
        assert!(s.pushed("gone", Pushed::Gone));
        assert!(s.rooms().is_empty());
        assert!(
            !s.pushed("gone", Pushed::Failed),
            "unknown rooms are ignored"
        );
    }
}
