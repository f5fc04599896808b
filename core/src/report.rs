//! Error reports to any Sentry-compatible service (Sentry, GlitchTip, …), for both hosts
//! (`docs/operating-logs-errors.md`): the DSN, one [`Report`] turned into the bytes of an
//! envelope, and the [`Reporter`] throttle that keeps an error storm to a bounded number of
//! reports.
//!
//! Sans-I/O: the host passes `now` and a random event id in and POSTs the bytes to
//! [`Dsn::envelope_url`] with [`Dsn::auth_header`]. Neither host links the `sentry` SDK: one
//! builder serves both, and the tests check its output with the official Sentry types.

use crate::logging::{redact, rfc3339};
use std::collections::HashMap;

/// A parsed `SENTRY_DSN`: `{scheme}://{public_key}[:{secret}]@{host}[:{port}]/{path/}{project}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    raw: String,
    scheme: String,
    public_key: String,
    secret: Option<String>,
    /// `host[:port]`.
    authority: String,
    /// Path before the project id, with its trailing `/` (often just `/`).
    prefix: String,
    project: String,
}

impl Dsn {
    pub fn parse(dsn: &str) -> Result<Dsn, String> {
        let dsn = dsn.trim();
        let (scheme, rest) = dsn
            .split_once("://")
            .ok_or_else(|| "SENTRY_DSN: no scheme".to_string())?;
        if scheme != "http" && scheme != "https" {
            return Err("SENTRY_DSN: the scheme must be http or https".into());
        }
        let (userinfo, rest) = rest
            .split_once('@')
            .ok_or_else(|| "SENTRY_DSN: no public key".to_string())?;
        let (public_key, secret) = match userinfo.split_once(':') {
            Some((k, s)) => (k, Some(s.to_string())),
            None => (userinfo, None),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.trim_end_matches('/');
        let (prefix, project) = match path.rsplit_once('/') {
            Some((p, id)) => (format!("/{p}/"), id),
            None => ("/".to_string(), path),
        };
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !plain(public_key) || authority.is_empty() || !plain(project) {
            return Err("SENTRY_DSN: expected scheme://key@host/project".into());
        }
        Ok(Dsn {
            raw: dsn.to_string(),
            scheme: scheme.to_string(),
            public_key: public_key.to_string(),
            secret,
            authority: authority.to_string(),
            prefix,
            project: project.to_string(),
        })
    }

    /// Where envelopes are POSTed.
    pub fn envelope_url(&self) -> String {
        format!(
            "{}://{}{}api/{}/envelope/",
            self.scheme, self.authority, self.prefix, self.project
        )
    }

    /// The `X-Sentry-Auth` header's value.
    pub fn auth_header(&self, client: &str) -> String {
        let mut h = format!(
            "Sentry sentry_version=7, sentry_client={client}, sentry_key={}",
            self.public_key
        );
        if let Some(s) = &self.secret {
            h.push_str(", sentry_secret=");
            h.push_str(s);
        }
        h
    }
}

/// `ENVIRONMENT`, both hosts' one rule: dev, staging or production; unset or blank is `dev`.
pub fn environment(v: Option<&str>) -> Result<&'static str, String> {
    match v.map(str::trim) {
        None | Some("") => Ok("dev"),
        Some("dev") => Ok("dev"),
        Some("staging") => Ok("staging"),
        Some("production") => Ok("production"),
        Some(e) => Err(format!(
            "ENVIRONMENT must be dev, staging or production (got {e:?})"
        )),
    }
}

/// Who is reporting: the same on every report of a process.
#[derive(Debug, Clone)]
pub struct Origin {
    pub environment: String,
    pub release: String,
    /// `DEPLOYMENT_ID` (the replica at the fallback).
    pub server_name: String,
    /// `piano-edge/0.1.0` or `piano-fallback/0.1.0`.
    pub client: String,
}

