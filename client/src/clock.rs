//! Server-clock estimate from Ping/Pong, as the web client does (`sdk/src/clock.ts`): of the last
//! [`CLOCK_SAMPLES`] samples, the one with the smallest round trip gives the offset
//! (`offset = server_time + rtt/2 − now`): on a jittery path the least delayed sample is the
//! closest to symmetric. No I/O: the caller passes its clock (ms since the Unix epoch).

use std::collections::VecDeque;
use std::time::Duration;

/// Samples kept, and pings in the first burst.
pub const CLOCK_SAMPLES: usize = 16;
/// The burst's pace (16 pings in 4 s: within the room's ping budget), then the steady beat.
pub const BURST_EVERY: Duration = Duration::from_millis(250);
pub const STEADY_EVERY: Duration = Duration::from_secs(10);

/// Milliseconds on the system clock, with microseconds.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// (round trip, offset), oldest first.
    samples: VecDeque<(f64, f64)>,
    /// Server time minus local time, ms.
    pub offset: f64,
    pings: usize,
}

impl Clock {
    /// A Pong for a Ping sent at local time `client_time`, read at local time `now`.
    pub fn pong(&mut self, client_time: f64, server_time: u64, now: f64) {
        let rtt = now - client_time;
        // A pong from the future, or an absurd one, is not a sample (the server is hostile too).
        if !rtt.is_finite() || !(0.0..=60_000.0).contains(&rtt) {
            return;
        }
        self.samples
            .push_back((rtt, server_time as f64 + rtt / 2.0 - now));
        if self.samples.len() > CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        if let Some(best) = self.samples.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
            self.offset = best.1;
        }
    }

    /// At least one sample arrived.
    pub fn synced(&self) -> bool {
        !self.samples.is_empty()
    }

    /// The smallest round trip kept, ms.
    pub fn best_rtt(&self) -> Option<f64> {
        self.samples.iter().map(|s| s.0).min_by(f64::total_cmp)
    }

    /// The server's clock now, given the local `now`.
    pub fn server_now(&self, now: f64) -> f64 {
        now + self.offset
    }

    /// Local time of server time `server_ms`.
    pub fn to_local(&self, server_ms: f64) -> f64 {
        server_ms - self.offset
    }

    /// A new socket: the next pings are a burst again.
    pub fn restart_burst(&mut self) {
        self.pings = 0;
    }

    /// Counts a ping sent and says how long to wait before the next one: the burst's pace for
    /// the first [`CLOCK_SAMPLES`], then the steady beat.
    pub fn next_ping_in(&mut self) -> Duration {
        self.pings += 1;
        if self.pings < CLOCK_SAMPLES {
            BURST_EVERY
        } else {
            STEADY_EVERY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_sample_wins() {
        let mut c = Clock::default();
        assert!(!c.synced());
        // Server 1000 ms ahead. Slow sample: 100 ms there, 10 back (asymmetric: off by 45).
        c.pong(0.0, 1100, 110.0);
        assert!((c.offset - 1045.0).abs() < 1e-9);
        // Fast symmetric sample: exact.
        c.pong(200.0, 1205, 210.0);
        assert!((c.offset - 1000.0).abs() < 1e-9);
        assert_eq!(c.best_rtt(), Some(10.0));
        // A slower later one does not replace it.
        c.pong(300.0, 1400, 400.0);
        assert!((c.offset - 1000.0).abs() < 1e-9);
        assert!((c.server_now(500.0) - 1500.0).abs() < 1e-9);
        assert!((c.to_local(1500.0) - 500.0).abs() < 1e-9);
    }

    #[test]
    fn keeps_sixteen_samples_and_ignores_nonsense() {
        let mut c = Clock::default();
        c.pong(0.0, 1001, 2.0); // rtt 2, offset 1000
        for i in 0..CLOCK_SAMPLES {
            let t = 1000.0 * (i + 1) as f64;
            c.pong(t, (t + 2000.0 + 5.0) as u64, t + 10.0); // rtt 10, offset 2000
        }
        assert!(
            (c.offset - 2000.0).abs() < 1e-9,
            "the old fast sample aged out"
        );
        c.pong(100_000.0, 5, 99_000.0); // negative rtt
        c.pong(f64::NAN, 5, 1.0);
        assert!((c.offset - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn pings_burst_then_beat() {
        let mut c = Clock::default();
        let waits: Vec<Duration> = (0..CLOCK_SAMPLES + 1).map(|_| c.next_ping_in()).collect();
        assert!(waits[..CLOCK_SAMPLES - 1].iter().all(|w| *w == BURST_EVERY));
        assert_eq!(waits[CLOCK_SAMPLES], STEADY_EVERY);
    }
}
