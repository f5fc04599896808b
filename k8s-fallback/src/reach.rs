//! Sessions reach open sockets (issue 13, item 7): when a member's session ends (logout,
//! refresh-token reuse, eviction by `MAX_SESSIONS_PER_ACCOUNT`) or their roles change, every
//! room with one of their sockets closes it (4001 / 4002, decided by the core's
//! `Input::SessionEnded` / `Input::IdentityChanged`), within the time it takes to hand a message
//! to a task, or to cross Redis pub/sub.
//!
//! - [`Accounts`](crate::accounts::Accounts) emits a [`Reach`] on a bounded queue whenever a
//!   session ends or roles change.
//! - [`run`] takes them: standalone, every local room task is told; with Redis, the event is
//!   published on [`CHANNEL`], which every replica (this one included) subscribes to and
//!   applies to its own rooms, so the replica running the room closes the socket wherever it
//!   is (a follower's socket through the usual `Wire::Close`). If publishing fails, this
//!   replica's rooms are still told.
//!
//! Expiry needs no event: each room task ticks at the core's `Room::next_deadline()`.

use crate::hub::Hub;
use crate::metrics::{METRICS, redis_error};
use crate::room_task::RoomMsg;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::mpsc;

/// Redis channel of session events (cluster mode), one for every replica of the deployment.
pub const CHANNEL: &str = "piano:reach";
/// Events waiting to be handed on. The accounts wait for room when it is full (an HTTP request
/// waits a moment), so none is lost.
pub const QUEUE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reach {
    /// `session_id: None`: every session of the user.
    SessionEnded {
        user_id: String,
        session_id: Option<String>,
    },
    IdentityChanged {
        user_id: String,
    },
}

pub fn channel() -> (mpsc::Sender<Reach>, mpsc::Receiver<Reach>) {
    mpsc::channel(QUEUE)
}

/// Hands every event to the rooms of the deployment (see the module comment).
pub async fn run(hub: Arc<Hub>, mut rx: mpsc::Receiver<Reach>) {
    while let Some(event) = rx.recv().await {
        tracing::info!(?event, "session change: closing affected sockets");
        if let Some(c) = &hub.cluster {
            let Ok(json) = serde_json::to_vec(&event) else {
                continue;
            };
            match c.publish(CHANNEL, json.into()).await {
                // Our own subscription delivers it here too (`apply`).
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => redis_error("publishing a session change", &e),
            }
        }
        apply(&hub, event).await;
    }
}

/// Tells every room this replica runs (each checks its own connections).
pub async fn apply(hub: &Hub, event: Reach) {
    let rooms: Vec<mpsc::Sender<RoomMsg>> =
        hub.rooms_lock().values().map(|e| e.tx.clone()).collect();
    for tx in rooms {
        // Waits for room in a busy room's queue rather than dropping a revocation.
        let _ = tx.send(RoomMsg::Reach(event.clone())).await;
    }
}

/// A message from [`CHANNEL`].
pub async fn on_message(hub: &Hub, payload: &[u8]) {
    match serde_json::from_slice::<Reach>(payload) {
        Ok(event) => apply(hub, event).await,
        Err(e) => tracing::warn!(error = %e, "unreadable session change"),
    }
}

/// Counts a close the core decided for a session reason.
pub fn count_close(code: u16) {
    use piano_core::limits::close;
    if code == close::SESSION_ENDED || code == close::IDENTITY_CHANGED {
        METRICS.session_closes.fetch_add(1, Relaxed);
    }
}
