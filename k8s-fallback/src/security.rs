//! Security headers on every response and CORS for configured origins only (SPEC "HTTP"), as a
//! layer around the whole router, so no path (API, static files, errors) can miss them. The
//! policy itself (headers, CSP, origins) is the core's `piano_core::http_policy`, shared with
//! the edge.
//!
//! - `Content-Security-Policy` for the web client (same-origin scripts, styles and
//!   connections, WebSockets, no framing), `X-Content-Type-Options: nosniff`,
//!   `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY`.
//! - CORS: a request whose `Origin` is in `CORS_ORIGINS` gets `Access-Control-Allow-Origin`
//!   (that origin, never `*`) and preflights (`OPTIONS`) are answered 204; any other origin
//!   gets no CORS headers at all (the browser then refuses to hand it the answer). Tokens are
//!   bearer headers, never cookies, so credentials are not allowed.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

use piano_core::http_policy::{
    CORS_ALLOW_HEADERS, CORS_ALLOW_METHODS, CORS_MAX_AGE_SECS, SECURITY_HEADERS, allowed_origin,
};

/// The configured origins (`CORS_ORIGINS`, without trailing slashes).
#[derive(Clone, Default)]
pub struct Policy {
    pub cors_origins: Arc<Vec<String>>,
}

impl Policy {
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        allowed_origin(&self.cors_origins, origin.to_str().ok()).map(|_| origin.clone())
    }
}

/// The layer: answers allowed preflights itself, and decorates every other response.
pub async fn layer(State(policy): State<Policy>, req: Request, next: Next) -> Response {
    let origin = policy.allowed_origin(req.headers());
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = match (&origin, preflight) {
        (Some(_), true) => {
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(CORS_ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(CORS_MAX_AGE_SECS),
            );
            r
        }
        _ => next.run(req).await,
    };
    let h = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    if !policy.cors_origins.is_empty() {
        // The answer depends on the Origin: caches must not hand one origin's to another.
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}
