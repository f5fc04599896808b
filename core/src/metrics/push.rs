//! How the edge gathers metrics without waking hibernated rooms: each Room object **pushes**
//! what it counted, with its current gauges, to one aggregator (the directory's Lobby object),
//! at most every [`PUSH_EVERY_MS`] while it is busy and once more before it may hibernate; the
//! stateless worker pushes its own counters the same way. The aggregator adds the counters to
//! stored totals and keeps each room's latest gauges; a scrape reads only the aggregator.
//!
//! The rules (what a push holds, when one is due, how the gauges add up) are here so the host
//! only stores and sends.

use super::{Counters, Gauges, Histogram, LaneBacklog};
use crate::Millis;
use crate::lane::Lane;
use serde::{Deserialize, Serialize};

/// A busy room pushes at most this often (one storage write at the aggregator per push).
pub const PUSH_EVERY_MS: Millis = 2_000;

/// A room that pushed within this long counts as awake: an idle Room object hibernates ~10 s
/// after its last event, and a busy one pushes every [`PUSH_EVERY_MS`].
pub const AWAKE_MS: Millis = 15_000;

/// A busy object says its present state again at least this often (at its next event: a
/// client pings every 10 s, every minute in a throttled background tab).
pub const REFRESH_MS: Millis = 60_000;

/// A report this old no longer counts its connections and players: the object was evicted
/// without saying it went idle (a deploy restarts every object and drops its sockets without a
/// close event). Its outbox still counts: queued rows survive a restart and their alarm keeps
/// retrying, so a stuck backlog stays visible. A busy object refreshes every [`REFRESH_MS`].
pub const STALE_MS: Millis = 5 * REFRESH_MS;

/// Whether a report made at `at` is stale at `now` ([`STALE_MS`]) and says nothing more: the
/// aggregator may delete it.
pub fn forgettable(p: &Present, at: Millis, now: Millis) -> bool {
    now.saturating_sub(at) >= STALE_MS && p.outbox.iter().all(|l| l.depth == 0)
}

/// One lane's head as a room or account sees it: rows waiting and when the oldest was queued
/// (its age is computed when read, so a quiet object's backlog keeps ageing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneHead {
    pub depth: u64,
    /// Ms since the epoch; `None` when nothing waits.
    pub oldest: Option<Millis>,
}

impl LaneHead {
    pub fn backlog(&self, now: Millis) -> LaneBacklog {
        LaneBacklog {
            depth: self.depth,
            oldest_age_secs: self.oldest.map_or(0, |t| now.saturating_sub(t) / 1000),
        }
    }
}

/// What an object reports of itself now (replacing its previous report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Present {
    pub connections: u64,
    pub players: u64,
    /// Per lane, in [`Lane::ALL`] order.
    pub outbox: [LaneHead; 2],
}

impl Present {
    pub fn is_idle(&self) -> bool {
        self.connections == 0 && self.outbox.iter().all(|l| l.depth == 0)
    }
}

/// One push: counter deltas (sparse `(slot, n)`), latency observations, and, from a room or
/// an account, its present state under `source` (e.g. `room:<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    #[serde(default)]
    pub counters: Vec<(u32, u64)>,
    #[serde(default)]
    pub latency: Option<Histogram>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub present: Option<Present>,
}

/// What a pusher remembers between pushes: what it counted, and what it last said about
/// itself (a change of that is pushed at once, e.g. the outbox emptying).
#[derive(Debug, Default)]
pub struct Pusher {
    pub counters: Counters,
    pub latency: Histogram,
    last_push: Option<Millis>,
    last_present: Said,
    /// Connections or players changed since the last push, which waits for the next one.
    counts_pending: bool,
}

/// What the aggregator last heard from this object.
#[derive(Debug, Default)]
enum Said {
    /// Nothing since the object woke: it holds no row, or one the object's idle state matches.
    #[default]
    Nothing,
    /// The last push failed: whatever the object says next is news.
    Unsure,
    Present(Present),
}

