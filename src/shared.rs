//! What every deployment sharing one Redis sees (docs/architecture.md §5): the room index and who is online,
//! across deployments; and the auth rate counters, kept in Redis when it is configured so a
//! client cannot multiply its allowance by spreading over deployments.
//!
//! `GET /api/network/rooms`, `GET /api/network/online`: 503 `not_configured` without Redis,
//! 502 `backend_unavailable` while it cannot be reached.

use piano_backends::Backends;
use piano_backends::layout::NetworkSnapshot;
use piano_backends::redis::{Upstash, cmd};
use piano_core::analytics::UserTotals;
use piano_core::report::{Report, Severity, kind};
use piano_durable_objects::json_error;
use piano_durable_objects::log;
use serde_json::{Value, json};
use std::cell::Cell;
use worker::*;

thread_local! {
    /// While Redis failed recently, auth requests count locally without trying it (each try
    /// could cost a whole timeout): a circuit breaker per isolate.
    static REDIS_SKIP_UNTIL: Cell<u64> = const { Cell::new(0) };
}

/// The deployment's backends; a broken configuration is `Err` with the reason.
pub fn backends(env: &Env) -> std::result::Result<Backends, String> {
    piano_durable_objects::outbox::configured_backends(env)
}

/// `/healthz`: 200 with which backends are in use, or 503 naming a configuration error (so a
/// half-configured deployment fails its health check instead of quietly keeping data local).
pub fn health(env: &Env) -> Result<Response> {
    match backends(env) {
        Ok(b) => Response::from_json(&json!({
            "status": "ok",
            "backends": { "mongodb": b.mongo.is_some(), "redis": b.redis.is_some() },
        })),
        Err(e) => Ok(
            Response::from_json(&json!({ "status": "misconfigured", "error": e }))?
                .with_status(503),
        ),
    }
}

fn redis(env: &Env) -> std::result::Result<(Upstash, Backends), Result<Response>> {
    match backends(env) {
        Ok(b) => match b.redis.clone() {
            Some(r) => Ok((r, b)),
            None => Err(json_error(
                503,
                "not_configured",
                "this deployment shares no Redis (set UPSTASH_REDIS_REST_URL)",
            )),
        },
        Err(e) => Err(json_error(503, "not_configured", &e)),
    }
}

