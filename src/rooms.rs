//! Room routes: the WebSocket upgrade gate and room info (forwarded to the Room object), the
//! room list and lobby placement (answered by the Lobby object).

use crate::auth;
use piano_core::names::{self, percent_decode, percent_encode};
use piano_durable_objects::lobby::{LOBBY_BINDING, LOBBY_NAME};
use piano_durable_objects::{IDENTITY_HEADER, PROTOCOL_HEADER, ROOM_HEADER, json_error, room_stub};
use worker::*;

/// Decodes and validates the `{name}` path segment.
fn room_name(raw: &str) -> std::result::Result<String, Result<Response>> {
    let decoded = percent_decode(raw).ok_or_else(|| {
        json_error(
            400,
            "invalid_room_name",
            "room name is not valid UTF-8 percent-encoding",
        )
    })?;
    names::room_name(&decoded)
        .map(str::to_owned)
        .map_err(|e| json_error(400, "invalid_room_name", &format!("room name {e}")))
}

pub async fn connect(req: Request, env: &Env, raw_name: &str) -> Result<Response> {
    let name = match room_name(raw_name) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let is_upgrade = req
        .headers()
        .get("upgrade")?
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return json_error(
            426,
            "upgrade_required",
            "this endpoint only accepts WebSocket upgrades",
        );
    }
    let upgrade = match auth::upgrade_auth(&req) {
        Ok(u) => u,
        Err(msg) => return json_error(400, "bad_subprotocol", msg),
    };
    let identity = match auth::verify(env, upgrade.token.as_deref()).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };

    // Forward the upgrade with the client's headers minus anything that could claim an identity
    // (ours are set below from the verified token) or carry the credential further.
    let headers = Headers::new();
    for (k, v) in req.headers().entries() {
        let k = k.to_ascii_lowercase();
        if k.starts_with("x-piano-")
            || matches!(
                k.as_str(),
                "sec-websocket-protocol" | "authorization" | "cookie"
            )
        {
            continue;
        }
        headers.append(&k, &v)?;
    }
    headers.set(IDENTITY_HEADER, &identity.to_header())?;
    headers.set(ROOM_HEADER, &percent_encode(&name))?;
    if let Some(p) = upgrade.subprotocol {
        headers.set(PROTOCOL_HEADER, p)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let forwarded = Request::new_with_init("https://room.internal/connect", &init)?;
    room_stub(env, &name)?.fetch_with_request(forwarded).await
}

pub async fn info(env: &Env, raw_name: &str) -> Result<Response> {
    let name = match room_name(raw_name) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let headers = Headers::new();
    headers.set(ROOM_HEADER, &percent_encode(&name))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let req = Request::new_with_init("https://room.internal/info", &init)?;
    // The object's response headers are immutable here; it sets its own cache-control.
    room_stub(env, &name)?.fetch_with_request(req).await
}

fn lobby_stub(env: &Env) -> Result<Stub> {
    env.durable_object(LOBBY_BINDING)?
        .id_from_name(LOBBY_NAME)?
        .get_stub()
}

/// How long browsers and the edge may keep the room list: counts change by the second, and
/// live clients subscribe instead of polling.
const LIST_CACHE_CONTROL: &str = "public, max-age=2, stale-while-revalidate=10";
/// What the edge cache keeps a copy for (the Cache API honours `max-age`).
const LIST_CACHE_TTL: &str = "public, max-age=2";
/// One cache entry for every `GET /api/rooms`, whatever its query string or host, so reads
/// cannot be made to miss on purpose.
const LIST_CACHE_KEY: &str = "https://directory.cache.internal/api/rooms";

/// `GET /api/rooms`: the visible rooms, most players first. Served from the edge cache (the
/// Cache API, per data centre) for [`LIST_CACHE_TTL`], so anonymous reads do not all land on the
/// one Lobby object; `x-piano-cache: hit|miss` says which. (A Worker's own `Cache-Control` does
/// not make Cloudflare cache its answer; on `*.workers.dev` the Cache API does nothing and every
/// read is a miss.)
pub async fn list(env: &Env) -> Result<Response> {
    let cache = Cache::default();
    match cache.get(LIST_CACHE_KEY, false).await {
        Ok(Some(mut hit)) => match hit.text().await {
            Ok(body) => return listing(body, LIST_CACHE_CONTROL, "hit"),
            Err(e) => piano_durable_objects::log::warn("rooms")
                .msg(format!("cached room list unreadable: {e}"))
                .emit(),
        },
        Ok(None) => {}
        Err(e) => piano_durable_objects::log::warn("rooms")
            .msg(format!("room list cache read failed: {e}"))
            .emit(),
    }
    let mut resp = lobby_stub(env)?
        .fetch_with_str("https://lobby.internal/list")
        .await?;
    if resp.status_code() != 200 {
        return crate::relay_json(resp, Some("no-store")).await;
    }
    let body = resp.text().await?;
    if let Err(e) = cache
        .put(
            LIST_CACHE_KEY,
            listing(body.clone(), LIST_CACHE_TTL, "hit")?,
        )
        .await
    {
        piano_durable_objects::log::warn("rooms")
            .msg(format!("room list cache write failed: {e}"))
            .emit();
    }
    listing(body, LIST_CACHE_CONTROL, "miss")
}

fn listing(body: String, cache_control: &str, source: &str) -> Result<Response> {
    let mut resp = Response::ok(body)?;
    let headers = resp.headers_mut();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", cache_control)?;
    headers.set("x-piano-cache", source)?;
    Ok(resp)
}

/// `POST /api/lobby/next`: the lobby the caller should join (`lobby`, or `lobby-2`, … when the
/// first ones are full), with the seat held for a few seconds. Needs the caller's token
/// (`Authorization: Bearer`), which names the seat's holder.
pub async fn next_lobby(req: Request, env: &Env) -> Result<Response> {
    let identity = match auth::verify(env, auth::bearer(&req).as_deref()).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(
        serde_json::json!({ "user": identity.user_id })
            .to_string()
            .into(),
    ));
    let req = Request::new_with_init("https://lobby.internal/next", &init)?;
    lobby_stub(env)?.fetch_with_request(req).await
}

/// `GET /api/admin/rooms/{name}/outbox` (admin Bearer): the room's outbox towards MongoDB and
/// Redis: `{"configured", "pending", "dead"}`, for operators checking that a room's data is out.
pub async fn outbox(req: &Request, env: &Env, raw_name: &str) -> Result<Response> {
    let claims = match auth::verify_claims(env, auth::bearer(req).as_deref()).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if !claims.roles.iter().any(|r| r == "admin") {
        return json_error(403, "forbidden", "only admins may inspect outboxes");
    }
    let name = match room_name(raw_name) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let resp = room_stub(env, &name)?
        .fetch_with_str("https://room.internal/outbox")
        .await?;
    crate::relay_json(resp, Some("no-store")).await
}