impl Pusher {
    /// The push to send now, if one is due: something counted or the connection/player counts
    /// changed, and [`PUSH_EVERY_MS`] passed since the last push (or `force`, before the object
    /// may go idle); or at once when the present state changed in a way the status page shows
    /// (the outbox, the object turning busy or idle).
    pub fn due(
        &mut self,
        source: &str,
        present: Present,
        now: Millis,
        force: bool,
    ) -> Option<Push> {
        let counted = !self.counters.is_empty() || self.latency.count > 0;
        let quiet = self
            .last_push
            .is_some_and(|t| now.saturating_sub(t) < PUSH_EVERY_MS);
        // Only what the status page shows is news at once: the outbox, and the object turning
        // busy or idle. Count changes (a socket joining or leaving) wait for the next periodic
        // push, so a reconnect loop cannot turn into one aggregator write per socket. A freshly
        // woken object that is idle has nothing to say (its absence already means idle), so a
        // public read that wakes an object does not write to the aggregator.
        let (changed, counts_changed) = match &self.last_present {
            Said::Nothing => (!present.is_idle(), false),
            Said::Unsure => (true, false),
            Said::Present(p) => (
                p.outbox != present.outbox || p.is_idle() != present.is_idle(),
                p.connections != present.connections || p.players != present.players,
            ),
        };
        self.counts_pending |= counts_changed;
        // A busy object's report must not go stale (`STALE_MS`) while it is still busy.
        let refresh = !present.is_idle()
            && self
                .last_push
                .is_some_and(|t| now.saturating_sub(t) >= REFRESH_MS);
        // `force` hurries counted work only: a count change alone always waits (a host that forces
        // every push, as a room without storage does, must not push per socket).
        let periodic = (counted && force) || ((counted || self.counts_pending) && !quiet);
        if !(changed || refresh || periodic) {
            return None;
        }
        self.last_push = Some(now);
        self.counts_pending = false;
        self.last_present = Said::Present(present.clone());
        Some(Push {
            counters: self.counters.take().sparse(),
            latency: (self.latency.count > 0).then(|| std::mem::take(&mut self.latency)),
            source: Some(source.to_owned()),
            present: Some(present),
        })
    }

    /// The outbox heads last pushed (`None` before the first push or after a failed one): a
    /// host may reuse them rather than read its storage again when nothing was queued since.
    pub fn last_outbox(&self) -> Option<[LaneHead; 2]> {
        match &self.last_present {
            Said::Present(p) => Some(p.outbox),
            _ => None,
        }
    }

    /// Whether counted work is due to be pushed at `now`.
    pub fn counted_due(&self, now: Millis) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }

    /// The last push failed: the present state is news again.
    pub fn forget_present(&mut self) {
        self.last_present = Said::Unsure;
    }

    /// When a push will be due for what is counted but not yet sent (the host's timer).
    pub fn deadline(&self) -> Option<Millis> {
        if self.counters.is_empty() && self.latency.count == 0 && !self.counts_pending {
            return None;
        }
        Some(self.last_push.map_or(0, |t| t + PUSH_EVERY_MS))
    }
}

