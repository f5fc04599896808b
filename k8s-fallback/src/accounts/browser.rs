//! Browser sessions in cookies (the rules are `piano_core::oauth::cookies`): what a request
//! says about where it comes from, and the answers that set or clear the session cookies.

use crate::config::Config;
use crate::json::{json, with_header};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use piano_core::oauth::cookies::{self, REFRESH_COOKIE, RequestSite};

/// Where a request comes from, for the cookie variants of the auth endpoints and the sign-in
/// flow through providers.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    /// `PUBLIC_URL`, or the request's own origin (development).
    pub own_origin: String,
    pub origin: Option<String>,
    pub sec_fetch_site: Option<String>,
    /// `x-csrf-token`.
    pub csrf: Option<String>,
    /// The `Cookie` header.
    pub cookie: Option<String>,
    /// `Accept`.
    pub accept: Option<String>,
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(4096).collect())
}

impl Browser {
    /// `from_proxy`: the peer is one of `TRUSTED_PROXIES`, whose `x-forwarded-proto` tells the
    /// scheme the player used.
    pub fn of(cfg: &Config, headers: &HeaderMap, from_proxy: bool) -> Browser {
        let own_origin = cfg.public_url.clone().unwrap_or_else(|| {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| {
                    !h.is_empty()
                        && h.len() <= 255
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                })
                // Matches no browser's Origin: cookie requests are refused.
                .unwrap_or("invalid.invalid");
            let https = from_proxy
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
            format!("{}://{host}", if https { "https" } else { "http" })
        });
        Browser {
            own_origin,
            origin: header_text(headers, "origin"),
            sec_fetch_site: header_text(headers, "sec-fetch-site"),
            csrf: header_text(headers, cookies::CSRF_HEADER),
            cookie: header_text(headers, "cookie"),
            accept: header_text(headers, "accept"),
        }
    }

    pub fn site(&self) -> RequestSite<'_> {
        RequestSite {
            origin: self.origin.as_deref(),
            sec_fetch_site: self.sec_fetch_site.as_deref(),
            csrf_header: self.csrf.as_deref(),
        }
    }

    /// Whether cookies get `Secure` (everywhere but plain HTTP on loopback).
    pub fn secure(&self) -> bool {
        cookies::secure(&self.own_origin)
    }

    /// The session cookie's refresh token, if the request has one.
    pub fn refresh_cookie(&self) -> Option<&str> {
        self.cookie
            .as_deref()
            .and_then(|c| cookies::get(c, REFRESH_COOKIE))
            .filter(|v| !v.is_empty())
    }
}

/// Adds `Set-Cookie` headers.
pub fn with_cookies(mut resp: Response, set: impl IntoIterator<Item = String>) -> Response {
    for c in set {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// A session's answer as a browser gets it: the refresh token in its `HttpOnly` cookie rather
/// than in the body, the CSRF token in the body and in its cookie.
pub(super) fn cookie_session(
    cfg: &Config,
    browser: &Browser,
    mut body: serde_json::Value,
    status: u16,
) -> Response {
    let refresh = body
        .as_object_mut()
        .and_then(|o| o.remove("refresh_token"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    body["csrf_token"] = cookies::csrf_token(&refresh).into();
    let resp = with_header(json(status, &body), "cache-control", "no-store");
    with_cookies(
        resp,
        cookies::session_cookies(&refresh, cfg.session_ttl_secs, browser.secure()),
    )
}
