//! What a call can fail with: typed, from what the server said (an HTTP refusal's JSON error
//! code, a JoinFailed, an Error notice, a close code) or from the transport.

use crate::conn::ConnectError;
use piano_core::proto::{self, ErrorCode, JoinFailure, ResumeFailure};

/// Why the server closed a socket (the protocol's close codes, README "The room protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000.
    Normal,
    /// 1008: kept sending over its budgets after RATE_LIMITED notices.
    Abuse,
    /// 1009.
    FrameTooLarge,
    /// 1011: the server lost the connection's state.
    ServerError,
    /// 1012: reconnect with the same token.
    Restart,
    /// 1013: a slow reader, or the host cannot serve now.
    TryAgainLater,
    /// 4001: logout, revocation, expiry: get a new token.
    SessionEnded,
    /// 4002: roles changed: reconnect with a fresh token.
    IdentityChanged,
    /// 4003.
    Kicked,
    /// 4004.
    TooManyConnections,
    /// 4005: a Resume on a newer connection took this one over.
    ResumedElsewhere,
    Other(u16),
}

impl CloseReason {
    pub fn from_code(code: u16) -> CloseReason {
        match code {
            1000 => CloseReason::Normal,
            1008 => CloseReason::Abuse,
            1009 => CloseReason::FrameTooLarge,
            1011 => CloseReason::ServerError,
            1012 => CloseReason::Restart,
            1013 => CloseReason::TryAgainLater,
            4001 => CloseReason::SessionEnded,
            4002 => CloseReason::IdentityChanged,
            4003 => CloseReason::Kicked,
            4004 => CloseReason::TooManyConnections,
            4005 => CloseReason::ResumedElsewhere,
            other => CloseReason::Other(other),
        }
    }

    /// Whether reconnecting (with resume) with the same token makes sense.
    pub fn may_reconnect(self) -> bool {
        matches!(
            self,
            CloseReason::ServerError
                | CloseReason::Restart
                | CloseReason::TryAgainLater
                | CloseReason::Other(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientError {
    /// An HTTP refusal (an API call or the WebSocket upgrade): status and the JSON error's
    /// `code` and `message` (empty when the body was not the documented error).
    Http {
        status: u16,
        code: String,
        message: String,
    },
    /// The room refused the Join.
    JoinFailed {
        reason: JoinFailure,
        message: String,
        retry_after_ms: u64,
    },
    /// The room refused a Resume (the caller may join afresh).
    ResumeFailed {
        reason: ResumeFailure,
        message: String,
    },
    /// The room answered a request with an `Error`.
    Server {
        code: ErrorCode,
        message: String,
        retry_after_ms: u64,
    },
    /// The socket was closed (`None`: without a close frame).
    Closed {
        reason: Option<CloseReason>,
        message: String,
    },
    /// The transport failed, or the server broke the protocol.
    Broken(String),
    /// No answer in time.
    Timeout(&'static str),
    /// A call that needs a joined room.
    NotJoined,
}

impl ClientError {
    pub(crate) fn from_error(e: &proto::Error) -> ClientError {
        ClientError::Server {
            code: ErrorCode::try_from(e.code).unwrap_or_default(),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
        }
    }

    pub(crate) fn from_join_failed(f: &proto::JoinFailed) -> ClientError {
        ClientError::JoinFailed {
            reason: JoinFailure::try_from(f.reason).unwrap_or_default(),
            message: f.message.clone(),
            retry_after_ms: f.retry_after_ms,
        }
    }

    /// An HTTP answer that is an error: its `{"error": {"code", "message"}}`.
    pub(crate) fn http(status: u16, body: &serde_json::Value) -> ClientError {
        let field = |k: &str| body["error"][k].as_str().unwrap_or_default().to_owned();
        ClientError::Http {
            status,
            code: field("code"),
            message: field("message"),
        }
    }

    pub(crate) fn closed(
        frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>,
    ) -> ClientError {
        ClientError::Closed {
            reason: frame.map(|f| CloseReason::from_code(u16::from(f.code))),
            message: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
        }
    }

    /// The server's close reason, if this is a close.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self {
            ClientError::Closed { reason, .. } => *reason,
            _ => None,
        }
    }
}

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> ClientError {
        match e {
            ConnectError::Refused { status, body } => ClientError::http(status, &body),
            ConnectError::Timeout => ClientError::Timeout("websocket handshake"),
            ConnectError::NoWelcome => ClientError::Timeout("welcome"),
            ConnectError::Failed(e) => ClientError::Broken(e),
            ConnectError::Closed { code, errors } => ClientError::Closed {
                reason: code.map(CloseReason::from_code),
                message: format!("before the Welcome, after errors {errors:?}"),
            },
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for ClientError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_carry_their_code() {
        let body = serde_json::json!({"error": {"code": "invalid_name", "message": "too long"}});
        assert_eq!(
            ClientError::http(400, &body),
            ClientError::Http {
                status: 400,
                code: "invalid_name".into(),
                message: "too long".into()
            }
        );
        let odd = ClientError::http(502, &serde_json::json!("nope"));
        assert!(matches!(odd, ClientError::Http { status: 502, ref code, .. } if code.is_empty()));
    }

    #[test]
    fn close_codes_are_named() {
        assert_eq!(CloseReason::from_code(4003), CloseReason::Kicked);
        assert_eq!(CloseReason::from_code(4444), CloseReason::Other(4444));
        assert!(CloseReason::Restart.may_reconnect());
        assert!(!CloseReason::Kicked.may_reconnect());
        assert!(!CloseReason::SessionEnded.may_reconnect());
    }

    #[test]
    fn unknown_enum_values_do_not_panic() {
        let e = proto::Error {
            code: 999,
            message: "?".into(),
            retry_after_ms: 0,
        };
        assert!(matches!(
            ClientError::from_error(&e),
            ClientError::Server {
                code: ErrorCode::Unspecified,
                ..
            }
        ));
    }
}
