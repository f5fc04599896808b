//! The one log line schema both hosts print (`docs/operating-logs-errors.md`): one JSON object
//! per line, the level filter (`LOG_LEVEL`) and a redaction guard for free text.
//!
//! Sans-I/O: the host passes the time in and prints the returned string (stdout natively,
//! `console.log` at the edge). Fields a line does not have are omitted, never `null`.

use serde::Serialize;
use std::borrow::Cow;

/// Severity, most severe first (so `level <= max` means "print it").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    /// `LOG_LEVEL`'s values (case-insensitive; `warning` and `trace` accepted as aliases).
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// The events operators alert and search on; hosts use these names rather than free text.
pub mod event {
    pub const JOIN: &str = "join";
    pub const LEAVE: &str = "leave";
    pub const KICK: &str = "kick";
    pub const BAN: &str = "ban";
    pub const AUTH_FAILURE: &str = "auth_failure";
    /// A sign-in, link or unlink through a provider failed (`oauth`).
    pub const OAUTH_FAILURE: &str = "oauth_failure";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const BACKEND_ERROR: &str = "backend_error";
    pub const DEAD_LETTER: &str = "dead_letter";
    pub const SLOW_OP: &str = "slow_op";
    pub const PANIC: &str = "panic";
    pub const HTTP_ERROR: &str = "http_error";
    pub const CIRCUIT_OPEN: &str = "circuit_open";
    pub const CLOSE: &str = "close";
    pub const UNAVAILABLE: &str = "unavailable";
}

/// A request (or other operation) slower than this is logged as [`event::SLOW_OP`].
pub const SLOW_MS: u64 = 1_000;

/// What a host does with an answered request, by its status (both hosts, in the one place
/// each sees every answer): the line to log, if any, and whether it is an error report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOutcome {
    pub log: Option<(Level, &'static str)>,
    pub report: bool,
}

/// Auth failures and rate limits are warnings; 503 is a deliberate "not now" (draining, not
/// ready, at capacity, misconfigured): a warning, not a fault; any other 5xx is an error line
/// and a report. A client's ordinary mistakes (400, 404…) are not logged.
pub fn classify(status: u16) -> HttpOutcome {
    let (log, report) = match status {
        401 | 403 => (Some((Level::Warn, event::AUTH_FAILURE)), false),
        429 => (Some((Level::Warn, event::RATE_LIMITED)), false),
        503 => (Some((Level::Warn, event::UNAVAILABLE)), false),
        500..=599 => (Some((Level::Error, event::HTTP_ERROR)), true),
        _ => (None, false),
    };
    HttpOutcome { log, report }
}

/// How a socket the room closes is logged, by its close code (both hosts, where they carry out
/// `Effect::Close`): kicks and bans, floods and caps; any other close at debug.
pub fn for_close(code: u16) -> (Level, &'static str) {
    use crate::limits::close;
    match code {
        close::KICKED => (Level::Info, event::KICK),
        close::POLICY_VIOLATION | close::TOO_MANY_CONNECTIONS => (Level::Warn, event::RATE_LIMITED),
        _ => (Level::Debug, event::CLOSE),
    }
}

/// One log line. `msg`, `error` and the values of `fields` are free text and pass through
/// [`redact`]; the identifiers are the server's own (room names, user ids, request ids).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Line<'a> {
    /// RFC 3339, UTC, milliseconds (from [`Line::at`]).
    pub time: String,
    pub level: &'a str,
    pub event: &'a str,
    pub deployment: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg: Option<Cow<'a, str>>,
    /// Anything else the host attaches (`lane`, `status`, …), as strings.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    pub fields: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

