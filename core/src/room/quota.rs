//! Rate limits: Multiplayer Piano's note quota; chat and cursors use [`RateWindow`].
//!
//! Both are computed lazily from the `now` the host passes in, so a room needs no timer (and
//! can hibernate) while players are idle.

use crate::Millis;
use crate::proto;
pub use crate::window::RateWindow;
use std::collections::VecDeque;

/// The quota refills once per interval.
pub const QUOTA_INTERVAL_MS: u64 = 2000;

/// Note quota parameters (Multiplayer Piano's `NoteQuota.PARAMS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaParams {
    pub allowance: u32,
    pub max: u32,
    pub history: usize,
}

pub const LOBBY: QuotaParams = QuotaParams {
    allowance: 200,
    max: 600,
    history: 3,
};
pub const NORMAL: QuotaParams = QuotaParams {
    allowance: 400,
    max: 1200,
    history: 3,
};
/// The owner of a normal room plays with a larger quota.
pub const OWNER: QuotaParams = QuotaParams {
    allowance: 600,
    max: 1800,
    history: 3,
};

/// Points a participant may spend on note-on events. Every interval the points grow by
/// `allowance` up to `max`, and the points at each tick are remembered for `history` ticks. A
/// participant whose remembered points are all zero (dry for a whole window) pays `allowance`
/// points per note until it recovers: the penalty for flooding.
#[derive(Debug, Clone)]
pub struct NoteQuota {
    params: QuotaParams,
    /// `None`: unlimited (the room allows Black MIDI).
    limited: bool,
    points: u64,
    history: VecDeque<u64>,
    last_tick: Millis,
}

impl NoteQuota {
    pub fn new(params: QuotaParams, limited: bool, now: Millis) -> NoteQuota {
        let mut q = NoteQuota {
            params,
            limited,
            points: 0,
            history: VecDeque::new(),
            last_tick: now,
        };
        q.reset();
        q
    }

    fn reset(&mut self) {
        self.points = u64::from(self.params.max);
        self.history = std::iter::repeat_n(self.points, self.params.history).collect();
    }

    /// Changes the parameters; true when they changed (the participant should be told).
    /// Like Multiplayer Piano, a change refills the points.
    pub fn set(&mut self, params: QuotaParams, limited: bool, now: Millis) -> bool {
        if self.params == params && self.limited == limited {
            return false;
        }
        self.params = params;
        self.limited = limited;
        self.last_tick = now;
        self.reset();
        true
    }

    fn catch_up(&mut self, now: Millis) {
        let full = u64::from(self.params.max);
        while self.last_tick + QUOTA_INTERVAL_MS <= now {
            self.last_tick += QUOTA_INTERVAL_MS;
            self.history.push_front(self.points);
            self.history.truncate(self.params.history);
            self.points = (self.points + u64::from(self.params.allowance)).min(full);
            if self.points == full && self.history.iter().all(|&h| h == full) {
                // Saturated: further ticks change nothing; skip ahead.
                let behind = (now - self.last_tick) / QUOTA_INTERVAL_MS;
                self.last_tick += behind * QUOTA_INTERVAL_MS;
                break;
            }
        }
    }

    /// Spends the cost of one note-on; false when the quota cannot pay for it.
    pub fn spend_one(&mut self, now: Millis) -> bool {
        if !self.limited {
            return true;
        }
        self.catch_up(now);
        let dry = self.history.iter().sum::<u64>() == 0;
        let needed = if dry {
            u64::from(self.params.allowance)
        } else {
            1
        };
        if self.points < needed {
            return false;
        }
        self.points -= needed;
        true
    }

    pub fn points(&mut self, now: Millis) -> u64 {
        self.catch_up(now);
        self.points
    }

    pub fn to_proto(&mut self, now: Millis) -> proto::Quota {
        let points = self.points(now);
        proto::Quota {
            allowance: self.params.allowance,
            max: if self.limited { self.params.max } else { 0 },
            interval_ms: QUOTA_INTERVAL_MS as u32,
            points: points.min(u64::from(u32::MAX)) as u32,
            unlimited: !self.limited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_refills_and_caps() {
        let mut q = NoteQuota::new(NORMAL, true, 0);
        for _ in 0..1200 {
            assert!(q.spend_one(0));
        }
        assert!(!q.spend_one(0), "empty");
        assert!(!q.spend_one(1999), "no refill before the interval");
        assert_eq!(q.points(2000), 400);
        assert_eq!(q.points(1_000_000), 1200, "never above max");
    }

    #[test]
    fn flooding_for_a_whole_window_costs_allowance_per_note() {
        let p = QuotaParams {
            allowance: 10,
            max: 10,
            history: 3,
        };
        let mut q = NoteQuota::new(p, true, 0);
        let mut now = 0;
        // Drain at every tick so the remembered points are all zero.
        for _ in 0..4 {
            while q.spend_one(now) {}
            now += QUOTA_INTERVAL_MS;
        }
        assert!(
            q.spend_one(now),
            "after a dry window one note costs the whole allowance"
        );
        assert_eq!(q.points(now), 0);
    }

    #[test]
    fn unlimited_never_refuses_and_set_refills() {
        let mut q = NoteQuota::new(LOBBY, false, 0);
        for _ in 0..100_000 {
            assert!(q.spend_one(0));
        }
        assert!(q.to_proto(0).unlimited);
        assert!(q.set(LOBBY, true, 0));
        assert!(!q.set(LOBBY, true, 0), "same params: no change");
        assert_eq!(q.points(0), 600);
    }
}
