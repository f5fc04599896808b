//! The players' sockets on this replica, as the rooms see them: each a bounded outbound queue
//! and a kill switch. Sockets never block a room: for a connection that falls behind, note
//! batches and cursor moves are skipped and it is told how many once it catches up
//! (`piano_core::backlog`); one whose queue is full when a frame that must arrive comes is
//! closed ([`SLOW_CONSUMER`]) rather than slowing everyone else down.
//!
//! Shared by the hub (placement, drain, frames from other replicas) and the room tasks (their
//! broadcasts and closes), below both; the socket's own task ([`crate::ws`]) registers here.

use crate::lock;
use crate::metrics::METRICS;
use bytes::Bytes;
use piano_core::backlog::{Backlog, Delivery, Verdict};
use piano_core::room::{ConnId, Protocol, fell_behind};
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
    protocol: Protocol,
    backlog: Backlog,
    moves: Option<Moves>,
    /// Tells the socket's writer to close at once, bypassing a full queue.
    kill: Option<oneshot::Sender<(u16, String)>>,
    /// A close was already asked for: the first code is the one the client must see (frames
    /// still in flight after a 1008 would otherwise earn an "unknown connection" close too).
    closing: bool,
}

impl LocalConn {
    /// Frames waiting in the socket's queue.
    fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queues the notice that `n` note batches and cursor moves were skipped for it.
    fn tell_skipped(&self, conn: ConnId, n: u32) {
        let _ = self
            .tx
            .try_send(Outbound::Frame(fell_behind(self.protocol, n)));
        tracing::info!(conn, skipped = n, "a connection caught up with its room");
    }
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
        protocol: Protocol,
    ) {
        lock(&self.conns).insert(
            conn,
            LocalConn {
                tx,
                protocol,
                backlog: Backlog::default(),
                moves,
                kill: Some(kill),
                closing: false,
            },
        );
    }

    pub fn remove(&self, conn: ConnId) {
        lock(&self.conns).remove(&conn);
    }

    /// Queues a frame for a local socket, or skips it if the socket fell behind and it may be
    /// skipped (`delivery`); `false` if the connection is not on this replica.
    pub fn deliver(&self, conn: ConnId, frame: &Bytes, delivery: Delivery) -> bool {
        let mut conns = lock(&self.conns);
        let Some(c) = conns.get_mut(&conn) else {
            return false;
        };
        match c
            .backlog
            .offer(delivery, c.queued(), 1, c.tx.max_capacity())
        {
            Verdict::Skip => {
                METRICS.frames_skipped.fetch_add(1, Relaxed);
                return true;
            }
            Verdict::Queue { notice } => {
                if let Some(n) = notice {
                    c.tell_skipped(conn, n);
                }
                match c.tx.try_send(Outbound::Frame(frame.clone())) {
                    // Full only if the queue filled since it was measured: a slow consumer.
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    // Sent, or the socket is already gone.
                    _ => return true,
                }
            }
            Verdict::Close => {}
        }
        // Closed by us: the room lets it go for good (never a drop it could resume).
        c.closing = true;
        if let Some(kill) = c.kill.take() {
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
    /// A listener that caught up while its room went quiet is told what it missed now.
    pub fn ping(&self, conn: ConnId) {
        if let Some(c) = lock(&self.conns).get_mut(&conn) {
            if let Some(n) = c.backlog.notice_due(c.queued(), c.tx.max_capacity()) {
                c.tell_skipped(conn, n);
            }
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

    /// Whether this side asked for the socket's close (a kick, a drain, a slow consumer...).
    pub fn closing(&self, conn: ConnId) -> bool {
        lock(&self.conns).get(&conn).is_some_and(|c| c.closing)
    }

    pub fn count(&self) -> usize {
        lock(&self.conns).len()
    }

    pub fn ids(&self) -> Vec<ConnId> {
        lock(&self.conns).keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use piano_core::proto::{ServerMessage, server_message::Msg as S};
    use prost::Message;

    fn frames(rx: &mut mpsc::Receiver<Outbound>) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Outbound::Frame(b) = m {
                out.push(b);
            }
        }
        out
    }

    /// A listener whose writer stalls: from half a queue its note batches are skipped, what
    /// must arrive still queues, it is told how many were skipped once it catches up, and only
    /// a full queue with a frame that must arrive closes it.
    #[test]
    fn a_listener_behind_skips_fresh_frames_is_told_and_closed_only_when_full() {
        let sockets = Sockets::default();
        let (tx, mut rx) = mpsc::channel(8);
        let (kill_tx, mut kill_rx) = oneshot::channel();
        sockets.register(1, tx, kill_tx, None, Protocol::Protobuf);
        let note = Bytes::from_static(b"note");
        let chat = Bytes::from_static(b"chat");
        for _ in 0..10 {
            assert!(sockets.deliver(1, &note, Delivery::Fresh));
        }
        // 4 of 8 queued, then skipping; a frame that must arrive still goes in.
        assert!(sockets.deliver(1, &chat, Delivery::Reliable));
        let got = frames(&mut rx);
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], chat);
        // Caught up: the next frame comes after the notice of the 6 skipped.
        assert!(sockets.deliver(1, &note, Delivery::Fresh));
        let got = frames(&mut rx);
        let told = ServerMessage::decode(got[0].clone())
            .ok()
            .and_then(|m| m.msg);
        assert_eq!(
            told,
            Some(S::FellBehind(piano_core::proto::FellBehind { skipped: 6 }))
        );
        assert_eq!(got[1], note);
        assert!(kill_rx.try_recv().is_err(), "never closed so far");
        // A queue full of what must arrive: the next such frame closes the connection.
        for _ in 0..8 {
            sockets.deliver(1, &chat, Delivery::Reliable);
        }
        assert!(sockets.deliver(1, &chat, Delivery::Reliable));
        assert_eq!(kill_rx.try_recv().map(|(code, _)| code), Ok(SLOW_CONSUMER));
    }

    /// A room that went quiet while a listener caught up: its keep-alive ping tells it.
    #[test]
    fn a_quiet_room_tells_at_the_ping() {
        let sockets = Sockets::default();
        let (tx, mut rx) = mpsc::channel(8);
        let (kill_tx, _kill_rx) = oneshot::channel();
        sockets.register(1, tx, kill_tx, None, Protocol::Protobuf);
        for _ in 0..6 {
            sockets.deliver(1, &Bytes::from_static(b"note"), Delivery::Fresh);
        }
        assert_eq!(frames(&mut rx).len(), 4);
        sockets.ping(1);
        let told = frames(&mut rx)
            .first()
            .and_then(|b| ServerMessage::decode(b.clone()).ok())
            .and_then(|m| m.msg);
        assert_eq!(
            told,
            Some(S::FellBehind(piano_core::proto::FellBehind { skipped: 2 }))
        );
    }
}
