//! Security headers on every worker response and CORS for the origins in `CORS_ORIGINS`
//! (policy in `piano_core::http_policy`, shared with the fallback). Static files get the same
//! headers from `web/static/_headers`.

use piano_core::http_policy::{
    CORS_ALLOW_HEADERS, CORS_ALLOW_METHODS, CORS_MAX_AGE_SECS, SECURITY_HEADERS, allowed_origin,
    parse_origins,
};
use worker::*;

/// The configured origins (none by default).
fn origins(env: &Env) -> Vec<String> {
    parse_origins(piano_durable_objects::setting(env, "CORS_ORIGINS").as_deref())
}

/// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`): 204, with the allow
/// headers only for a configured origin.
pub fn preflight(req: &Request, env: &Env) -> Result<Option<Response>> {
    if req.method() != Method::Options
        || req
            .headers()
            .get("access-control-request-method")?
            .is_none()
    {
        return Ok(None);
    }
    let mut resp = Response::empty()?.with_status(204);
    let origin = req.headers().get("origin")?;
    if allowed_origin(&origins(env), origin.as_deref()).is_some() {
        let h = resp.headers_mut();
        h.set("access-control-allow-methods", CORS_ALLOW_METHODS)?;
        h.set("access-control-allow-headers", CORS_ALLOW_HEADERS)?;
        h.set("access-control-max-age", &CORS_MAX_AGE_SECS.to_string())?;
    }
    Ok(Some(resp))
}

/// Adds the security headers (and CORS for a configured origin) to a response. WebSocket
/// upgrades (101) pass untouched. Every other answer is copied into a fresh response first:
/// one relayed from a Durable Object has immutable headers, and setting one of those throws a
/// JS exception that workers-rs does not turn into an `Err` (it took the isolate down).
pub async fn finish(mut resp: Response, origin: Option<&str>, env: &Env) -> Result<Response> {
    if resp.status_code() == 101 {
        return Ok(resp);
    }
    let status = resp.status_code();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?;
    let mut resp = Response::from_bytes(body)?.with_status(status);
    for (k, v) in headers.entries() {
        // A response may set several cookies (each its own `set-cookie` entry).
        if k.eq_ignore_ascii_case("set-cookie") {
            resp.headers_mut().append(&k, &v)?;
        } else {
            resp.headers_mut().set(&k, &v)?;
        }
    }
    let h = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.set(name, value)?;
    }
    if let Some(o) = allowed_origin(&origins(env), origin) {
        h.set("access-control-allow-origin", o)?;
        h.set("vary", "Origin")?;
        h.set("access-control-expose-headers", "retry-after")?;
    }
    Ok(resp)
}
