//! `GET /metrics` and `GET /api/status` at the edge, and the worker's own counters.
//!
//! The numbers live in the metrics aggregator (`piano_durable_objects::metrics`, hosted by the
//! Lobby object), which Room objects push to, so a scrape wakes no hibernated room. The worker
//! is stateless and runs in many isolates: each counts its HTTP errors and auth outcomes in
//! memory and pushes them in the background (`ctx.wait_until`) at most every
//! [`PUSH_EVERY_MS`], and before answering a scrape.
//!
//! `/metrics` needs `METRICS_TOKEN` as a bearer token (404 while it is unset, 401 for a wrong
//! one), as the fallback's main port does.

use piano_core::metrics::push::{PUSH_EVERY_MS, Push};
use piano_core::metrics::{self, Auth, Counters};
use piano_core::outbox::Lane;
use piano_core::status::{Cached, Component, LaneFacts, Lookup, Status, lane};
use piano_durable_objects::{json_error, setting};
use std::cell::RefCell;
use worker::*;

#[derive(Default)]
struct Isolate {
    counters: Counters,
    last_push: u64,
    status: Cached<String>,
}

/// Clears the isolate's "refreshing" mark if a gathering ends without storing (an error, or
/// the request cancelled), so the next request tries again.
struct Refreshing;

impl Drop for Refreshing {
    fn drop(&mut self) {
        ISOLATE.with_borrow_mut(|i| i.status.abandon());
    }
}

thread_local! {
    static ISOLATE: RefCell<Isolate> = RefCell::default();
}

/// Counts a response of the router: errors by status, and the accounts endpoints' outcomes.
pub fn count(path: &str, status: u16) {
    let auth = path
        .strip_prefix("/api/auth/")
        .and_then(|endpoint| Auth::of(endpoint, status));
    if status < 400 && auth.is_none() {
        return;
    }
    ISOLATE.with_borrow_mut(|i| {
        if status >= 400 {
            i.counters.add_slot(metrics::http_status_slot(status), 1);
        }
        if let Some(a) = auth {
            i.counters.add_slot(metrics::auth_slot(a), 1);
        }
    });
}

/// What this isolate counted, if a push is due (or `now_please`): taken, to send.
fn take_due(now: u64, now_please: bool) -> Option<Push> {
    ISOLATE.with_borrow_mut(|i| {
        if i.counters.is_empty() || (!now_please && now.saturating_sub(i.last_push) < PUSH_EVERY_MS)
        {
            return None;
        }
        i.last_push = now;
        Some(Push {
            counters: i.counters.take().sparse(),
            ..Push::default()
        })
    })
}

async fn send(env: &Env, push: Push) {
    if let Err(e) = piano_durable_objects::lobby::send_metrics(env, &push).await {
        piano_durable_objects::log::warn("metrics")
            .error(e)
            .msg("metrics push failed")
            .emit();
        ISOLATE.with_borrow_mut(|i| i.counters.add_sparse(&push.counters));
    }
}

/// After a request: pushes this isolate's counters in the background when due.
pub fn push_in_background(env: &Env, ctx: &Context) {
    if let Some(push) = take_due(Date::now().as_millis(), false) {
        let env = env.clone();
        ctx.wait_until(async move { send(&env, push).await });
    }
}

/// `GET /metrics`.
pub async fn scrape(req: &Request, env: &Env) -> Result<Response> {
    let Some(expected) = setting(env, "METRICS_TOKEN") else {
        return json_error(
            404,
            "not_found",
            "metrics are off: the operator sets METRICS_TOKEN",
        );
    };
    let presented = req
        .headers()
        .get("authorization")?
        .and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned))
        .unwrap_or_default();
    if !metrics::token_matches(&presented, &expected) {
        let mut resp = json_error(401, "unauthorized", "/metrics needs its bearer token")?;
        resp.headers_mut()
            .set("www-authenticate", r#"Bearer realm="metrics""#)?;
        return Ok(resp);
    }
    // This isolate's own counts first, so the answer includes them.
    if let Some(push) = take_due(Date::now().as_millis(), true) {
        send(env, push).await;
    }
    let mut inner = piano_durable_objects::lobby::get_metrics(env, "/metrics").await?;
    if inner.status_code() != 200 {
        return json_error(502, "unavailable", "the metrics aggregator did not answer");
    }
    let text = inner.text().await?;
    let mut resp = Response::ok(text)?;
    let h = resp.headers_mut();
    h.set("content-type", "text/plain; version=0.0.4; charset=utf-8")?;
    h.set("cache-control", "no-store")?;
    Ok(resp)
}

/// `GET /api/status`: public, the same answer for `piano_core::status::CACHE_MS` per isolate
/// (and to shared caches), so it cannot be used to hammer the directory or the backends.
pub async fn status(env: &Env) -> Result<Response> {
    let now = Date::now().as_millis();
    // One request per isolate gathers when the answer expired; the others get the last one.
    let body = match ISOLATE.with_borrow_mut(|i| i.status.lookup(now)) {
        Lookup::Ready(body) => body,
        Lookup::Gather => {
            let guard = Refreshing;
            let body = serde_json::to_string(&gather(env, now).await)?;
            std::mem::forget(guard);
            ISOLATE.with_borrow_mut(|i| i.status.store(now, body.clone()));
            body
        }
    };
    let mut resp = Response::ok(body)?;
    let h = resp.headers_mut();
    h.set("content-type", "application/json")?;
    h.set("cache-control", "public, max-age=3")?;
    Ok(resp)
}

async fn gather(env: &Env, now: u64) -> Status {
    let backends = piano_durable_objects::outbox::configured_backends(env);
    // The directory answers with the backlog every room and the lobby reported.
    let backlog = match piano_durable_objects::lobby::get_metrics(env, "/metrics/backlog").await {
        Ok(mut r) if r.status_code() == 200 => r.json::<[metrics::LaneBacklog; 2]>().await.ok(),
        _ => None,
    };
    let directory = match backlog {
        Some(_) => Component::up(),
        None => Component::down("the directory did not answer"),
    };
    let backlog = backlog.unwrap_or_default();
    let facts = |configured: bool, l: Lane| {
        if configured {
            LaneFacts::Configured {
                backlog: backlog[l.index()],
                reachable: None,
            }
        } else {
            LaneFacts::NotConfigured
        }
    };
    let (mongo, redis) = match &backends {
        Ok(b) => (b.mongo.is_some(), b.redis.is_some()),
        Err(_) => (false, false),
    };
    let accounts = match &backends {
        Ok(_) => Component::up(),
        Err(e) => Component::down(format!("misconfigured: {e}")),
    };
    Status::new(
        "edge",
        &piano_durable_objects::log::release(env),
        [
            Component::up(),
            directory,
            accounts,
            lane(facts(mongo, Lane::Mongo)),
            lane(facts(redis, Lane::Redis)),
        ],
        now,
    )
}
