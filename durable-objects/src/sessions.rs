//! Sessions reach open sockets (issue 13, item 7). A Room object tells the member's Account
//! object that it holds one of their sockets (`POST /socket {"room"}` on the account); when the
//! account ends a session (logout, refresh-token reuse, the session limit) or changes the
//! user's roles, it sends each of those rooms a [`Notice`] (`POST /session` on the room), which
//! the room feeds to the core: `SessionEnded` closes that session's sockets with 4001,
//! `IdentityChanged` closes the user's sockets with 4002. Session and token expiry are the
//! room's own alarm (`Room::next_deadline`).

use crate::ROOM_HEADER;
use serde::{Deserialize, Serialize};
use worker::*;

/// The binding of the Account class (wrangler.toml).
pub const ACCOUNTS_BINDING: &str = "ACCOUNTS";

/// Rooms an account remembers as holding its sockets (the most recent ones).
pub const MAX_ROOMS_PER_ACCOUNT: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    pub user_id: String,
    /// The session that ended (`None`: every session of the user).
    #[serde(default)]
    pub session_id: Option<String>,
    /// The user's roles changed (rather than a session ending).
    #[serde(default)]
    pub changed: bool,
}

/// Room → Account: this room holds a socket of `user_id` (`user:<name>`).
pub async fn announce(env: &Env, user_id: &str, room: &str) -> Result<()> {
    let Some(account) = crate::account_stub(env, user_id)? else {
        return Ok(());
    };
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(serde_json::json!({ "room": room }).to_string().into()));
    let req = Request::new_with_init("https://account.internal/socket", &init)?;
    account.fetch_with_request(req).await?;
    Ok(())
}

/// Account → rooms: the notice, to every room that announced a socket of this user. A room
/// that no longer holds one ignores it.
pub async fn notify(env: &Env, rooms: &[String], notice: &Notice) {
    let body = match serde_json::to_string(notice) {
        Ok(b) => b,
        Err(_) => return,
    };
    for room in rooms {
        let result = async {
            let stub = crate::room_stub(env, room)?;
            let headers = Headers::new();
            headers.set(ROOM_HEADER, &piano_core::names::percent_encode(room))?;
            let mut init = RequestInit::new();
            init.with_method(Method::Post)
                .with_headers(headers)
                .with_body(Some(body.clone().into()));
            let req = Request::new_with_init("https://room.internal/session", &init)?;
            stub.fetch_with_request(req).await.map(drop)
        }
        .await;
        if let Err(e) = result {
            crate::log::warn("sessions")
                .msg(format!("session notice to room {room} failed: {e}"))
                .emit();
        }
    }
}
