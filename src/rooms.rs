//! Room routes: the WebSocket upgrade gate and room info, both forwarded to the Room object.

use crate::auth;
use piano_core::names::{self, percent_decode, percent_encode};
use piano_durable_objects::{IDENTITY_HEADER, PROTOCOL_HEADER, ROOM_HEADER, json_error};
use worker::*;

/// The Durable Object namespace binding of rooms (wrangler.toml).
const ROOMS_BINDING: &str = "ROOMS";

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
    let identity = match auth::verify(env, upgrade.token.as_deref()) {
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

fn room_stub(env: &Env, name: &str) -> Result<Stub> {
    env.durable_object(ROOMS_BINDING)?
        .id_from_name(name)?
        .get_stub()
}