/// The gauges from every object's latest report: `(report, when it came)`.
pub fn gauges<'a>(reports: impl IntoIterator<Item = (&'a Present, Millis)>, now: Millis) -> Gauges {
    let mut g = Gauges::default();
    for (p, at) in reports {
        if now.saturating_sub(at) < STALE_MS {
            g.connections += p.connections;
            g.players += p.players;
        }
        if p.connections > 0 && now.saturating_sub(at) < AWAKE_MS {
            g.rooms_awake += 1;
        }
        for (i, lane) in Lane::ALL.into_iter().enumerate() {
            g.lane_mut(lane).merge(p.outbox[i].backlog(now));
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Fam;

    #[test]
    fn a_busy_room_pushes_at_most_every_few_seconds_and_a_change_at_once() {
        let mut p = Pusher::default();
        let idle = Present::default();
        let busy = Present {
            connections: 1,
            ..Present::default()
        };
        // First: a busy room's state is news.
        assert!(p.due("room:a", busy.clone(), 0, false).is_some());
        // Becoming idle is news at once.
        assert!(p.due("room:a", idle.clone(), 1, false).is_some());
        p.counters.add(Fam::NotesRelayed, 0, 3);
        assert!(p.due("room:a", idle.clone(), 500, false).is_none());
        assert_eq!(p.deadline(), Some(PUSH_EVERY_MS + 1));
        let push = p.due("room:a", idle.clone(), PUSH_EVERY_MS + 1, false);
        assert_eq!(push.map(|p| p.counters.len()), Some(1));
        assert_eq!(p.deadline(), None);
        // Nothing counted, nothing changed: nothing to say.
        assert!(
            p.due("room:a", idle.clone(), 10 * PUSH_EVERY_MS, true)
                .is_none()
        );
        // Forced (the room may hibernate next): counted work goes now.
        p.counters.add(Fam::NotesRelayed, 0, 1);
        assert!(
            p.due("room:a", idle.clone(), 10 * PUSH_EVERY_MS + 1, true)
                .is_some()
        );
        // The outbox filling is news at once.
        let mut backlog = idle.clone();
        backlog.outbox[0] = LaneHead {
            depth: 2,
            oldest: Some(5),
        };
        assert!(
            p.due("room:a", backlog, 10 * PUSH_EVERY_MS + 2, false)
                .is_some()
        );
    }

    #[test]
    fn a_woken_idle_object_says_nothing() {
        // A public read wakes an account: no aggregator write for an idle object.
        let mut p = Pusher::default();
        assert!(p.due("account:x", Present::default(), 0, false).is_none());
        assert!(p.due("account:x", Present::default(), 0, true).is_none());
        assert_eq!(p.deadline(), None);
        // After a failed push, even idle is news (the aggregator may hold a busy row).
        let busy = Present {
            connections: 1,
            ..Present::default()
        };
        assert!(p.due("account:x", busy, 1, false).is_some());
        p.forget_present();
        assert!(p.due("account:x", Present::default(), 2, false).is_some());
    }

    #[test]
    fn connection_counts_wait_for_the_periodic_push() {
        let mut p = Pusher::default();
        let with = |connections, players| Present {
            connections,
            players,
            ..Present::default()
        };
        assert!(p.due("room:a", with(1, 1), 0, false).is_some());
        // A reconnect loop: counts change on every socket, no push until PUSH_EVERY_MS.
        for (i, n) in [2, 1, 2, 1, 3].into_iter().enumerate() {
            assert!(
                p.due("room:a", with(n, 1), 10 + i as Millis, false)
                    .is_none()
            );
        }
        // Even from a host that forces every push (a room without storage has no alarm).
        assert!(p.due("room:a", with(3, 1), 20, true).is_none());
        // ... but the host's timer knows a push is owed, and it carries the latest counts.
        assert_eq!(p.deadline(), Some(PUSH_EVERY_MS));
        let push = p.due("room:a", with(3, 1), PUSH_EVERY_MS, false);
        assert_eq!(push.and_then(|p| p.present).map(|p| p.connections), Some(3));
        assert_eq!(p.deadline(), None);
        // The last socket leaving (busy -> idle) is news at once.
        assert!(
            p.due("room:a", with(0, 0), PUSH_EVERY_MS + 1, false)
                .is_some()
        );
    }

    #[test]
    fn evicted_rooms_stop_counting_but_backlogs_stay() {
        let room = Present {
            connections: 4,
            players: 2,
            ..Present::default()
        };
        let mut account = Present::default();
        account.outbox[1] = LaneHead {
            depth: 1,
            oldest: Some(0),
        };
        let now = STALE_MS + 10;
        let g = gauges([(&room, 10), (&account, 10)], now);
        assert_eq!((g.connections, g.players), (0, 0));
        assert_eq!(g.outbox[1].depth, 1);
        assert!(forgettable(&room, 10, now));
        assert!(!forgettable(&account, 10, now));
        assert!(!forgettable(&room, 11, now));
        // A busy room with a quiet client still refreshes its report in time.
        let mut p = Pusher::default();
        assert!(p.due("room:a", room.clone(), 0, false).is_some());
        assert!(
            p.due("room:a", room.clone(), REFRESH_MS - 1, false)
                .is_none()
        );
        assert!(p.due("room:a", room.clone(), REFRESH_MS, false).is_some());
    }

    #[test]
    fn gauges_add_up_and_backlogs_keep_ageing() {
        let a = Present {
            connections: 2,
            players: 1,
            outbox: [
                LaneHead {
                    depth: 3,
                    oldest: Some(1_000),
                },
                LaneHead::default(),
            ],
        };
        let b = Present {
            connections: 1,
            players: 1,
            outbox: [
                LaneHead {
                    depth: 1,
                    oldest: Some(9_000),
                },
                LaneHead::default(),
            ],
        };
        let g = gauges([(&a, 10_000), (&b, 0)], 21_000);
        assert_eq!((g.connections, g.players, g.rooms_awake), (3, 2, 1));
        assert_eq!(g.outbox[0].depth, 4);
        assert_eq!(g.outbox[0].oldest_age_secs, 20);
    }
}
