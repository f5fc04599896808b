//! One error type for both backends, split by what the outbox should do about it.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// No answer within the configured timeout.
    Timeout,
    /// Could not reach the service (connection refused, DNS, TLS, reset).
    Unreachable(String),
    /// The service refused our credentials (401/403): a configuration problem.
    Unauthorized(u16),
    /// Any other non-success HTTP status, with the start of the body.
    Status { status: u16, body: String },
    /// The backend understood the request and rejected it (a Redis `{"error"}`, a Data API 400).
    Rejected(String),
    /// The answer was not in the expected shape.
    Decode(String),
}

impl BackendError {
    /// Worth trying again later: the data is fine, the service (or its configuration) is not.
    /// Credentials are included: an operator fixing a rotated key must not have lost the writes
    /// made meanwhile. Rejections and undecodable answers would fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Timeout
            | BackendError::Unreachable(_)
            | BackendError::Unauthorized(_) => true,
            BackendError::Status { status, body } => {
                *status == 429 || *status >= 500 || looks_unavailable(body)
            }
            BackendError::Rejected(_) | BackendError::Decode(_) => false,
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            BackendError::Timeout
        } else if e.is_decode() {
            BackendError::Decode(e.to_string())
        } else {
            BackendError::Unreachable(e.to_string())
        }
    }

    /// Maps an HTTP failure status; `body` is cut to keep logs and outbox rows small.
    pub(crate) fn from_status(status: u16, body: &str) -> BackendError {
        let body: String = body.chars().take(300).collect();
        match status {
            401 | 403 => BackendError::Unauthorized(status),
            // Gateways in front of MongoDB answer 400 with the driver's message when the
            // database behind them is down; that is an outage, not a bad request.
            400 if looks_unavailable(&body) => BackendError::Status { status, body },
            400 | 404 | 409 | 422 => BackendError::Rejected(format!("{status}: {body}")),
            _ => BackendError::Status { status, body },
        }
    }
}

/// Sends a request with its timeout and reads the whole answer: (status, body text).
pub(crate) async fn exchange(
    req: reqwest::RequestBuilder,
    timeout: std::time::Duration,
) -> Result<(u16, String), BackendError> {
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(BackendError::from_reqwest)?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(BackendError::from_reqwest)?;
    Ok((status, text))
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Timeout => write!(f, "timed out"),
            BackendError::Unreachable(e) => write!(f, "unreachable: {e}"),
            BackendError::Unauthorized(s) => write!(f, "credentials refused (HTTP {s})"),
            BackendError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            BackendError::Rejected(e) => write!(f, "rejected: {e}"),
            BackendError::Decode(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// Driver and socket messages that mean "the database is unreachable", whatever the status.
fn looks_unavailable(body: &str) -> bool {
    const MARKERS: [&str; 9] = [
        "ECONNREFUSED",
        "ECONNRESET",
        "ETIMEDOUT",
        "EPIPE",
        "Server selection timed out",
        "MongoNetworkError",
        "MongoServerSelectionError",
        "connection closed",
        "Topology is closed",
    ];
    MARKERS.iter().any(|m| body.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_reporting_its_database_down_is_transient() {
        let down = BackendError::from_status(400, "connect ECONNREFUSED 127.0.0.1:27017");
        assert!(down.is_transient(), "{down:?}");
        let bad = BackendError::from_status(400, "E11000 duplicate key error");
        assert!(!bad.is_transient(), "{bad:?}");
        assert!(BackendError::from_status(503, "").is_transient());
        assert!(BackendError::from_status(401, "").is_transient());
    }
}
