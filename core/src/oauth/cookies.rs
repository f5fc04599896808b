//! The browser's session in cookies. The refresh token lives in `piano_refresh` (`HttpOnly`:
//! no page script reads it), sent only to `/api/auth`; the CSRF token in `piano_csrf`, which the
//! page reads and echoes as `x-csrf-token`. A cookie-authenticated request that changes state
//! must come from our own origin and carry that token ([`check_cookie_request`]).

use super::OAuthError;
use sha2::{Digest, Sha256};

pub const REFRESH_COOKIE: &str = "piano_refresh";
pub const REFRESH_PATH: &str = "/api/auth";
pub const CSRF_COOKIE: &str = "piano_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A `Set-Cookie` value. `max_age_secs` 0 deletes it.
pub fn set(
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    http_only: bool,
    secure: bool,
    max_age_secs: u64,
) -> String {
    let mut c =
        format!("{name}={value}; Path={path}; Max-Age={max_age_secs}; SameSite={same_site}");
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// One cookie of a `Cookie` header (the first of that name).
pub fn get<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// `Secure` everywhere but plain HTTP on loopback (development): a browser would drop a
/// `Secure` cookie there in some cases, and no network sees loopback traffic.
pub fn secure(origin: &str) -> bool {
    match origin.strip_prefix("http://") {
        Some(authority) => !super::config::is_loopback_authority(authority.trim_end_matches('/')),
        None => true,
    }
}

/// The CSRF token of a session: a hash of its current refresh token, so it proves knowledge of
/// the session to the server without revealing it to the page, and changes at each refresh.
pub fn csrf_token(refresh_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"piano-csrf-v1:");
    h.update(refresh_token.as_bytes());
    let mut t = super::b64(&h.finalize());
    t.truncate(32);
    t
}

/// The cookies a new or refreshed browser session sets.
pub fn session_cookies(refresh_token: &str, max_age_secs: u64, secure: bool) -> [String; 2] {
    [
        set(
            REFRESH_COOKIE,
            refresh_token,
            REFRESH_PATH,
            "Lax",
            true,
            secure,
            max_age_secs,
        ),
        set(
            CSRF_COOKIE,
            &csrf_token(refresh_token),
            "/",
            "Strict",
            false,
            secure,
            max_age_secs,
        ),
    ]
}

/// The cookies that end it (logout, an ended session).
pub fn clear_session_cookies(secure: bool) -> [String; 2] {
    [
        set(REFRESH_COOKIE, "", REFRESH_PATH, "Lax", true, secure, 0),
        set(CSRF_COOKIE, "", "/", "Strict", false, secure, 0),
    ]
}

/// Whether a refused cookie refresh or logout also clears the cookies: only when the session
/// itself is refused (401). A store that cannot be reached (5xx) leaves the session alive on
/// the server, so the browser keeps its cookie and tries again.
pub fn clears_session(status: u16) -> bool {
    status == 401
}

/// What a request tells about where it came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSite<'a> {
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    pub csrf_header: Option<&'a str>,
}

/// Whether a request comes from `own_origin` (`PUBLIC_URL`, or the request's own origin):
/// `Origin` must be present and equal, and the browser must not call it cross-site.
pub fn same_origin(site: &RequestSite<'_>, own_origin: &str) -> Result<(), OAuthError> {
    if site
        .sec_fetch_site
        .is_some_and(|s| s.eq_ignore_ascii_case("cross-site"))
    {
        return Err(OAuthError::CrossSite);
    }
    match site.origin {
        Some(o)
            if o.trim_end_matches('/')
                .eq_ignore_ascii_case(own_origin.trim_end_matches('/')) =>
        {
            Ok(())
        }
        _ => Err(OAuthError::CrossSite),
    }
}

/// A cookie-authenticated refresh or logout: same origin, and the CSRF token of the session the
/// cookie holds.
pub fn check_cookie_request(
    site: &RequestSite<'_>,
    own_origin: &str,
    refresh_token: &str,
) -> Result<(), OAuthError> {
    same_origin(site, own_origin)?;
    let expected = csrf_token(refresh_token);
    match site.csrf_header {
        Some(h)
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                h.trim().as_bytes(),
                expected.as_bytes(),
            )) =>
        {
            Ok(())
        }
        _ => Err(OAuthError::CrossSite),
    }
}

/// The origin (`scheme://host[:port]`) of an absolute URL.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_are_http_only_scoped_and_secure_off_loopback() {
        let [r, c] = session_cookies("alice.sid.secret", 3600, true);
        assert_eq!(
            r,
            "piano_refresh=alice.sid.secret; Path=/api/auth; Max-Age=3600; SameSite=Lax; HttpOnly; Secure"
        );
        assert!(
            c.starts_with("piano_csrf=")
                && !c.contains("HttpOnly")
                && c.contains("SameSite=Strict")
        );
        assert!(!c.contains("alice.sid.secret"));
        assert!(clear_session_cookies(false)[0].contains("Max-Age=0"));
        assert!(clears_session(401) && !clears_session(503) && !clears_session(204));
        assert!(secure("https://piano.example"));
        assert!(secure("http://piano.example"));
        assert!(!secure("http://127.0.0.1:8787"));
        assert!(!secure("http://localhost:8787"));
        assert!(!secure("http://[::1]:8787"));
        assert!(secure("http://localhost.evil.example"));
    }

    #[test]
    fn cookie_header_is_read_by_name() {
        let h = "a=1; piano_refresh=u.s.x; piano_refresh_old=z";
        assert_eq!(get(h, "piano_refresh"), Some("u.s.x"));
        assert_eq!(get(h, "b"), None);
        assert_eq!(
            origin_of("http://127.0.0.1:99/a?b").as_deref(),
            Some("http://127.0.0.1:99")
        );
    }

    #[test]
    fn cookie_requests_need_our_origin_and_the_csrf_token() {
        let own = "http://127.0.0.1:8787";
        let token = "u.s.x";
        let good = RequestSite {
            origin: Some(own),
            sec_fetch_site: Some("same-origin"),
            csrf_header: Some(&csrf_token(token)),
        };
        assert!(check_cookie_request(&good, own, token).is_ok());
        let cases = [
            RequestSite {
                origin: Some("https://evil.example"),
                ..good
            },
            RequestSite {
                origin: None,
                ..good
            },
            RequestSite {
                sec_fetch_site: Some("cross-site"),
                ..good
            },
            RequestSite {
                csrf_header: None,
                ..good
            },
            RequestSite {
                csrf_header: Some("x"),
                ..good
            },
        ];
        for bad in cases {
            assert_eq!(
                check_cookie_request(&bad, own, token),
                Err(OAuthError::CrossSite),
                "{bad:?}"
            );
        }
        // The token of another session does not do.
        assert!(check_cookie_request(&good, own, "u.s.y").is_err());
    }
}