fn as_map<S: serde::Serializer>(
    v: &[(Cow<'_, str>, Cow<'_, str>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, val) in v {
        m.serialize_entry(k, val)?;
    }
    m.end()
}

impl<'a> Line<'a> {
    pub fn at(now_ms: u64, level: Level, event: &'a str, deployment: &'a str) -> Line<'a> {
        Line {
            time: rfc3339(now_ms),
            level: level.as_str(),
            event,
            deployment,
            ..Line::default()
        }
    }

    /// The line as JSON, free text redacted and capped (a client's path or message cannot make
    /// a line huge), without a trailing newline.
    pub fn render(mut self) -> String {
        self.error = self
            .error
            .map(|e| Cow::Owned(capped(redact(&e), MAX_TEXT).into_owned()));
        self.msg = self
            .msg
            .map(|m| Cow::Owned(capped(redact(&m), MAX_TEXT).into_owned()));
        for (_, v) in &mut self.fields {
            let r = capped(redact(v), MAX_FIELD);
            if let Cow::Owned(r) = r {
                *v = Cow::Owned(r);
            }
        }
        serde_json::to_string(&self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Longest `msg` or `error` printed (bytes), and longest field value.
pub const MAX_TEXT: usize = 2048;
pub const MAX_FIELD: usize = 256;

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn capped(text: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…", &text[..cut]))
}

/// A panic's message and `file:line`, for the hosts' panic hooks.
pub fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> (String, String) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned());
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    (message, location)
}

/// What request ids we accept from a client or balancer (`x-request-id`, `cf-ray`): at most 64
/// bytes of `[A-Za-z0-9._:-]`, else the host generates its own. Clients are hostile: no log
/// injection through it.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Masks anything in `text` shaped like a credential: a JWT (three base64url segments, the first
/// starting `eyJ`) or a refresh token (`user.sid.secret`, the secret ≥ 16 characters), and the
/// value after `password`, `token`, `secret`, `authorization`, a PKCE verifier or one of our
/// session cookies followed by `=`, `:` or `"`, and an authorization code (`code=`).
/// A guard, not a licence: hosts never pass credentials to the logger on purpose.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut last = 0;
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    let mut i = 0;
    while i < bytes.len() {
        if !word(bytes[i]) || (i > 0 && word(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !word(bytes[j]))
            .unwrap_or(bytes.len());
        let token = &text[i..end];
        if credential_shaped(token) {
            out.push_str(&text[last..i]);
            out.push_str("[redacted]");
            last = end;
        } else if let Some(skip) = keyed_secret(&text[end..], token) {
            out.push_str(&text[last..end + skip.0]);
            out.push_str("[redacted]");
            last = end + skip.1;
            i = last;
            continue;
        }
        i = end;
    }
    if last == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

fn credential_shaped(token: &str) -> bool {
    let token = token.trim_end_matches('.');
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return false;
    }
    let jwt = parts[0].starts_with("eyJ") && parts[1].len() >= 8;
    let refresh = parts[2].len() >= 16 && parts[1].len() >= 4;
    jwt || refresh
}

/// After a key such as `password` (case-insensitive): the byte offsets, within `rest`, of the
/// value to mask (start, end).
fn keyed_secret(rest: &str, key: &str) -> Option<(usize, usize)> {
    let k = key.to_ascii_lowercase();
    let sensitive = [
        "password",
        "passwd",
        "token",
        "secret",
        "authorization",
        "bearer",
        "verifier",
        "piano_refresh",
        "piano_oauth",
        "piano_csrf",
    ]
    .iter()
    .any(|s| k.ends_with(s));
    // An authorization code in a callback's query (`code=`); `"code": "oauth_flow"` (an error
    // code) stays readable.
    let query_code = k == "code" && rest.starts_with('=');
    if !sensitive && !query_code {
        return None;
    }
    let b = rest.as_bytes();
    let mut s = 0;
    while s < b.len() && matches!(b[s], b'"' | b'\'' | b'=' | b':' | b' ') && s < 4 {
        s += 1;
    }
    // `key=value`, `key: value`, `"key":"value"`; a bare space only after `Bearer`.
    let separated = b[..s].iter().any(|c| matches!(c, b'=' | b':'));
    if !(separated || (k == "bearer" && s > 0)) {
        return None;
    }
    // An `Authorization` value is a scheme and a credential: mask to the end of the value.
    let spaced = k.ends_with("authorization");
    let e = (s..b.len())
        .find(|&j| {
            matches!(b[j], b'"' | b'\'' | b',' | b'&' | b'}' | b'\n') || (b[j] == b' ' && !spaced)
        })
        .unwrap_or(b.len());
    (e > s).then_some((s, e))
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_251_199_123), "2024-02-29T23:59:59.123Z");
    }

    #[test]
    fn levels_filter() {
        assert!(Level::Error <= Level::Info);
        assert!(Level::Debug > Level::Info);
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
    }

    #[test]
    fn a_line_has_the_schema_and_no_nulls() {
        let mut l = Line::at(0, Level::Warn, event::RATE_LIMITED, "edge");
        l.room = Some("lobby");
        l.request_id = Some("abc");
        l.fields.push(("status".into(), "429".into()));
        let v: serde_json::Value = serde_json::from_str(&l.render()).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["event"], "rate_limited");
        assert_eq!(v["deployment"], "edge");
        assert_eq!(v["room"], "lobby");
        assert_eq!(v["fields"]["status"], "429");
        assert!(v.get("user").is_none());
    }

    #[test]
    fn long_text_is_capped() {
        let path = format!("/api/rooms/{}", "é".repeat(5000));
        let mut l = Line::at(0, Level::Warn, event::RATE_LIMITED, "edge");
        l.msg = Some(Cow::Borrowed(&path));
        l.fields.push(("path".into(), Cow::Borrowed(&path)));
        let v: serde_json::Value = serde_json::from_str(&l.render()).unwrap();
        assert!(v["msg"].as_str().unwrap().len() <= MAX_TEXT);
        assert!(v["fields"]["path"].as_str().unwrap().len() <= MAX_FIELD);
        assert!(v["fields"]["path"].as_str().unwrap().ends_with('…'));
    }

    #[test]
    fn statuses_are_classified_once() {
        assert_eq!(
            classify(404),
            HttpOutcome {
                log: None,
                report: false
            }
        );
        assert_eq!(classify(401).log, Some((Level::Warn, event::AUTH_FAILURE)));
        assert_eq!(
            classify(503),
            HttpOutcome {
                log: Some((Level::Warn, event::UNAVAILABLE)),
                report: false
            }
        );
        assert_eq!(
            classify(500),
            HttpOutcome {
                log: Some((Level::Error, event::HTTP_ERROR)),
                report: true
            }
        );
        assert!(classify(502).report);
    }

    #[test]
    fn credentials_are_masked() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl";
        let text = format!("bad token {jwt} from x");
        let r = redact(&text);
        assert_eq!(r, "bad token [redacted] from x");
        let refresh = "alice.s0m3sid.AbCdEfGhIjKlMnOpQrStUv";
        assert!(!redact(&format!("got {refresh}")).contains("AbCdEf"));
        let r = redact(r#"{"username":"bob","password":"hunter2hunter2"}"#);
        assert!(!r.contains("hunter2"), "{r}");
        assert!(!redact("password=hunter2&x=1").contains("hunter2"));
        assert!(!redact("Authorization: Bearer abc.def").contains("abc.def"));
        // A callback's code and PKCE verifier, our cookies; an error code stays.
        let r = redact("GET /api/auth/oauth/x/callback?code=SplxlOBeZQQYbYS6WxSbIA&state=s");
        assert!(
            !r.contains("SplxlOBeZQQYbYS6WxSbIA") && r.contains("state=s"),
            "{r}"
        );
        assert!(!redact("code_verifier=dBjftJeZ4CVP&x").contains("dBjftJeZ4CVP"));
        assert!(!redact("cookie: piano_oauth=e30.sig; a=b").contains("e30.sig"));
        assert!(redact(r#"{"code":"oauth_flow"}"#).contains("oauth_flow"));
        // Ordinary text is left alone (and not copied).
        assert!(matches!(
            redact("set METRICS_TOKEN or METRICS_ADDR to serve it"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            redact("connect to db.example.com failed: timeout"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(valid_request_id("8f1c2a3b4c5d6e7f-AMS"));
        assert!(!valid_request_id("a\nb"));
        assert!(!valid_request_id(&"a".repeat(65)));
        assert!(!valid_request_id(""));
    }
}