/// Every deployment's shared index (`layout::network_reads` for each member of
/// `deployments`), in two round trips.
async fn snapshots(
    redis: &Upstash,
    keys: &piano_backends::layout::Keys,
) -> std::result::Result<Vec<NetworkSnapshot>, Result<Response>> {
    let unavailable = |e: piano_backends::BackendError| {
        log::warn(piano_core::logging::event::BACKEND_ERROR)
            .msg(format!("reading the shared index failed: {e}"))
            .emit();
        json_error(
            502,
            "backend_unavailable",
            "the shared Redis cannot be reached right now",
        )
    };
    let strings = |v: Value| -> Vec<String> {
        match v {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let deployments = strings(
        redis
            .command(&cmd(["SMEMBERS", &keys.deployments()]))
            .await
            .map_err(unavailable)?,
    );
    let reads: Vec<_> = deployments
        .iter()
        .flat_map(|d| piano_backends::layout::network_reads(keys, d))
        .collect();
    let answers = redis.pipeline_all(&reads).await.map_err(unavailable)?;
    Ok(answers
        .chunks_exact(2)
        .map(|pair| NetworkSnapshot {
            rooms: strings(pair[0].clone()),
            online: strings(pair[1].clone()),
        })
        .collect())
}

/// `GET /api/network/rooms`: public rooms of every deployment, busiest first.
pub async fn rooms(env: &Env) -> Result<Response> {
    network(env, "rooms", piano_backends::layout::network_rooms).await
}

/// `GET /api/network/online`: who is online on every deployment, and in which listed room.
pub async fn online(env: &Env) -> Result<Response> {
    network(env, "online", piano_backends::layout::network_online).await
}

/// Reads every deployment's shared index and answers `{field: view(snapshots)}`.
async fn network(
    env: &Env,
    field: &str,
    view: fn(&[NetworkSnapshot]) -> Vec<Value>,
) -> Result<Response> {
    let (redis, b) = match redis(env) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let snapshots = match snapshots(&redis, &b.keys).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let mut resp = Response::from_json(&json!({ field: view(&snapshots) }))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}

/// One auth request counted in Redis (`piano_core::account::rate`: a fixed window shared by
/// every deployment): the count so far this window, or `None` when Redis is not configured or
/// unreachable (the caller then counts in its Limiter object).
pub async fn rate_hit(env: &Env, client: &str, now_ms: u64) -> Option<u64> {
    use piano_core::account::rate;
    let b = backends(env).ok()?;
    let redis = b.redis.as_ref()?;
    if REDIS_SKIP_UNTIL.with(Cell::get) > now_ms {
        return None;
    }
    let key = b
        .keys
        .rate(rate::AUTH_SCOPE, client, rate::shared_window(now_ms));
    let ttl = rate::SHARED_COUNTER_TTL_SECS.to_string();
    let answers = match redis
        .pipeline_all(&[cmd(["INCR", &key]), cmd(["EXPIRE", &key, &ttl])])
        .await
    {
        Ok(a) => a,
        Err(e) => {
            // The breaker opens: logged and reported (the throttle keeps a flapping Redis to a
            // few reports).
            log::error(piano_core::logging::event::CIRCUIT_OPEN)
                .error(&e)
                .field("backend", "redis")
                .msg("redis rate counter failed, counting locally for a while")
                .emit();
            REDIS_SKIP_UNTIL.with(|c| c.set(now_ms + rate::SHARED_BACKOFF_MS));
            if let Some(send) = log::report(Report::new(
                kind::CIRCUIT_OPEN,
                Severity::Error,
                format!("redis rate counter: {e}"),
            )) {
                worker::wasm_bindgen_futures::spawn_local(send);
            }
            return None;
        }
    };
    answers.first().and_then(Value::as_u64)
}

/// `GET /api/users/{id}/stats`: a user's totals over every room and deployment (MongoDB), or
/// without MongoDB a member's totals in their Account object (this deployment's rooms).
pub async fn user_stats(env: &Env, id: &str) -> Result<Response> {
    let Some(user_id) =
        piano_core::names::percent_decode(id).filter(|u| !u.is_empty() && u.len() <= 100)
    else {
        return json_error(400, "invalid_user_id", "not a user id");
    };
    let mongo = match backends(env) {
        Ok(Backends { mongo: Some(m), .. }) => m,
        Ok(_) => return embedded_user_stats(env, &user_id).await,
        Err(e) => return json_error(503, "not_configured", &e),
    };
    let pipeline = piano_backends::layout::user_stats_pipeline(&user_id);
    let rows = match mongo
        .aggregate(piano_backends::layout::USER_STATS, pipeline)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            log::warn(piano_core::logging::event::BACKEND_ERROR)
                .msg(format!("user stats aggregation failed: {e}"))
                .emit();
            return json_error(
                502,
                "backend_unavailable",
                "MongoDB cannot be reached right now",
            );
        }
    };
    let totals = rows.into_iter().next().unwrap_or_else(|| json!({}));
    let mut resp = Response::from_json(&UserTotals::from_aggregate(&totals).to_json(&user_id))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}

/// A member's totals from their Account object (guests and unknown ids: zeros; a read
/// creates nothing).
async fn embedded_user_stats(env: &Env, user_id: &str) -> Result<Response> {
    // The Room objects address it by the same key (`user:<key>`, the normalized username).
    let totals = match piano_durable_objects::account_stub(env, user_id)? {
        Some(account) => {
            let req = Request::new("https://account.internal/stats", Method::Get)?;
            let mut resp = account.fetch_with_request(req).await?;
            if resp.status_code() != 200 {
                return json_error(502, "backend_unavailable", "the account did not answer");
            }
            resp.json::<UserTotals>().await?
        }
        None => UserTotals::default(),
    };
    let mut resp = Response::from_json(&totals.to_json(user_id))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}

/// Whether the shared revocation list (`revoked:<sid>`) leaves this session alone: `false`
/// without a shared Redis or when it cannot be read (refuse rather than guess).
pub async fn not_revoked(env: &Env, sid: &str) -> bool {
    let Ok(b) = backends(env) else { return false };
    let Some(redis) = b.redis.as_ref() else {
        return false;
    };
    match redis.command(&cmd(["GET", &b.keys.revoked(sid)])).await {
        Ok(Value::Null) => true,
        Ok(_) => false,
        Err(e) => {
            log::warn(piano_core::logging::event::BACKEND_ERROR)
                .msg(format!(
                    "revocation list unreadable, refusing a foreign session: {e}"
                ))
                .emit();
            false
        }
    }
}
