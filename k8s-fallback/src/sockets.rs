//! The players' sockets on this replica, as the rooms see them: each a bounded outbound queue
//! and a kill switch. Sockets never block a room: a connection whose queue is full is closed
//! ([`SLOW_CONSUMER`]) rather than slowing everyone else down.
//!
//! Shared by the hub (placement, drain, frames from other replicas) and the room tasks (their
//! broadcasts and closes), below both; the socket's own task ([`crate::ws`]) registers here.

use crate::lock;
use crate::metrics::METRICS;
use bytes::Bytes;
use piano_core::room::ConnId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::{mpsc, oneshot};

/// RFC 6455 "Service Restart": the server is going away or the room moved to another replica;
/// reconnect (with the same token) and join again.
pub const SERVICE_RESTART: u16 = 1012;
/// RFC 6455 "Try Again Later": the connection fell behind its room (outbound queue full), or
/// the room could not be placed right now. Reconnecting is the right answer to both.
pub const SLOW_CONSUMER: u16 = 1013;
pub const TRY_AGAIN_LATER: u16 = 1013;

/// What a player's socket is sent.
#[derive(Debug)]
pub enum Outbound {
    Frame(Bytes),
    /// A WebSocket ping (idle detection); skipped when the queue is full.
    Ping,
    Close(u16, String),
}

/// An MPP socket's way to its reader: take the socket to another room, feeding it a frame
/// (`Effect::ChangeRoom`).
pub type Moves = mpsc::Sender<(String, String)>;

struct LocalConn {
    tx: mpsc::Sender<Outbound>,
    moves: Option<Moves>,
    /// Tells the socket's writer to close at once, bypassing a full queue.
    kill: Option<oneshot::Sender<(u16, String)>>,
    /// A close was already asked for: the first code is the one the client must see (frames
    /// still in flight after a 1008 would otherwise earn an "unknown connection" close too).
    closing: bool,
}

/// Every local socket by connection id.
#[derive(Default)]
pub struct Sockets {
    conns: Mutex<HashMap<ConnId, LocalConn>>,
}

impl Sockets {
    pub fn register(
        &self,
        conn: ConnId,
        tx: mpsc::Sender<Outbound>,
        kill: oneshot::Sender<(u16, String)>,
        moves: Option<Moves>,
    ) {
        lock(&self.conns).insert(
            conn,
            LocalConn {
                tx,
                moves,
                kill: Some(kill),
                closing: false,
            },
        );
    }

    pub fn remove(&self, conn: ConnId) {
        lock(&self.conns).remove(&conn);
    }

    /// Queues a frame for a local socket; `false` if the connection is not on this replica.
    pub fn deliver(&self, conn: ConnId, frame: &Bytes) -> bool {
        let mut conns = lock(&self.conns);
        let Some(c) = conns.get_mut(&conn) else {
            return false;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) =
            c.tx.try_send(Outbound::Frame(frame.clone()))
            && let Some(kill) = c.kill.take()
        {
            METRICS.slow_consumers.fetch_add(1, Relaxed);
            tracing::warn!(conn, "closing a connection that fell behind its room");
            let _ = kill.send((SLOW_CONSUMER, "too slow: reconnect".into()));
        }
        true
    }

    /// Hands a local MPP socket over to `room`; `false` when it cannot be (not here, not MPP,
    /// or a move already pending).
    pub fn change_room(&self, conn: ConnId, room: String, frame: String) -> bool {
        lock(&self.conns)
            .get(&conn)
            .and_then(|c| c.moves.as_ref())
            .is_some_and(|m| m.try_send((room, frame)).is_ok())
    }

    /// Queues a ping; a full queue skips it (that socket is about to be closed as slow anyway).
    pub fn ping(&self, conn: ConnId) {
        if let Some(c) = lock(&self.conns).get(&conn) {
            let _ = c.tx.try_send(Outbound::Ping);
        }
    }

    /// Closes a local socket after what is already queued for it.
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) {
        let mut conns = lock(&self.conns);
        let Some(c) = conns.get_mut(&conn) else {
            return;
        };
        if std::mem::replace(&mut c.closing, true) {
            return;
        }
        if c.tx.try_send(Outbound::Close(code, reason.into())).is_err()
            && let Some(kill) = c.kill.take()
        {
            let _ = kill.send((code, reason.into()));
        }
    }

    pub fn count(&self) -> usize {
        lock(&self.conns).len()
    }

    pub fn ids(&self) -> Vec<ConnId> {
        lock(&self.conns).keys().copied().collect()
    }
}
