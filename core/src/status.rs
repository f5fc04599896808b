//! What `GET /api/status` says, derived from facts the host gathers (docs/operating-metrics-status.md).
//!
//! Each component is `up`, `degraded` or `down`. The backend lanes are judged by their outbox:
//! writes waiting longer than [`DEGRADED_AFTER_SECS`] mean the backend is not taking them (the
//! game goes on; the data is late). A component the deployment does not use is `off`.

use crate::metrics::LaneBacklog;
use serde::Serialize;

/// Oldest waiting outbox row older than this: the lane's backend is degraded. Longer than a
/// healthy delivery (well under a second) and one or two backoff steps (1 s, 2 s), so a blip
/// does not flap the page.
pub const DEGRADED_AFTER_SECS: u64 = 5;

/// How long a host may serve the same status (so `/api/status` cannot be used to hammer the
/// backends: at most one gathering per this many ms per host instance).
pub const CACHE_MS: u64 = 3_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Degraded,
    Down,
    /// Not configured in this deployment.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    pub state: State,
    /// Why it is not up, for people (empty when up).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// For an outbox lane: rows waiting and the oldest one's age in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<LaneBacklog>,
}

impl Component {
    pub fn up() -> Component {
        Component {
            state: State::Up,
            detail: String::new(),
            outbox: None,
        }
    }

    pub fn down(detail: impl Into<String>) -> Component {
        Component {
            state: State::Down,
            detail: detail.into(),
            outbox: None,
        }
    }
}

/// What the host knows about one backend lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneFacts {
    /// The deployment has no such backend.
    NotConfigured,
    /// Configured; its outbox backlog, and whether the host's own direct use of it (a ping, a
    /// read) failed just now (`Some(false)`), worked (`Some(true)`), or was not tried.
    Configured {
        backlog: LaneBacklog,
        reachable: Option<bool>,
    },
}

/// A lane's state: down if the host could not reach it, degraded if writes wait too long, up
/// otherwise.
pub fn lane(facts: LaneFacts) -> Component {
    let LaneFacts::Configured { backlog, reachable } = facts else {
        return Component {
            state: State::Off,
            detail: String::new(),
            outbox: None,
        };
    };
    let (state, detail) = if reachable == Some(false) {
        (State::Down, "not reachable".to_owned())
    } else if backlog.oldest_age_secs >= DEGRADED_AFTER_SECS {
        (
            State::Degraded,
            format!(
                "{} writes waiting, the oldest for {} s",
                backlog.depth, backlog.oldest_age_secs
            ),
        )
    } else {
        (State::Up, String::new())
    };
    Component {
        state,
        detail,
        outbox: Some(backlog),
    }
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The worst state of any component (`off` ones do not count).
    pub state: State,
    pub version: String,
    /// `edge` or `fallback`.
    pub host: &'static str,
    pub rooms: Component,
    pub directory: Component,
    pub accounts: Component,
    pub mongodb: Component,
    pub redis: Component,
    /// When this answer was gathered (ms since the epoch): it may be up to [`CACHE_MS`] old.
    pub checked_at: u64,
}

impl Status {
    pub fn new(
        host: &'static str,
        version: &str,
        [rooms, directory, accounts, mongodb, redis]: [Component; 5],
        now: u64,
    ) -> Status {
        let rank = |s: State| match s {
            State::Up | State::Off => 0,
            State::Degraded => 1,
            State::Down => 2,
        };
        let state = [&rooms, &directory, &accounts, &mongodb, &redis]
            .iter()
            .map(|c| c.state)
            .max_by_key(|s| rank(*s))
            .map_or(State::Up, |s| if s == State::Off { State::Up } else { s });
        Status {
            state,
            version: version.to_owned(),
            host,
            rooms,
            directory,
            accounts,
            mongodb,
            redis,
            checked_at: now,
        }
    }
}

/// A refresh that has not finished after this long is presumed lost; another may start.
pub const REFRESH_GIVE_UP_MS: u64 = 10_000;

/// A host's cached status answer: while it is older than [`CACHE_MS`], one request gathers a
/// new one and the others get the previous answer meanwhile, so an expiring cache never turns
/// into every concurrent request gathering (a Redis PING each).
#[derive(Debug)]
pub struct Cached<T> {
    value: Option<(u64, T)>,
    /// When the refresh in progress started.
    refreshing: Option<u64>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            value: None,
            refreshing: None,
        }
    }
}

