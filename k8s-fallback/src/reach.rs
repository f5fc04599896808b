//! Sessions reach open sockets (issue 13, item 7): when a member's session ends (logout,
//! refresh-token reuse, eviction by `MAX_SESSIONS_PER_ACCOUNT`) or their roles change, every
//! room with one of their sockets closes it (4001 / 4002, decided by the core's
//! `Input::SessionEnded` / `Input::IdentityChanged`), within the time it takes to hand a message
//! to a task, or to cross Redis pub/sub.
//!
//! - [`Accounts`](crate::accounts::Accounts) emits a [`Reach`] on a bounded queue whenever a
//!   session ends or roles change.
//! - [`crate::hub::pass_on_reach`] takes them: standalone, every local room task is told; with
//!   Redis, the event is published on [`CHANNEL`], which every replica (this one included)
//!   subscribes to and applies to its own rooms, so the replica running the room closes the
//!   socket wherever it is (a follower's socket through the usual `Wire::Close`). If publishing
//!   fails, this replica's rooms are still told.
//!
//! Only the message lives here, at the bottom of the crate: the accounts (which emit it), the
//! hub (which passes it on) and the room tasks (which act on it) all import it.
//!
//! Expiry needs no event: each room task ticks at the core's `Room::next_deadline()`.

use serde::{Deserialize, Serialize};
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