/// Sentry's levels that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// What went wrong. `kind` is the tag operators group by (see [`kind`]).
#[derive(Debug, Clone)]
pub struct Report {
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
    /// Groups equal errors (in Sentry and in the throttle); by default kind + message.
    pub fingerprint: Option<String>,
    /// Further tags (`request_id`, `room`, `lane`, `status`, …).
    pub tags: Vec<(&'static str, String)>,
}

/// The `kind` tags.
pub mod kind {
    pub const PANIC: &str = "panic";
    pub const HTTP_5XX: &str = "http_5xx";
    pub const EXCEPTION: &str = "exception";
    pub const DEAD_LETTER: &str = "dead_letter";
    pub const CIRCUIT_OPEN: &str = "circuit_open";
}

impl Report {
    pub fn new(kind: &'static str, severity: Severity, message: impl Into<String>) -> Report {
        Report {
            kind,
            severity,
            message: message.into(),
            fingerprint: None,
            tags: Vec::new(),
        }
    }

    pub fn tag(mut self, key: &'static str, value: impl Into<String>) -> Report {
        self.tags.push((key, value.into()));
        self
    }

    pub fn fingerprint(&self) -> String {
        match &self.fingerprint {
            Some(f) => redact(f).into_owned(),
            None => format!("{}:{}", self.kind, redact(&self.message)),
        }
    }
}

/// The API's routes as templates (`{}` one segment, `*` the rest), literal ones before the
/// parameterised ones they overlap; both hosts serve these paths (README "HTTP API").
const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/mpp",
    "/api/status",
    "/api/version",
    "/.well-known/jwks.json",
    "/api/auth/guest",
    "/api/auth/register",
    "/api/auth/login",
    "/api/auth/refresh",
    "/api/auth/logout",
    "/api/users/me",
    "/api/users/{}",
    "/api/users/{}/stats",
    "/api/admin/users/{}/roles",
    "/api/admin/rooms/{}/outbox",
    "/api/rooms",
    "/api/rooms/{}",
    "/api/rooms/{}/ws",
    "/api/network/rooms",
    "/api/network/online",
    "/api/lobby/next",
    "/api/debug/panic/*",
    "/api/debug/error/*",
    "/api/debug/room/{}/panic/*",
];

/// The route template `path` belongs to (`/api/rooms/{}/ws`), or `other`: a bounded set, so
/// grouping by it cannot be multiplied by a client choosing its URLs.
pub fn route_template(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    ROUTES
        .iter()
        .find(|t| {
            let parts: Vec<&str> = t.trim_start_matches('/').split('/').collect();
            let mut i = 0;
            for part in &parts {
                if *part == "*" {
                    return true;
                }
                match segments.get(i) {
                    Some(s) if *part == "{}" && !s.is_empty() => {}
                    Some(s) if s == part => {}
                    _ => return false,
                }
                i += 1;
            }
            i == segments.len()
        })
        .copied()
        .unwrap_or("other")
}

/// Longest client path kept in a tag or a log field (characters).
pub const MAX_PATH: usize = 200;

/// `path` cut to [`MAX_PATH`] characters.
pub fn capped_path(path: &str) -> String {
    path.chars().take(MAX_PATH).collect()
}

impl Report {
    /// A server error answered to a request: one issue per kind, method, route and status
    /// (never per URL: a client chooses its URLs), the path itself a tag.
    pub fn http_5xx(kind: &'static str, method: &str, path: &str, status: u16) -> Report {
        let path = capped_path(path);
        let route = route_template(&path);
        let mut r = Report::new(
            kind,
            Severity::Error,
            format!("{method} {path} answered {status}"),
        )
        .tag("route", route)
        .tag("path", path)
        .tag("status", status.to_string());
        r.fingerprint = Some(format!("{kind}:{method} {route} {status}"));
        r
    }
}

/// The report of the test-only `/api/debug/report/{marker}` (`PIANO_TEST_ROUTES=1`): the
/// trials' sentinel, through the same throttle and sender as any other.
pub fn debug_report(marker: &str) -> Report {
    Report::new(
        kind::EXCEPTION,
        Severity::Error,
        format!("debug report requested {marker}"),
    )
}

/// Longest message sent (bytes): a report is a pointer to the logs, not a copy of them.
const MAX_MESSAGE: usize = 2048;

