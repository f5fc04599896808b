//! The Room object's host duties added for abuse resistance (issue 13): slow readers, storage
//! that begins at the first Join and ends with `Change::Discard`, socket caps answered before
//! the upgrade, expiry ticks, and the session notices that reach open sockets.
//!
//! Slow readers: workerd does not implement `WebSocket.bufferedAmount` for server-side sockets
//! (measured on wrangler 4.86: the property is absent, `undefined`, while a client that stopped
//! reading had megabytes queued), and exposes no other view of a socket's unsent backlog. So
//! the room bounds what it can see: the bytes it sent to a socket since that client last sent
//! a frame (the web client pings after every 256 KiB it reads, and every 10 s), by the core's
//! rule for such hosts (`piano_core::backlog::Unacked`): past half of
//! [`DEFAULT_SLOW_READER_BYTES`] (setting `SLOW_READER_BYTES`) its note batches and cursor
//! moves are skipped and it is told how many once it sends again; a frame that must arrive and
//! would pass the bound, or four bounds owed without a word back (it stopped reading), closes
//! it with 1013 "slow reader". A client that keeps sending while it does not read is not caught
//! by this (its own sends are budgeted by the core); a true backlog bound needs the runtime's
//! `bufferedAmount` or acknowledgements by sequence number (issue 19).

use super::Room;
use crate::{json_error, sessions};
use piano_core::room::{ConnId, Input, Protocol, fell_behind};
use worker::*;

/// Bytes a socket may be sent without the client sending anything back.
pub const DEFAULT_SLOW_READER_BYTES: usize = 1 << 20;

pub fn slow_reader_bytes(env: &Env) -> usize {
    crate::setting(env, "SLOW_READER_BYTES")
        .and_then(|v| v.trim().parse::<usize>().ok())
        // The web client says it reads every ACK_EVERY_BYTES; skipping starts at half the
        // bound, which must leave it room to.
        .filter(|n| *n >= 4 * piano_core::backlog::ACK_EVERY_BYTES)
        .unwrap_or(DEFAULT_SLOW_READER_BYTES)
}

/// A frame as the runtime takes it, made once and sent to any number of sockets: UTF-8 text for
/// the MPP relay's sockets, otherwise a copy in a buffer the runtime owns (it may read the
/// bytes after `send` returns; a view of wasm memory was seen sent as garbage).
pub enum Outgoing {
    Text(String),
    Binary(worker::js_sys::ArrayBuffer),
}

impl Outgoing {
    pub fn new(frame: &[u8], mpp: bool) -> Outgoing {
        match mpp {
            true => Outgoing::Text(String::from_utf8_lossy(frame).into_owned()),
            false => Outgoing::Binary(worker::js_sys::Uint8Array::from(frame).buffer()),
        }
    }

    pub fn send(&self, ws: &WebSocket, conn: ConnId) {
        let raw: &web_sys::WebSocket = ws.as_ref();
        let sent = match self {
            Outgoing::Text(t) => raw.send_with_str(t),
            Outgoing::Binary(b) => raw.send_with_array_buffer(b),
        };
        if let Err(e) = sent {
            crate::log::warn("room")
                .msg(format!("send to {conn} failed: {e:?}"))
                .emit();
        }
    }
}

/// Tells a socket that `skipped` note batches and cursor moves were not sent to it.
pub fn send_fell_behind(ws: &WebSocket, conn: ConnId, mpp: bool, skipped: u32) {
    let protocol = match mpp {
        true => Protocol::Mpp,
        false => Protocol::Protobuf,
    };
    Outgoing::new(&fell_behind(protocol, skipped), mpp).send(ws, conn);
}

/// The 429 of an upgrade over the per-user or per-network socket cap.
pub fn too_many_connections() -> Result<Response> {
    json_error(
        429,
        "too_many_connections",
        "you (or your network) already hold the most connections allowed in this room",
    )
}

impl Room {
    /// The client sent a frame: it is alive and reading; its socket's count starts over, and
    /// what was skipped for it is told now.
    pub(crate) fn client_read(&self, conn: ConnId) {
        let mut loaded = self.loaded.borrow_mut();
        let Some(l) = loaded.as_mut() else { return };
        if let Some(n) = l.unread.get_mut(&conn).and_then(|u| u.heard())
            && let Some(ws) = l.sockets.get(&conn)
        {
            send_fell_behind(ws, conn, l.mpp.contains(&conn), n);
        }
    }

