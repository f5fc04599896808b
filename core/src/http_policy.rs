//! HTTP policy shared by both hosts: the security headers every response carries, CORS for
//! configured origins only, and the opaque network key of a client address.
//!
//! The edge serves the web client as Workers static assets before the worker runs; those get
//! the same headers from `web/static/_headers` (a test below keeps that file equal to
//! [`SECURITY_HEADERS`]).

/// The web client's Content-Security-Policy: everything from the page's own origin, the room
/// WebSocket (`ws:`/`wss:` to any host, as the page may be served behind another name), no
/// plugins, no framing, no `<base>` rewriting. Styles set from script (`element.style`) are not
/// inline styles and need no `'unsafe-inline'`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Headers on every response (API and static files).
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// Methods and request headers a configured origin may use.
pub const CORS_ALLOW_METHODS: &str = "GET, POST, PUT, OPTIONS";
pub const CORS_ALLOW_HEADERS: &str = "authorization, content-type";
/// How long browsers may cache a preflight answer (seconds).
pub const CORS_MAX_AGE_SECS: u32 = 600;

/// The origins listed in `CORS_ORIGINS` (comma- or space-separated, exact `scheme://host[:port]`;
/// none by default). `*` is not honoured: tokens travel in headers, and a wildcard would let
/// any page use a visitor's token.
pub fn parse_origins(setting: Option<&str>) -> Vec<String> {
    setting
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty() && *o != "*" && o.contains("://"))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The `Access-Control-Allow-Origin` value for a request's `Origin`: the origin itself when it
/// is listed, else nothing (the browser then refuses the cross-origin read).
pub fn allowed_origin<'a>(origins: &[String], origin: Option<&'a str>) -> Option<&'a str> {
    let origin = origin?;
    origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
        .then_some(origin)
}

/// An opaque key for a client's network: a short hash of its IPv4 address, or of the /64 of an
/// IPv6 address (one subscriber usually holds a whole /64). Unparseable input is hashed as is.
/// Used for per-network socket caps and bans; never shown to clients.
pub fn network_key(ip: &str) -> String {
    use sha2::{Digest, Sha256};
    let ip = ip.trim();
    let canonical = match ipv6_prefix(ip) {
        Some(prefix) => prefix,
        None => ip.strip_prefix("::ffff:").unwrap_or(ip).to_owned(),
    };
    let digest = Sha256::digest(format!("piano-network:{canonical}").as_bytes());
    crate::hex::encode(&digest[..12])
}

/// The /64 of an IPv6 address as `a:b:c:d::/64` (`None` for IPv4, an IPv4-mapped address or
/// anything unparseable). Hand-rolled rather than `std::net` to keep the parser out of the
/// worker's wasm.
pub fn ipv6_prefix(ip: &str) -> Option<String> {
    if !ip.contains(':') || ip.contains('.') {
        return None;
    }
    let (head, tail) = match ip.split_once("::") {
        Some((h, t)) => (h, Some(t)),
        None => (ip, None),
    };
    let parse = |part: &str| -> Option<Vec<u16>> {
        if part.is_empty() {
            return Some(Vec::new());
        }
        part.split(':')
            .map(|g| {
                (g.len() <= 4)
                    .then(|| u16::from_str_radix(g, 16).ok())
                    .flatten()
            })
            .collect()
    };
    let head = parse(head)?;
    let tail = match tail {
        Some(t) => parse(t)?,
        None => Vec::new(),
    };
    let missing = 8usize.checked_sub(head.len() + tail.len())?;
    if tail.is_empty() && missing > 0 && !ip.contains("::") {
        return None;
    }
    let groups: Vec<u16> = head
        .into_iter()
        .chain(std::iter::repeat_n(0, missing))
        .chain(tail)
        .collect();
    Some(format!(
        "{:x}:{:x}:{:x}:{:x}::/64",
        groups[0], groups[1], groups[2], groups[3]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_and_never_wildcard() {
        let origins = parse_origins(Some(
            "https://piano.example, http://localhost:5173/ *  nope",
        ));
        assert_eq!(origins, ["https://piano.example", "http://localhost:5173"]);
        assert_eq!(
            allowed_origin(&origins, Some("https://piano.example")),
            Some("https://piano.example")
        );
        assert_eq!(allowed_origin(&origins, Some("https://evil.example")), None);
        assert_eq!(allowed_origin(&origins, None), None);
        assert!(parse_origins(None).is_empty());
        assert!(parse_origins(Some("*")).is_empty());
    }

    #[test]
    fn network_keys_group_ipv6_by_64_and_hide_the_address() {
        let a = network_key("2001:db8:1:2:aaaa::1");
        assert_eq!(a, network_key("2001:db8:1:2:bbbb::9"));
        assert_ne!(a, network_key("2001:db8:1:3::1"));
        assert_eq!(
            network_key("203.0.113.7"),
            network_key("::ffff:203.0.113.7")
        );
        assert_ne!(network_key("203.0.113.7"), network_key("203.0.113.8"));
        assert!(!network_key("203.0.113.7").contains("203"));
        assert_eq!(network_key("203.0.113.7").len(), 24);
        assert_eq!(network_key("2001:db8:0:0::1"), network_key("2001:0db8::2"));
        assert_eq!(
            ipv6_prefix("2001:db8:1:2:3:4:5:6").as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(ipv6_prefix("::1").as_deref(), Some("0:0:0:0::/64"));
        assert_eq!(ipv6_prefix("1:2:3"), None);
        assert_eq!(ipv6_prefix("203.0.113.7"), None);
    }

    #[test]
    fn static_headers_file_matches_the_policy() {
        // The edge's static assets get their headers from this file (Workers `_headers`).
        let file = include_str!("../../web/static/_headers");
        for (name, value) in SECURITY_HEADERS {
            let line = format!("{name}: {value}");
            assert!(
                file.lines().any(|l| l.trim().eq_ignore_ascii_case(&line)),
                "web/static/_headers lacks `{line}`"
            );
        }
    }
}