/// The envelope (header, one `event` item) as Sentry's ingestion endpoint expects it.
/// `suppressed` is how many reports the throttle held back since the last one sent.
pub fn envelope(
    dsn: &Dsn,
    origin: &Origin,
    report: &Report,
    event_id: [u8; 16],
    now_ms: u64,
    suppressed: u64,
) -> Vec<u8> {
    let id = crate::hex::encode(&event_id);
    let mut message = redact(&report.message).into_owned();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let mut tags = serde_json::Map::new();
    tags.insert("kind".into(), report.kind.into());
    for (k, v) in &report.tags {
        tags.insert((*k).into(), redact(v).into_owned().into());
    }
    let event = serde_json::json!({
        "event_id": id,
        "timestamp": now_ms as f64 / 1000.0,
        "platform": "native",
        "level": report.severity.as_str(),
        "logger": "piano",
        "server_name": origin.server_name,
        "release": origin.release,
        "environment": origin.environment,
        "message": message,
        "exception": { "values": [ { "type": report.kind, "value": message } ] },
        "tags": tags,
        "fingerprint": [report.fingerprint()],
        "extra": { "suppressed_before": suppressed },
    });
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    let header = serde_json::json!({
        "event_id": id,
        "dsn": dsn.raw,
        "sent_at": rfc3339(now_ms),
    });
    let item = serde_json::json!({ "type": "event", "length": payload.len() });
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend(serde_json::to_vec(&item).unwrap_or_default());
    out.push(b'\n');
    out.extend(payload);
    out.push(b'\n');
    out
}

/// Characters of a fingerprint the throttle remembers.
const MAX_FINGERPRINT: usize = 200;

/// The throttle's numbers. The bound: within any `T` ms a process (an isolate at the edge)
/// sends at most `burst + T / refill_ms` reports, and one fingerprint at most once per
/// `dedup_ms`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub burst: u32,
    pub refill_ms: u64,
    pub dedup_ms: u64,
    /// Fingerprints remembered; beyond it the oldest is forgotten.
    pub remembered: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            burst: 10,
            refill_ms: 6_000,
            dedup_ms: 60_000,
            remembered: 256,
        }
    }
}

/// Deduplication within a window plus a token bucket. The host asks [`Reporter::admit`] before
/// building an envelope, and sends only when it answers `Some`. Serializable: the edge keeps it
/// across a restart of its wasm instance (a panic), so panics cannot reset the budget.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Reporter {
    policy: Policy,
    tokens: u32,
    refilled_at: u64,
    seen: HashMap<String, u64>,
    suppressed: u64,
}

