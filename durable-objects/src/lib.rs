//! The Durable Objects of the edge: the piano core hosted on workers-rs (wasm in workerd).
//!
//! Each object is a thin adapter (docs/architecture.md §1, §3): runtime events in, the core's
//! decisions carried out, state in the object's SQLite storage.
//!
//! Layout:
//! - [`room`]: the Room object, one per room name (WebSockets with the hibernation API);
//!   `room/host.rs` and `room/stats.rs` hold its storage, session and activity plumbing.
//! - [`lobby`]: the Lobby object, the room directory.
//! - [`account`]: the Account object, one per username: the account and its sessions.
//! - [`limiter`]: the Limiter object, per-key request rates.
//! - [`metrics`]: the edge's metrics aggregator (hosted by the Lobby) and pushing to it.
//! - [`outbox`]: durable delivery of writes to MongoDB and Redis, shared by the objects.
//! - [`log`]: log lines in the core's schema and error reports to `SENTRY_DSN`, for the
//!   worker and the objects.
//! - [`sessions`]: how an account tells the rooms holding a member's sockets that a session ended.
//! - `storage`: the Room object's SQLite tables; `webcrypto`: password checks through WebCrypto.

pub mod account;
mod account_stats;
pub mod analytics;
pub mod claims;
pub mod limiter;
pub mod lobby;
pub mod log;
pub mod metrics;
pub mod outbox;
pub mod room;
pub mod sessions;
mod storage;
pub mod webcrypto;

pub use room::Room;
use worker::*;

/// Verified identity of the connecting player (base64url JSON), set only by the edge worker.
pub const IDENTITY_HEADER: &str = "x-piano-identity";
/// The room name, percent-encoded (headers are ASCII), set by the edge worker.
pub const ROOM_HEADER: &str = "x-piano-room";
/// The WebSocket subprotocol to echo to the client, if it offered one.
pub const PROTOCOL_HEADER: &str = "x-piano-subprotocol";
/// Set (to "1") by the worker's MPP relay (`src/mpp.rs`): the socket speaks MPP JSON.
pub const MPP_HEADER: &str = "x-piano-mpp";
/// What the Room object sends its MPP relay socket instead of an MPP frame (which is always a
/// JSON array): the connection left for another room (`Effect::ChangeRoom`), `{"relay": "ch",
/// "room", "frame"}`; then it closes the socket.
pub const RELAY_CHANGE_ROOM: &str = "ch";

/// A setting from the worker's secrets or vars (secrets first); blank counts as unset.
pub fn setting(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Whether the object's SQLite has the table `name` (objects create their tables at their first
/// write, so this says whether anything was ever stored).
pub(crate) fn table_exists(sql: &SqlStorage, name: &str) -> Result<bool> {
    #[derive(serde::Deserialize)]
    struct Table {
        #[allow(dead_code)]
        name: String,
    }
    Ok(!sql
        .exec(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
            vec![name.into()],
        )?
        .to_array::<Table>()?
        .is_empty())
}

/// The Room object of a room name (the worker's routes and the Account object's notices).
pub fn room_stub(env: &Env, room: &str) -> Result<Stub> {
    env.durable_object(lobby::ROOMS_BINDING)?
        .id_from_name(room)?
        .get_stub()
}

/// The Account object of a member (`user:<key>`; `None` for a guest or any other id): Room
/// objects announce sockets and add activity to it, the worker reads its totals.
pub fn account_stub(env: &Env, user_id: &str) -> Result<Option<Stub>> {
    let Some(key) = piano_core::analytics::member_key(user_id) else {
        return Ok(None);
    };
    Ok(Some(
        env.durable_object(sessions::ACCOUNTS_BINDING)?
            .id_from_name(key)?
            .get_stub()?,
    ))
}

/// The JSON error shape used by every HTTP endpoint.
pub fn json_error(status: u16, code: &str, message: &str) -> Result<Response> {
    Ok(
        Response::from_json(&serde_json::json!({ "error": { "code": code, "message": message } }))?
            .with_status(status),
    )
}