    /// Whether the room's tables exist (cached: looking once per instance).
    pub(crate) fn storage_exists(&self) -> Result<bool> {
        if let Some(known) = self.has_storage.get() {
            return Ok(known);
        }
        let exists = crate::storage::exists(&self.state.storage().sql())?;
        self.has_storage.set(Some(exists));
        Ok(exists)
    }

    /// Creates the room's tables (first successful Join, or a first change to persist).
    pub(crate) fn ensure_storage(&self) {
        if self.has_storage.get() == Some(true) {
            return;
        }
        let name = self.room_name();
        match crate::storage::init(&self.state.storage().sql(), &name) {
            Ok(()) => self.has_storage.set(Some(true)),
            Err(e) => crate::log::error("storage")
                .msg(format!("room storage init failed: {e}"))
                .emit(),
        }
    }

    /// When the alarm must tick for expiring tokens and sessions. Only for a room with storage
    /// (an alarm would create the database): sockets that never joined keep their token's
    /// powers until they close, which is none beyond Ping and the room list.
    pub(crate) fn deadline(&self) -> Option<u64> {
        if self.has_storage.get() != Some(true) {
            return None;
        }
        let room = self
            .loaded
            .borrow()
            .as_ref()
            .and_then(|l| l.room.next_deadline());
        // Counted work not yet pushed (`metrics.rs`) must be pushed before the room sleeps.
        [room, self.pusher.borrow().deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Deletes the room's storage when the core asked to ([`Change::Discard`]) and it is still
    /// fresh and empty. Rows still waiting in the outbox keep it until the alarm delivered them.
    ///
    /// [`Change::Discard`]: piano_core::room::stored::Change::Discard
    pub(crate) async fn discard_if_asked(&self) {
        if !self.discard_asked.get() {
            return;
        }
        let empty = self
            .loaded
            .borrow()
            .as_ref()
            .is_none_or(|l| l.room.participant_count() == 0);
        if !empty {
            self.discard_asked.set(false);
            return;
        }
        if self.outbox.backends().is_some() {
            match self.outbox.status(&self.state.storage().sql()) {
                Ok(s) if s["pending"].as_u64() == Some(0) => {}
                // Delivered first; the alarm comes back here when the outbox is empty.
                _ => return,
            }
        }
        self.discard_asked.set(false);
        let storage = self.state.storage();
        if let Err(e) = storage.delete_alarm().await {
            crate::log::warn("storage")
                .msg(format!("discard: alarm not deleted: {e}"))
                .emit();
        }
        match storage.delete_all().await {
            Ok(()) => {
                self.has_storage.set(Some(false));
                self.outbox.forget_alarm();
            }
            Err(e) => crate::log::error("storage")
                .msg(format!("discard: storage not deleted: {e}"))
                .emit(),
        }
    }

    /// Tells each member's Account object that this room holds a socket of theirs, so logout,
    /// revocation and role changes reach it.
    pub(crate) async fn announce_sockets(&self) {
        let users = std::mem::take(&mut *self.announce.borrow_mut());
        if users.is_empty() {
            return;
        }
        let room = self.room_name();
        for user in users {
            if let Err(e) = sessions::announce(&self.env, &user, &room).await {
                crate::log::warn("room")
                    .msg(format!(
                        "could not tell {user}'s account about room {room}: {e}"
                    ))
                    .emit();
            }
        }
    }

    /// Adds a member's (`user:<name>`) activity to their Account object's totals
    /// (`crate::account_stats`, `POST /stats`).
    pub(crate) async fn add_to_account(
        &self,
        user_id: &str,
        delta: &piano_core::room::StatsDelta,
    ) -> Result<()> {
        let Some(account) = crate::account_stub(&self.env, user_id)? else {
            return Ok(());
        };
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(serde_json::to_string(delta)?.into()));
        let req = Request::new_with_init("https://account.internal/stats", &init)?;
        let resp = account.fetch_with_request(req).await?;
        match resp.status_code() {
            204 => Ok(()),
            s => Err(Error::RustError(format!("the account answered {s}"))),
        }
    }

    /// `POST /session {"user_id", "session_id"?, "changed"?}` from an Account object: a session
    /// ended (close 4001) or the user's roles changed (close 4002).
    pub(crate) async fn session_notice(&self, req: &mut Request) -> Result<Response> {
        let name = super::room_header(req)?;
        let notice: sessions::Notice = req.json().await?;
        let input = if notice.changed {
            Input::IdentityChanged {
                user_id: notice.user_id,
            }
        } else {
            Input::SessionEnded {
                user_id: notice.user_id,
                session_id: notice.session_id,
            }
        };
        let ops = self.handle(name.as_deref(), input);
        self.directory(ops).await;
        Response::empty()
    }
}