impl Reporter {
    pub fn new(policy: Policy, now_ms: u64) -> Reporter {
        Reporter {
            policy,
            tokens: policy.burst,
            refilled_at: now_ms,
            seen: HashMap::new(),
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` if this report may be sent now (with the number held back since the
    /// last one sent), `None` if it is a duplicate or over budget.
    pub fn admit(&mut self, fingerprint: &str, now_ms: u64) -> Option<u64> {
        let p = self.policy;
        if p.refill_ms > 0 && now_ms > self.refilled_at {
            let add = (now_ms - self.refilled_at) / p.refill_ms;
            if add > 0 {
                self.tokens = (u64::from(self.tokens) + add).min(u64::from(p.burst)) as u32;
                self.refilled_at += add * p.refill_ms;
            }
        }
        // A fingerprint is kept bounded: a hostile message cannot grow the map's keys. The same
        // cut key serves lookup and insert, or a long fingerprint would never be deduplicated.
        let key: String = fingerprint.chars().take(MAX_FINGERPRINT).collect();
        if let Some(&at) = self.seen.get(&key)
            && now_ms.saturating_sub(at) < p.dedup_ms
        {
            self.suppressed += 1;
            return None;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        if self.seen.len() >= p.remembered {
            self.seen
                .retain(|_, at| now_ms.saturating_sub(*at) < p.dedup_ms);
            if self.seen.len() >= p.remembered
                && let Some(oldest) = self.seen.iter().min_by_key(|e| *e.1).map(|e| e.0.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key, now_ms);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_parts() {
        let d = Dsn::parse("https://abc123@o1.ingest.sentry.io/42").unwrap();
        assert_eq!(
            d.envelope_url(),
            "https://o1.ingest.sentry.io/api/42/envelope/"
        );
        assert!(d.auth_header("x/1").contains("sentry_key=abc123"));
        let d = Dsn::parse("http://k:s@127.0.0.1:9000/glitch/7").unwrap();
        assert_eq!(
            d.envelope_url(),
            "http://127.0.0.1:9000/glitch/api/7/envelope/"
        );
        assert!(d.auth_header("x").ends_with("sentry_secret=s"));
        assert!(Dsn::parse("ftp://k@h/1").is_err());
        assert!(Dsn::parse("https://h/1").is_err());
        assert!(Dsn::parse("https://k@h/").is_err());
    }

    #[test]
    fn envelope_lines() {
        let d = Dsn::parse("http://k@h/1").unwrap();
        let o = Origin {
            environment: "dev".into(),
            release: "0.1.0".into(),
            server_name: "r1".into(),
            client: "t".into(),
        };
        let r = Report::new(
            kind::PANIC,
            Severity::Fatal,
            "boom eyJhbGciOi.eyJzdWIiOiJh.c2ln",
        )
        .tag("request_id", "r-1");
        let bytes = envelope(&d, &o, &r, [0xab; 16], 1_000, 3);
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let item: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(item["length"], lines[2].len());
        let ev: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(ev["tags"]["kind"], "panic");
        assert_eq!(ev["server_name"], "r1");
        assert_eq!(ev["extra"]["suppressed_before"], 3);
        assert!(!lines[2].contains("eyJzdWIiOiJh"));
    }

    #[test]
    fn duplicates_are_sent_once_per_window() {
        let mut r = Reporter::new(Policy::default(), 0);
        assert_eq!(r.admit("a", 0), Some(0));
        assert_eq!(r.admit("a", 1_000), None);
        assert_eq!(r.admit("a", 60_000), Some(1));
    }

    #[test]
    fn environments_are_three_names() {
        assert_eq!(environment(None), Ok("dev"));
        assert_eq!(environment(Some(" ")), Ok("dev"));
        assert_eq!(environment(Some("production ")), Ok("production"));
        assert!(environment(Some("prod")).is_err());
    }

    #[test]
    fn routes_are_templates() {
        assert_eq!(route_template("/api/rooms/lobby/ws"), "/api/rooms/{}/ws");
        assert_eq!(route_template("/api/users/me"), "/api/users/me");
        assert_eq!(route_template("/api/users/u1/stats"), "/api/users/{}/stats");
        assert_eq!(route_template("/api/debug/error/a/b"), "/api/debug/error/*");
        assert_eq!(route_template("/api/rooms//ws"), "other");
        assert_eq!(route_template("/x/y"), "other");
    }

    #[test]
    fn server_errors_group_by_route_not_url() {
        let a = Report::http_5xx(kind::HTTP_5XX, "GET", "/api/rooms/a1/ws", 500);
        let b = Report::http_5xx(kind::HTTP_5XX, "GET", "/api/rooms/b2/ws", 500);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(
            a.fingerprint(),
            Report::http_5xx(kind::HTTP_5XX, "GET", "/api/rooms/a1/ws", 502).fingerprint()
        );
        let mut r = Reporter::new(Policy::default(), 0);
        assert!(r.admit(&a.fingerprint(), 0).is_some());
        assert!(r.admit(&b.fingerprint(), 1).is_none());
        let long = Report::http_5xx(kind::HTTP_5XX, "GET", &"/x".repeat(500), 500);
        let path = long.tags.iter().find(|t| t.0 == "path").unwrap();
        assert_eq!(path.1.chars().count(), MAX_PATH);
    }

    #[test]
    fn a_long_fingerprint_is_deduplicated() {
        let mut r = Reporter::new(Policy::default(), 0);
        let long = "x".repeat(300);
        assert_eq!(r.admit(&long, 0), Some(0));
        assert_eq!(r.admit(&long, 1_000), None);
        assert!(r.seen.keys().all(|k| k.chars().count() <= MAX_FINGERPRINT));
    }

    #[test]
    fn a_storm_is_bounded() {
        let p = Policy::default();
        let mut r = Reporter::new(p, 0);
        // 1,000 distinct errors within 10 s: the burst plus one refill.
        let sent = (0..1000u64)
            .filter(|i| r.admit(&format!("e{i}"), i * 10).is_some())
            .count() as u64;
        assert_eq!(sent, u64::from(p.burst) + 10_000 / p.refill_ms);
        // Over an hour, never more than the bound.
        let mut r = Reporter::new(p, 0);
        let sent = (0..100_000u64)
            .filter(|i| r.admit(&format!("e{i}"), i * 36).is_some())
            .count() as u64;
        assert!(sent <= u64::from(p.burst) + 3_600_000 / p.refill_ms);
        assert!(r.seen.len() <= p.remembered);
    }
}
