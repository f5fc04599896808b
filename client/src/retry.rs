//! When a failed reconnect is worth another try, and after how long.

use crate::error::{ClientError, CloseReason};
use piano_core::proto::{ErrorCode, JoinFailure};
use std::time::Duration;

/// The longest a reconnect waits on a RATE_LIMITED answer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How long a RATE_LIMITED answer (to the Resume, or the Join after it) asks to wait, at most
/// [`MAX_RETRY_AFTER`]; `None` for any other error.
pub(crate) fn retry_after(e: &ClientError) -> Option<Duration> {
    let ms = match e {
        ClientError::Server {
            code: ErrorCode::RateLimited,
            retry_after_ms,
            ..
        }
        | ClientError::JoinFailed {
            reason: JoinFailure::RateLimited,
            retry_after_ms,
            ..
        } => *retry_after_ms,
        _ => return None,
    };
    Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

/// Whether another try may help.
pub(crate) fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Closed { reason: None, .. }
        | ClientError::Broken(_)
        | ClientError::Timeout(_) => true,
        ClientError::Closed {
            reason: Some(r), ..
        } => r.may_reconnect(),
        ClientError::Http { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// Whether a close (or failure) leaves the door open to [`crate::Room::reconnect`].
pub fn may_reconnect(e: &ClientError) -> bool {
    retryable(e) && e.close_reason() != Some(CloseReason::Normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_reentry_waits_as_told_within_a_bound() {
        let limited = |ms| ClientError::Server {
            code: ErrorCode::RateLimited,
            message: String::new(),
            retry_after_ms: ms,
        };
        assert_eq!(
            retry_after(&limited(1500)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(&limited(u64::MAX)), Some(MAX_RETRY_AFTER));
        let join = ClientError::JoinFailed {
            reason: JoinFailure::RateLimited,
            message: String::new(),
            retry_after_ms: 200,
        };
        assert_eq!(retry_after(&join), Some(Duration::from_millis(200)));
        let other = ClientError::Server {
            code: ErrorCode::Muted,
            message: String::new(),
            retry_after_ms: 0,
        };
        assert_eq!(retry_after(&other), None);
    }
}
