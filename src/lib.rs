//! The stateless edge worker: the front door of every deployment on Cloudflare.
//!
//! It routes requests, issues and verifies Ed25519 JWTs, serves the REST API, and forwards
//! WebSocket upgrades to the Room Durable Object named by the room (DESIGN §3). No state lives
//! here beyond per-isolate caches of parsed keys; everything a room knows lives in its object.
//!
//! Layout:
//! - this file: the `fetch` entry point and the router;
//! - [`config`]: settings from vars and secrets (signing key, issuer, audience, token lifetime);
//! - [`auth`]: guest tokens, JWKS, and extracting/verifying the token of a WebSocket upgrade;
//! - [`rooms`]: room routes (`/api/rooms`, `/api/rooms/{name}/ws`, `/api/rooms/{name}`,
//!   `/api/lobby/next`).
//!
//! The Durable Object classes are re-exported here so the single wasm module exports them.

mod auth;
mod config;
mod rooms;

pub use piano_durable_objects::Room;
use piano_durable_objects::json_error;
pub use piano_durable_objects::lobby::Lobby;
use worker::*;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    match route(req, &env).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            console_error!("request failed: {e}");
            json_error(500, "internal", "internal error")
        }
    }
}

async fn route(req: Request, env: &Env) -> Result<Response> {
    let path = req.path();
    let method = req.method();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::Get, [""]) => Response::from_html(LANDING_PAGE),
        (Method::Get, ["healthz"]) => Response::from_json(&serde_json::json!({ "status": "ok" })),
        (Method::Get, ["api", "version"]) => Response::from_json(&serde_json::json!({
            "name": env!("CARGO_PKG_NAME"),
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": piano_core::limits::PROTOCOL_VERSION,
            "subprotocol": piano_core::limits::SUBPROTOCOL,
        })),
        (Method::Get, [".well-known", "jwks.json"]) => auth::jwks(env),
        (Method::Post, ["api", "auth", "guest"]) => auth::guest(req, env).await,
        (Method::Get, ["api", "rooms"]) => rooms::list(env).await,
        (Method::Post, ["api", "lobby", "next"]) => rooms::next_lobby(req, env).await,
        (Method::Get, ["api", "rooms", name, "ws"]) => rooms::connect(req, env, name).await,
        (Method::Get, ["api", "rooms", name]) => rooms::info(env, name).await,
        (_, [".well-known", "jwks.json"] | ["api", "version"] | ["healthz"])
        | (_, ["api", "auth", "guest"] | ["api", "rooms", _] | ["api", "rooms", _, "ws"])
        | (_, ["api", "rooms"] | ["api", "lobby", "next"]) => {
            json_error(405, "method_not_allowed", "method not allowed on this path")
        }
        _ => json_error(404, "not_found", "no such endpoint"),
    }
}

const LANDING_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Piano server</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}code{background:#eee;padding:0 .25rem}</style>
</head><body>
<h1>Multiplayer piano server</h1>
<p>This server is running. The browser client is not built yet; these endpoints are live:</p>
<ul>
<li><code>POST /api/auth/guest</code> with <code>{"name":"…"}</code>: a guest token (EdDSA JWT)</li>
<li><code>GET /.well-known/jwks.json</code>: the public keys that verify tokens</li>
<li><code>GET /api/rooms/{name}/ws</code>: a room's WebSocket (protobuf, <code>pianorhythm.v1</code>); token as
<code>?token=</code> or the subprotocol <code>bearer.&lt;token&gt;</code></li>
<li><code>GET /api/rooms</code>: the visible rooms, most players first</li>
<li><code>POST /api/lobby/next</code> (with <code>Authorization: Bearer &lt;token&gt;</code>): the lobby to join</li>
<li><code>GET /api/rooms/{name}</code>: a room's player count</li>
<li><code>GET /api/version</code>, <code>GET /healthz</code></li>
</ul>
</body></html>
"#;
