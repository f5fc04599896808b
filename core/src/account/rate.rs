//! The auth rate limit, one policy for both hosts; the hosts only keep the counters.
//!
//! - **What**: every `POST /api/auth/*` (guest, register, login, refresh, logout) counts one
//!   hit before its body is read.
//! - **Key**: the client's network ([`client_key`]: an IPv4 address, or the /64 of an IPv6 one
//!   as `a:b:c:d::/64`), so hopping through one subscriber's addresses does not multiply the
//!   budget. Shared counters are `{REDIS_KEY_PREFIX}rate:auth:<key>:<minute>`.
//! - **Budget**: `AUTH_RATE_LIMIT_PER_MINUTE` (default [`DEFAULT_AUTH_RATE_LIMIT`]) per
//!   [`AUTH_WINDOW_MS`].
//! - **Counters**: with Redis, a fixed minute per key shared by every replica and deployment
//!   ([`shared_verdict`]); without it, or for [`SHARED_BACKOFF_MS`] after Redis failed, a
//!   sliding minute on this host ([`local_verdict`]: the edge's Limiter object per key, the
//!   fallback's memory, at most [`LOCAL_TRACKED_NETWORKS`] keys).
//! - **Answer**: 429 `rate_limited` with `Retry-After` in whole seconds (at least 1).

use super::error::ApiError;
use crate::Millis;
use crate::window::RateWindow;

pub const AUTH_SCOPE: &str = "auth";
pub const AUTH_WINDOW_MS: u64 = 60_000;
pub const DEFAULT_AUTH_RATE_LIMIT: usize = 10;
/// A shared counter outlives its minute by one more (then Redis drops it).
pub const SHARED_COUNTER_TTL_SECS: u64 = 2 * AUTH_WINDOW_MS / 1000;
/// After a shared counter failed, count locally for this long without trying it (each try
/// could cost a whole timeout).
pub const SHARED_BACKOFF_MS: u64 = 30_000;
/// Networks one process tracks in memory; past it, new networks share one bucket, so a flood
/// from many addresses throttles newcomers together instead of growing memory.
pub const LOCAL_TRACKED_NETWORKS: usize = 100_000;

/// The counter key of a client address (as the host saw it).
pub fn client_key(ip: &str) -> String {
    let ip = ip.trim();
    crate::http_policy::ipv6_prefix(ip)
        .unwrap_or_else(|| ip.strip_prefix("::ffff:").unwrap_or(ip).to_owned())
}

/// The fixed window `now` falls in (part of the shared counter's key).
pub fn shared_window(now: Millis) -> u64 {
    now / AUTH_WINDOW_MS
}

fn limited(wait_ms: u64) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: wait_ms.div_ceil(1000).max(1),
    }
}

/// The verdict of a shared counter that reads `count` after this hit.
pub fn shared_verdict(count: u64, limit: usize, now: Millis) -> Result<(), ApiError> {
    if count <= limit as u64 {
        return Ok(());
    }
    Err(limited(
        ((shared_window(now) + 1) * AUTH_WINDOW_MS).saturating_sub(now),
    ))
}

/// Counts a hit on a local sliding window.
pub fn local_verdict(window: &mut RateWindow, limit: usize, now: Millis) -> Result<(), ApiError> {
    window.try_take(limit, AUTH_WINDOW_MS, now).map_err(limited)
}

/// The answer of a counter that reported "wait `wait_ms`" (the edge's Limiter object).
pub fn verdict_of_wait(wait_ms: Option<u64>) -> Result<(), ApiError> {
    wait_ms.map_or(Ok(()), |w| Err(limited(w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(r: Result<(), ApiError>) -> Option<u64> {
        match r {
            Ok(()) => None,
            Err(ApiError::RateLimited { retry_after_secs }) => Some(retry_after_secs),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn shared_counters_allow_the_budget_per_fixed_minute() {
        let cases = [
            (1, 10, 0, None),
            (10, 10, 0, None),
            (11, 10, 0, Some(60)),
            (11, 10, 59_000, Some(1)),
            (11, 10, 59_999, Some(1)),
            (11, 10, 60_000, Some(60)),
            (11, 10, 90_500, Some(30)),
        ];
        for (count, limit, now, want) in cases {
            assert_eq!(
                secs(shared_verdict(count, limit, now)),
                want,
                "{count} {now}"
            );
        }
        assert_eq!(shared_window(119_999), 1);
    }

    #[test]
    fn local_counters_slide_and_round_the_wait_up() {
        let mut w = RateWindow::default();
        for t in 0..3 {
            assert_eq!(secs(local_verdict(&mut w, 3, t * 1000)), None);
        }
        assert_eq!(secs(local_verdict(&mut w, 3, 2_500)), Some(58));
        assert_eq!(secs(local_verdict(&mut w, 3, 59_999)), Some(1));
        assert_eq!(
            secs(local_verdict(&mut w, 3, 60_000)),
            None,
            "the first hit left"
        );
        assert_eq!(secs(verdict_of_wait(Some(1))), Some(1));
        assert_eq!(secs(verdict_of_wait(Some(1001))), Some(2));
        assert_eq!(secs(verdict_of_wait(None)), None);
    }

    #[test]
    fn one_network_is_one_key() {
        assert_eq!(client_key("2001:db8::1"), client_key("2001:db8::ffff:2"));
        assert_ne!(client_key("2001:db8::1"), client_key("2001:db8:0:1::1"));
        assert_eq!(client_key("::ffff:192.0.2.1"), client_key("192.0.2.1"));
        assert_ne!(client_key("192.0.2.1"), client_key("192.0.2.2"));
        assert_eq!(client_key(" 192.0.2.1"), "192.0.2.1");
        assert_eq!(client_key("2001:db8::1"), "2001:db8:0:0::/64");
    }
}
