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
    /// The backend understood the request and refused it for what it is (an unknown operator,
    /// a wrong Redis type): sending it again would fail the same way.
    Rejected(String),
    /// The answer was not in the expected shape (or was cut off).
    Decode(String),
}

impl BackendError {
    /// Worth trying again later. Only [`BackendError::Rejected`] is not: an error is treated
    /// as the op's fault only when the backend says so in words we recognise
    /// ([`from_status`](Self::from_status), [`redis_error`]); anything else (outages, wrong
    /// credentials or URL, a gateway's unknown 400, a cut-off answer) keeps the data and
    /// retries, because setting good data aside during an outage would lose it, while an op
    /// that is wrongly retried only waits, visible in the outbox's status.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BackendError::Rejected(_))
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
    /// Gateways in front of MongoDB answer 400 with the driver's message for everything, an
    /// outage included, so a 400 is the op's fault only when the message says so.
    pub(crate) fn from_status(status: u16, body: &str) -> BackendError {
        let body: String = body.chars().take(300).collect();
        match status {
            401 | 403 => BackendError::Unauthorized(status),
            400 | 409 | 422 if mongo_refuses_op(&body) && !looks_unavailable(&body) => {
                BackendError::Rejected(format!("{status}: {body}"))
            }
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
    const MARKERS: [&str; 12] = [
        "ECONNREFUSED",
        "ECONNRESET",
        "ETIMEDOUT",
        "EPIPE",
        "Server selection timed out",
        "MongoNetwork",
        "MongoServerSelectionError",
        "closed",
        "not primary",
        "shutdown",
        "must be connected",
        "pool",
    ];
    MARKERS.iter().any(|m| body.contains(m))
}

/// MongoDB's words for "this operation is malformed": it would fail again as it is.
fn mongo_refuses_op(body: &str) -> bool {
    const MARKERS: [&str; 10] = [
        "BadValue",
        "FailedToParse",
        "unknown operator",
        "Unknown modifier",
        "failed validation",
        "too large",
        "would create a conflict",
        "Cannot apply",
        "must provide",
        "InvalidParameter",
    ];
    MARKERS.iter().any(|m| body.contains(m))
}

/// Classifies one Redis error message: a wrong command or type is the op's fault; the rest
/// (`LOADING`, `BUSY`, `READONLY`, `OOM`, `MASTERDOWN`, a gateway's lost connection, …) is an
/// outage or overload, retried.
pub fn redis_error(message: String) -> BackendError {
    let permanent = (message.starts_with("ERR") || message.starts_with("WRONGTYPE"))
        && !message.contains("max number of clients");
    if permanent {
        BackendError::Rejected(message)
    } else {
        BackendError::Status {
            status: 200,
            body: message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recognised_refusals_are_permanent() {
        for down in [
            "connect ECONNREFUSED 127.0.0.1:27017",
            "connection 7 to 127.0.0.1:27017 closed",
            "Connection pool for 127.0.0.1:27017 was cleared because another operation failed",
            "Client must be connected before running operations",
            "not primary",
            "interrupted at shutdown",
            // A concurrent upsert of the same _id: the retry finds the document.
            "E11000 duplicate key error collection: db.rooms index: _id_",
            "something no one has seen before",
        ] {
            let e = BackendError::from_status(400, down);
            assert!(e.is_transient(), "{down}: {e:?}");
        }
        let bad = BackendError::from_status(400, "Unknown modifier: $bogus");
        assert!(!bad.is_transient(), "{bad:?}");
        for status in [401, 403, 404, 408, 425, 429, 500, 503] {
            assert!(
                BackendError::from_status(status, "").is_transient(),
                "{status}"
            );
        }
    }

    #[test]
    fn redis_errors_split_into_outages_and_bad_commands() {
        for transient in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "READONLY You can't write against a read only replica.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "Connection is closed.",
            "Reached the max retries per request limit (which is 20).",
            "ERR max number of clients reached",
        ] {
            assert!(redis_error(transient.into()).is_transient(), "{transient}");
        }
        for permanent in [
            "ERR unknown command 'BAD'",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ] {
            assert!(!redis_error(permanent.into()).is_transient(), "{permanent}");
        }
    }
}
