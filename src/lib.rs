//! The stateless edge worker: the front door of every deployment on Cloudflare.
//!
//! It routes requests, issues and verifies Ed25519 JWTs, serves the REST API, and forwards
//! WebSocket upgrades to the Room Durable Object named by the room (docs/architecture.md §3). The browser
//! client is served from `web/dist` as static assets before the worker runs; the worker gets
//! every request that matches no file. No state lives here beyond per-isolate caches of parsed
//! keys; everything a room knows lives in its objects.
//!
//! Layout:
//! - this file: the `fetch` entry point and the router;
//! - [`config`]: settings from vars and secrets (signing key, issuer, audience, token lifetime);
//! - [`auth`]: guest tokens, JWKS, and extracting/verifying tokens (sessions included);
//! - [`accounts`]: member accounts (register, login, refresh, logout), profiles, roles, and the
//!   per-IP rate limit of the auth endpoints;
//! - [`oauth`]: signing in through Discord and OpenID Connect providers, linked identities;
//!   [`provider`] talks to the providers (fetch with a timeout, discovery and keys cached,
//!   ID token signatures through WebCrypto);
//! - [`metrics`]: `GET /metrics` (behind `METRICS_TOKEN`) and `GET /api/status`, read from the
//!   metrics aggregator, and this isolate's own counters;
//! - [`mpp`]: `GET /mpp`, the Multiplayer Piano entry (a relay to the rooms' objects);
//! - [`rooms`]: room routes (`/api/rooms`, `/api/rooms/{name}/ws`, `/api/rooms/{name}`,
//!   `/api/lobby/next`);
//! - [`shared`]: what deployments sharing one Redis see together (`/api/network/rooms`,
//!   `/api/network/online`), the shared rate counters, and `/healthz`'s backend report.
//!
//! The Durable Object classes are re-exported here so the single wasm module exports them.

mod accounts;
mod auth;
mod config;
mod gate;
mod metrics;
mod mpp;
mod oauth;
mod policy;
mod provider;
mod rooms;
mod shared;

use piano_core::report::{Report, kind};
pub use piano_durable_objects::Room;
pub use piano_durable_objects::account::Account;
use piano_durable_objects::json_error;
pub use piano_durable_objects::limiter::Limiter;
pub use piano_durable_objects::lobby::Lobby;
use piano_durable_objects::log;
use worker::*;

/// Once per instance: a panic's message goes to the logs, and its report to the next request
/// (`log::on_panic`). Without it a panic (which aborts: the runtime then starts a new instance
/// of the module, and requests in flight on the old one fail) would leave no trace.
#[event(start)]
fn start() {
    std::panic::set_hook(Box::new(log::on_panic));
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    log::init(&env);
    if let Some(flush) = log::flush_panics() {
        ctx.wait_until(flush);
    }
    let started = Date::now().as_millis();
    let request_id = request_id(&req);
    let origin = req.headers().get("origin").ok().flatten();
    let (method, path) = (req.method(), req.path());
    let resp = match policy::preflight(&req, &env) {
        Ok(Some(resp)) => Ok(resp),
        _ => route(req, &env, &request_id).await,
    };
    let took = Date::now().as_millis().saturating_sub(started);
    let report = |r: Report| {
        if let Some(send) = log::report(r.tag("request_id", request_id.clone())) {
            ctx.wait_until(send);
        }
    };
    if took >= piano_core::logging::SLOW_MS {
        log::warn(piano_core::logging::event::SLOW_OP)
            .request_id(&request_id)
            .duration_ms(took)
            .field("path", &path)
            .msg("slow request")
            .emit();
    }
    let resp = match resp {
        Ok(resp) => {
            let status = resp.status_code();
            // The one rule for both hosts: which answers are logged, which are reported.
            let outcome = piano_core::logging::classify(status);
            if let Some((level, name)) = outcome.log {
                log::at(level, name)
                    .request_id(&request_id)
                    .duration_ms(took)
                    .field("status", status)
                    .field("method", &method)
                    .field("path", &path)
                    .msg(if outcome.report {
                        "server error"
                    } else {
                        "refused"
                    })
                    .emit();
            }
            if outcome.report {
                report(Report::http_5xx(
                    kind::HTTP_5XX,
                    method.as_ref(),
                    &path,
                    status,
                ));
            }
            resp
        }
        Err(e) => {
            log::error(piano_core::logging::event::HTTP_ERROR)
                .request_id(&request_id)
                .duration_ms(took)
                .error(&e)
                .field("status", 500)
                .field("method", &method)
                .field("path", &path)
                .emit();
            let mut r = Report::http_5xx(kind::EXCEPTION, method.as_ref(), &path, 500);
            r.message = format!("{method} {}: {e}", piano_core::report::capped_path(&path));
            report(r);
            json_error(500, "internal", "internal error")?
        }
    };
    metrics::count(&path, resp.status_code());
    metrics::push_in_background(&env, &ctx);
    let mut resp = policy::finish(resp, origin.as_deref(), &env).await?;
    // The id the logs and reports carry, for a user's bug report (a 101's headers are fixed).
    if resp.status_code() != 101 {
        resp.headers_mut().set("x-request-id", &request_id)?;
    }
    Ok(resp)
}