/// What the host does for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Answer this.
    Ready(T),
    /// Gather, then [`Cached::store`] (or [`Cached::abandon`] if gathering failed).
    Gather,
}

impl<T: Clone> Cached<T> {
    pub fn lookup(&mut self, now: u64) -> Lookup<T> {
        let refreshing = self
            .refreshing
            .is_some_and(|t| now.saturating_sub(t) < REFRESH_GIVE_UP_MS);
        match &self.value {
            Some((at, v)) if now.saturating_sub(*at) < CACHE_MS => Lookup::Ready(v.clone()),
            Some((_, v)) if refreshing => Lookup::Ready(v.clone()),
            _ => {
                self.refreshing = Some(now);
                Lookup::Gather
            }
        }
    }

    /// The gathered answer, as of `now` (when gathering started).
    pub fn store(&mut self, now: u64, value: T) {
        self.value = Some((now, value));
        self.refreshing = None;
    }

    /// Gathering failed or was cancelled: the next request tries again.
    pub fn abandon(&mut self) {
        self.refreshing = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(depth: u64, oldest_age_secs: u64) -> LaneFacts {
        LaneFacts::Configured {
            backlog: LaneBacklog {
                depth,
                oldest_age_secs,
            },
            reachable: None,
        }
    }

    #[test]
    fn one_request_refreshes_the_others_get_the_previous_answer() {
        let mut c = Cached::default();
        assert_eq!(c.lookup(0), Lookup::Gather);
        c.store(0, 1);
        assert_eq!(c.lookup(CACHE_MS - 1), Lookup::Ready(1));
        // Expired: the first request gathers, concurrent ones get the old answer.
        assert_eq!(c.lookup(CACHE_MS), Lookup::Gather);
        assert_eq!(c.lookup(CACHE_MS + 5), Lookup::Ready(1));
        c.store(CACHE_MS, 2);
        assert_eq!(c.lookup(CACHE_MS + 6), Lookup::Ready(2));
        // A failed gathering lets the next request try; a lost one is given up on.
        assert_eq!(c.lookup(3 * CACHE_MS), Lookup::Gather);
        c.abandon();
        assert_eq!(c.lookup(3 * CACHE_MS + 1), Lookup::Gather);
        assert_eq!(c.lookup(3 * CACHE_MS + 2), Lookup::Ready(2));
        assert_eq!(
            c.lookup(3 * CACHE_MS + 1 + REFRESH_GIVE_UP_MS),
            Lookup::Gather
        );
    }

    #[test]
    fn a_lane_is_degraded_when_its_oldest_write_waits_too_long() {
        assert_eq!(lane(backlog(0, 0)).state, State::Up);
        assert_eq!(lane(backlog(3, DEGRADED_AFTER_SECS - 1)).state, State::Up);
        let c = lane(backlog(3, DEGRADED_AFTER_SECS));
        assert_eq!(c.state, State::Degraded);
        assert!(c.detail.contains("3 writes"));
        assert_eq!(lane(LaneFacts::NotConfigured).state, State::Off);
        let unreachable = LaneFacts::Configured {
            backlog: LaneBacklog::default(),
            reachable: Some(false),
        };
        assert_eq!(lane(unreachable).state, State::Down);
    }

    #[test]
    fn the_overall_state_is_the_worst_component() {
        let off = lane(LaneFacts::NotConfigured);
        let s = Status::new(
            "fallback",
            "1",
            [
                Component::up(),
                Component::up(),
                Component::up(),
                off.clone(),
                off.clone(),
            ],
            0,
        );
        assert_eq!(s.state, State::Up);
        let s = Status::new(
            "edge",
            "1",
            [
                Component::up(),
                Component::up(),
                Component::up(),
                lane(backlog(1, 60)),
                off,
            ],
            0,
        );
        assert_eq!(s.state, State::Degraded);
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["mongodb"]["state"], "degraded");
        assert_eq!(json["mongodb"]["outbox"]["oldest_age_secs"], 60);
    }
}
