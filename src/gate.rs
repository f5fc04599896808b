//! In front of the room routes: Unicode NFC for room names (the JS runtime's `normalize`, so
//! the wasm carries no normalisation tables) and the per-IP WebSocket upgrade rate.
//!
//! The upgrade rate is the edge's "per IP across the deployment" measure: a Limiter object per
//! client IP (`CF-Connecting-IP`) counts upgrades in a sliding minute (`WS_UPGRADE_RATE_PER_MINUTE`,
//! default three per auth request allowed, `3 × AUTH_RATE_LIMIT_PER_MINUTE` = 30: each token a
//! client can get is worth a few sockets); beyond it the upgrade gets 429 `rate_limited` with
//! `Retry-After`. Sockets per
//! user and per network inside one room are the room's own caps (`Room::admit_connection`).

use piano_core::names::{percent_decode, percent_encode};
use piano_durable_objects::json_error;
use worker::*;

/// Default upgrades per client IP per minute, per auth request allowed per minute.
pub const WS_UPGRADES_PER_AUTH_REQUEST: usize = 3;

/// The room name of a path segment in NFC, percent-encoded again for the room routes (which
/// decode and validate it). A segment that does not decode is passed through unchanged (the
/// route answers 400).
pub fn nfc_segment(raw: &str) -> String {
    match percent_decode(raw) {
        Some(name) if !name.is_ascii() => {
            let normalized: String = worker::js_sys::JsString::from(name.as_str())
                .normalize("NFC")
                .into();
            percent_encode(&normalized)
        }
        _ => raw.to_owned(),
    }
}

fn upgrades_per_minute(env: &Env) -> usize {
    let number = |name: &str| {
        piano_durable_objects::setting(env, name)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
    };
    number("WS_UPGRADE_RATE_PER_MINUTE").unwrap_or_else(|| {
        number("AUTH_RATE_LIMIT_PER_MINUTE")
            .unwrap_or(crate::config::DEFAULT_AUTH_RATE_LIMIT)
            .saturating_mul(WS_UPGRADES_PER_AUTH_REQUEST)
    })
}

/// `Some(429)` when this client IP opened too many WebSockets this minute.
pub async fn upgrade_limited(req: &Request, env: &Env) -> Result<Option<Response>> {
    let ip = req
        .headers()
        .get("cf-connecting-ip")?
        .unwrap_or_else(|| "unknown".into());
    let limit = upgrades_per_minute(env);
    let Some(retry_after_ms) =
        crate::accounts::limiter_hit(env, &format!("ws:{ip}"), limit).await?
    else {
        return Ok(None);
    };
    let secs = retry_after_ms.div_ceil(1000).max(1);
    let mut resp = json_error(
        429,
        "rate_limited",
        &format!("too many WebSocket connections from your address: try again in {secs} s"),
    )?;
    resp.headers_mut().set("retry-after", &secs.to_string())?;
    Ok(Some(resp))
}
