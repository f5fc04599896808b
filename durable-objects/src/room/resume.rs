//! The Room object's part in resuming after a dropped connection (docs/resume.md §4): which
//! socket endings are drops, what the core asks to keep ([`Keep`]) in the object's SQLite
//! (`storage::keep`), what a woken or restarted object hands back to the core
//! (`Room::restore_with`), and connection ids that never collide with a suspended one.
//!
//! A suspended connection has a session row and no socket: the room's memory may go (the
//! object hibernates once idle, or is restarted) and the player still resume within the grace
//! period, since the rows come back at the next load. The grace period's end is part of the
//! core's `next_deadline`, so the alarm (armed after every event) ends it even while the object
//! sleeps. The replay buffer is written only while some connection is suspended
//! (`ReplayDurability::WhileSuspended`): at other times a write per broadcast buys nothing.

use super::{Loaded, Room};
use crate::storage;
use piano_core::room::{
    ConnId, DirectoryOp, Input, Keep, Kept, ReplayDurability, Room as CoreRoom,
};
use worker::*;

/// `RESUME_GRACE_MS`: how long a dropped connection keeps its place (0: resuming is off).
pub fn grace_ms(env: &Env) -> u64 {
    crate::setting(env, "RESUME_GRACE_MS")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(piano_core::limits::RESUME_GRACE_MS)
}

/// The input for a socket that ended: a close with 1000 or 1001 is a goodbye; any other code
/// (1006 for an abnormal closure, 1005 for none, a client's own) and an error (`None`) are drops
/// the player may resume from.
pub fn ended(conn: ConnId, code: Option<usize>) -> Input<'static> {
    match code {
        Some(1000 | 1001) => Input::Disconnect { conn },
        _ => Input::Dropped { conn },
    }
}

/// What the host keeps, read for a room being loaded; with resuming off, forgotten instead.
pub fn load_kept(sql: &SqlStorage, grace_ms: u64) -> Kept {
    let kept = match grace_ms {
        0 => storage::forget_kept(sql).map(|()| Kept::default()),
        _ => storage::kept(sql),
    };
    kept.unwrap_or_else(|e| {
        crate::log::error("storage")
            .msg(format!(
                "kept sessions not read (no resume from before): {e}"
            ))
            .emit();
        Kept::default()
    })
}

/// The room's limits and durability at the edge, right after it is built.
pub fn configure(room: &mut CoreRoom, grace_ms: u64) {
    let mut limits = room.limits().clone();
    limits.resume_grace_ms = grace_ms;
    room.set_limits(limits);
    room.keep_replay(ReplayDurability::WhileSuspended);
}

impl Room {
    /// Carries out one [`Keep`]: in the room's SQLite, never in the outbox (MongoDB).
    pub(super) fn keep(&self, l: &mut Loaded, sql: &SqlStorage, keep: Keep) {
        match &keep {
            Keep::Session(s) => {
                l.kept.insert(s.record.conn);
            }
            Keep::SessionGone(conn) => {
                l.kept.remove(conn);
            }
            _ => {}
        }
        // No tables, nothing to forget (a room without storage has no sessions).
        if self.has_storage.get() != Some(true) {
            return;
        }
        if let Err(e) = storage::keep(sql, keep) {
            crate::log::error("storage")
                .msg(format!("resume state write failed: {e}"))
                .emit();
        }
    }

    /// A socket ended: with a close `code` (1000/1001 say goodbye), or an error (`None`).
    pub(super) fn drop_socket(&self, ws: &WebSocket, code: Option<usize>) -> Vec<DirectoryOp> {
        let Some(conn) = super::conn_of(ws) else {
            return Vec::new();
        };
        let mut ops = self.handle_restore(None);
        let input = ended(conn, code);
        let dropped = matches!(input, Input::Dropped { .. });
        // A drop of a socket the room no longer holds changes nothing: the room closed it, or
        // the socket was already gone when the room was loaded for this event (woken by it),
        // so its connection came back suspended from its session (a second drop would end it).
        let held = self
            .loaded
            .borrow()
            .as_ref()
            .is_some_and(|l| l.sockets.contains_key(&conn));
        if dropped && !held {
            return ops;
        }
        ops.extend(self.handle(None, input));
        let mut line = crate::log::info(piano_core::logging::event::LEAVE).conn(conn);
        if let Some(l) = self.loaded.borrow().as_ref() {
            line = line.room(l.room.name());
        }
        if let Some(code) = code {
            line = line.field("code", code);
        }
        line.msg(match dropped {
            true => "dropped (resumable for the grace period if it had joined)",
            false => "left the room",
        })
        .emit();
        if let Some(l) = self.loaded.borrow_mut().as_mut() {
            l.sockets.remove(&conn);
            l.unread.remove(&conn);
            l.mpp.remove(&conn);
        }
        ops
    }

    /// An id for a new socket: random below 2^53 (it survives a trip through a JavaScript
    /// number), and never one of a connection the room still knows, live or suspended (a
    /// suspended one keeps its id, and its session row says so across restarts).
    pub(super) fn fresh_conn_id(&self) -> ConnId {
        let loaded = self.loaded.borrow();
        loop {
            let id = random_conn_id();
            let taken = loaded
                .as_ref()
                .is_some_and(|l| l.sockets.contains_key(&id) || l.kept.contains(&id));
            if !taken {
                return id;
            }
        }
    }
}

fn random_conn_id() -> ConnId {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // crypto.getRandomValues does not fail in workerd; fall back to the clock anyway.
        return super::now() & ((1 << 53) - 1);
    }
    u64::from_le_bytes(b) & ((1 << 53) - 1)
}