/// Cloudflare's `cf-ray` (checked: clients are hostile), else a random id (`wrangler dev`).
fn request_id(req: &Request) -> String {
    match req.headers().get("cf-ray").ok().flatten() {
        Some(ray) if piano_core::logging::valid_request_id(&ray) => ray,
        _ => {
            let mut b = [0u8; 8];
            let _ = getrandom::getrandom(&mut b);
            piano_core::hex::encode(&b)
        }
    }
}

async fn route(req: Request, env: &Env, rid: &str) -> Result<Response> {
    let path = req.path();
    let method = req.method();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::Get, ["healthz"]) => shared::health(env),
        (Method::Get, ["metrics"]) => metrics::scrape(&req, env).await,
        (Method::Get, ["api", "status"]) => metrics::status(env).await,
        (Method::Get, ["api", "version"]) => Response::from_json(&serde_json::json!({
            "name": env!("CARGO_PKG_NAME"),
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": piano_core::limits::PROTOCOL_VERSION,
            "subprotocol": piano_core::limits::SUBPROTOCOL,
        })),
        (Method::Get, [".well-known", "jwks.json"]) => auth::jwks(env).await,
        (Method::Post, ["api", "auth", "guest"]) => auth::guest(req, env).await,
        (Method::Post, ["api", "auth", "register"]) => accounts::register(req, env).await,
        (Method::Post, ["api", "auth", "login"]) => accounts::login(req, env).await,
        (Method::Post, ["api", "auth", "refresh"]) => accounts::refresh(req, env).await,
        (Method::Post, ["api", "auth", "logout"]) => accounts::logout(req, env).await,
        (Method::Get, ["api", "auth", "providers"]) => oauth::list(env, rid),
        (Method::Get, ["api", "auth", "oauth", id, "start"]) => {
            oauth::start(req, env, id, rid).await
        }
        (Method::Post, ["api", "auth", "oauth", id, "link"]) => {
            oauth::link(req, env, id, rid).await
        }
        (Method::Get, ["api", "auth", "oauth", id, "callback"]) => {
            oauth::callback(req, env, id, rid).await
        }
        (Method::Get, ["api", "auth", "identities"]) => oauth::identities(req, env).await,
        (Method::Delete, ["api", "auth", "identities", id]) => {
            oauth::unlink(req, env, id, rid).await
        }
        (Method::Get, ["api", "users", "me"]) => accounts::me(req, env).await,
        (Method::Put, ["api", "users", "me"]) => accounts::update_me(req, env).await,
        (Method::Get, ["api", "users", id]) => accounts::user(env, id).await,
        (Method::Get, ["api", "users", id, "stats"]) => shared::user_stats(env, id).await,
        (Method::Post, ["api", "admin", "users", id, "roles"]) => {
            accounts::set_roles(req, env, id).await
        }
        (Method::Get, ["api", "rooms"]) => rooms::list(env).await,
        (Method::Get, ["api", "network", "rooms"]) => shared::rooms(env).await,
        (Method::Get, ["api", "network", "online"]) => shared::online(env).await,
        (Method::Post, ["api", "lobby", "next"]) => rooms::next_lobby(req, env).await,
        (Method::Get, ["api", "rooms", name, "ws"]) => {
            if let Some(limited) = gate::upgrade_limited(&req, env).await? {
                return Ok(limited);
            }
            rooms::connect(req, env, &gate::nfc_segment(name)).await
        }
        (Method::Get, ["mpp"]) => {
            if let Some(limited) = gate::upgrade_limited(&req, env).await? {
                return Ok(limited);
            }
            mpp::connect(req, env).await
        }
        (Method::Get, ["api", "rooms", name]) => rooms::info(env, &gate::nfc_segment(name)).await,
        // Test-only (`PIANO_TEST_ROUTES=1`): a panic and a 500 on demand, for the reports' trials.
        (Method::Get, ["api", "debug", "panic", marker @ ..]) if log::test_routes(env) => {
            panic!("debug panic requested {}", marker.join("/"))
        }
        (Method::Get, ["api", "debug", "room", name, "panic", marker @ ..])
            if log::test_routes(env) =>
        {
            let path = format!("https://room/debug/panic/{}", marker.join("/"));
            piano_durable_objects::room_stub(env, &gate::nfc_segment(name))?
                .fetch_with_str(&path)
                .await
        }
        // A report through the same throttle as any other, sent before the answer (the trials'
        // sentinel).
        (Method::Get, ["api", "debug", "report", marker @ ..]) if log::test_routes(env) => {
            let r = piano_core::report::debug_report(&marker.join("/"));
            if let Some(send) = log::report(r) {
                send.await;
            }
            Response::from_json(&serde_json::json!({}))
        }
        (Method::Get, ["api", "debug", "error", ..]) if log::test_routes(env) => {
            json_error(500, "internal", "debug error requested")
        }
        (Method::Get, ["api", "admin", "rooms", name, "outbox"]) => {
            rooms::outbox(&req, env, name).await
        }
        (_, [".well-known", "jwks.json"] | ["api", "version"] | ["healthz"])
        | (_, ["metrics"] | ["api", "status"])
        | (_, ["api", "auth", "guest"] | ["api", "rooms", _] | ["api", "rooms", _, "ws"])
        | (_, ["api", "rooms"] | ["api", "lobby", "next"] | ["api", "users", _])
        | (_, ["api", "auth", "register" | "login" | "refresh" | "logout"])
        | (_, ["api", "auth", "providers" | "identities"] | ["api", "auth", "identities", _])
        | (_, ["api", "auth", "oauth", _, "start" | "link" | "callback"])
        | (_, ["api", "admin", "users", _, "roles"] | ["api", "network", "rooms" | "online"])
        | (_, ["api", "users", _, "stats"] | ["api", "admin", "rooms", _, "outbox"])
        // `/api/openapi.json` is a static asset (`web/dist`), served before the worker runs.
        | (_, ["mpp"] | ["api", "openapi.json"]) => json_error(405, "method_not_allowed", "method not allowed on this path"),
        _ => json_error(404, "not_found", "no such endpoint"),
    }
}

/// Re-sends a Durable Object's JSON answer to the client (the object's response headers are
/// immutable here), with this cache policy.
pub(crate) async fn relay_json(
    mut resp: Response,
    cache_control: Option<&str>,
) -> Result<Response> {
    let status = resp.status_code();
    let retry_after = resp.headers().get("retry-after")?;
    let body = resp.text().await?;
    let mut out = Response::ok(body)?.with_status(status);
    out.headers_mut().set("content-type", "application/json")?;
    if let Some(secs) = retry_after {
        out.headers_mut().set("retry-after", &secs)?;
    }
    if let Some(cache) = cache_control {
        out.headers_mut().set("cache-control", cache)?;
    }
    Ok(out)
}
