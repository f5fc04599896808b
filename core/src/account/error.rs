//! The one error type of the account and token API. Every refusal of `/api/auth/*`,
//! `/api/users/*` and `/api/admin/*` is an [`ApiError`]; each host turns it into its HTTP
//! response in one place (status, `{"error": {"code", "message"}}`, [`ApiError::headers`]), so a
//! code can no longer differ between hosts.

use std::fmt;

/// Why a refresh or logout with a refresh token was refused (all answer `invalid_session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Unparseable, unknown, or a secret this session never had.
    NotValid,
    /// Logged out, revoked or expired.
    Ended,
    /// A rotated-away secret came back: the session was revoked just now.
    Reused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidJson(String),
    BodyTooLarge,
    InvalidUsername(String),
    InvalidPassword,
    InvalidEmail,
    InvalidName(String),
    InvalidColor(String),
    InvalidStatus(String),
    InvalidRole(String),
    ReservedUsername,
    UsernameTaken,
    InvalidCredentials,
    InvalidSession(SessionRefusal),
    /// A missing, bad or ended access token (401 with `WWW-Authenticate`).
    Unauthorized(String),
    NotAMember,
    GuestsHaveNoProfile,
    Forbidden,
    NotFound,
    RateLimited {
        retry_after_secs: u64,
    },
    /// A store the answer depends on (the account store, the shared account database, the
    /// session check) cannot be reached; `retry_after_secs` when the server knows how long it
    /// will not ask again.
    Unavailable {
        retry_after_secs: Option<u64>,
    },
    NotConfigured(String),
    /// A sign-in through a provider, a link or an unlink, or a cookie request from elsewhere.
    OAuth(super::external::OAuthError),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        use ApiError::*;
        match self {
            InvalidJson(_) | InvalidUsername(_) | InvalidPassword | InvalidEmail
            | InvalidName(_) | InvalidColor(_) | InvalidStatus(_) | InvalidRole(_) | NotAMember => {
                400
            }
            InvalidCredentials | InvalidSession(_) | Unauthorized(_) => 401,
            ReservedUsername | GuestsHaveNoProfile | Forbidden => 403,
            NotFound => 404,
            UsernameTaken => 409,
            BodyTooLarge => 413,
            RateLimited { .. } => 429,
            Unavailable { .. } | NotConfigured(_) => 503,
            OAuth(e) => e.status(),
        }
    }

    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidJson(_) => "invalid_json",
            BodyTooLarge => "body_too_large",
            InvalidUsername(_) => "invalid_username",
            InvalidPassword => "invalid_password",
            InvalidEmail => "invalid_email",
            InvalidName(_) => "invalid_name",
            InvalidColor(_) => "invalid_color",
            InvalidStatus(_) => "invalid_status",
            InvalidRole(_) => "invalid_role",
            ReservedUsername => "reserved_username",
            UsernameTaken => "username_taken",
            InvalidCredentials => "invalid_credentials",
            InvalidSession(_) => "invalid_session",
            Unauthorized(_) => "unauthorized",
            NotAMember => "not_a_member",
            GuestsHaveNoProfile => "guests_have_no_profile",
            Forbidden => "forbidden",
            NotFound => "not_found",
            RateLimited { .. } => "rate_limited",
            Unavailable { .. } => "unavailable",
            NotConfigured(_) => "not_configured",
            OAuth(e) => e.code(),
        }
    }

    pub fn message(&self) -> String {
        use ApiError::*;
        match self {
            InvalidJson(e) => format!("bad request body: {e}"),
            BodyTooLarge => "request body is over 4096 bytes".into(),
            InvalidUsername(e) | InvalidColor(e) | InvalidStatus(e) | Unauthorized(e)
            | NotConfigured(e) => e.clone(),
            InvalidPassword => "password must be 8-128 characters".into(),
            InvalidEmail => "email is not an address".into(),
            InvalidName(e) => format!("name {e}"),
            InvalidRole(r) => format!("unknown role {r:?}"),
            ReservedUsername => {
                "this username is reserved for the deployment's administrators".into()
            }
            UsernameTaken => "that username is taken".into(),
            InvalidCredentials => "wrong username or password".into(),
            InvalidSession(SessionRefusal::NotValid) => "refresh token is not valid".into(),
            InvalidSession(SessionRefusal::Ended) => "the session has ended: log in again".into(),
            InvalidSession(SessionRefusal::Reused) => {
                "refresh token was already used: session revoked".into()
            }
            NotAMember => "guest tokens have no session to end".into(),
            GuestsHaveNoProfile => "register to keep a profile".into(),
            Forbidden => "only admins may change roles".into(),
            NotFound => "no such user".into(),
            RateLimited { retry_after_secs } => {
                format!("too many requests: try again in {retry_after_secs} s")
            }
            OAuth(e) => e.message(),
            Unavailable { .. } => {
                "the account store or the shared account database cannot be reached right now; try again shortly".into()
            }
        }
    }

    /// Headers the response carries besides the JSON body.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::RateLimited { retry_after_secs }
            | ApiError::Unavailable {
                retry_after_secs: Some(retry_after_secs),
            } => vec![("retry-after", retry_after_secs.to_string())],
            ApiError::Unauthorized(_) => vec![(
                "www-authenticate",
                r#"Bearer error="invalid_token""#.to_owned(),
            )],
            _ => Vec::new(),
        }
    }

    /// `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code(), "message": self.message() } })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.message())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status_code_and_headers() {
        type Case = (
            ApiError,
            u16,
            &'static str,
            Option<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (ApiError::InvalidJson("x".into()), 400, "invalid_json", None),
            (ApiError::BodyTooLarge, 413, "body_too_large", None),
            (ApiError::InvalidPassword, 400, "invalid_password", None),
            (ApiError::ReservedUsername, 403, "reserved_username", None),
            (ApiError::UsernameTaken, 409, "username_taken", None),
            (
                ApiError::InvalidCredentials,
                401,
                "invalid_credentials",
                None,
            ),
            (
                ApiError::InvalidSession(SessionRefusal::Reused),
                401,
                "invalid_session",
                None,
            ),
            (
                ApiError::Unauthorized("no".into()),
                401,
                "unauthorized",
                Some(("www-authenticate", r#"Bearer error="invalid_token""#)),
            ),
            (ApiError::NotAMember, 400, "not_a_member", None),
            (
                ApiError::GuestsHaveNoProfile,
                403,
                "guests_have_no_profile",
                None,
            ),
            (ApiError::NotFound, 404, "not_found", None),
            (
                ApiError::RateLimited {
                    retry_after_secs: 7,
                },
                429,
                "rate_limited",
                Some(("retry-after", "7")),
            ),
            // Drift 7: one code for "cannot reach what the answer depends on".
            (
                ApiError::Unavailable {
                    retry_after_secs: Some(5),
                },
                503,
                "unavailable",
                Some(("retry-after", "5")),
            ),
            (
                ApiError::Unavailable {
                    retry_after_secs: None,
                },
                503,
                "unavailable",
                None,
            ),
            (
                ApiError::NotConfigured("k".into()),
                503,
                "not_configured",
                None,
            ),
        ];
        for (e, status, code, header) in cases {
            assert_eq!((e.status(), e.code()), (status, code), "{e:?}");
            let headers = e.headers();
            assert_eq!(
                headers.first().map(|(k, v)| (*k, v.as_str())),
                header,
                "{e:?}"
            );
            assert_eq!(e.body()["error"]["code"], code);
        }
    }
}
