//! The Room Durable Object: the sans-I/O room from `piano-core` hosted on workers-rs.
//!
//! One object per room name. It is a thin adapter (DESIGN §1): it accepts WebSockets with the
//! hibernation API, turns runtime events into [`piano_core::room::Input`]s and carries out the
//! returned effects. The object is only reachable through the edge worker's binding, which has
//! already verified the player's token and passes the identity in [`IDENTITY_HEADER`].
//!
//! Hibernation: the runtime may evict the object whenever no event is running; the WebSockets
//! stay open. Each socket's attachment holds its [`ConnRecord`], so the first event after a wake
//! rebuilds the same room from `get_websockets()`. No timers run while the room is idle.
//!
//! Durability: the room's durable state (settings, crown, bans, mutes, chat) is written to the
//! object's SQLite storage as the core reports each [`Change`] (see [`storage`]), and read back
//! whenever the object is constructed, so it survives hibernation, eviction and restarts.
//!
//! Internal routes (worker → object): `GET /connect` (WebSocket upgrade), `GET /info`.

use piano_core::identity::Identity;
use piano_core::limits::close;
use piano_core::names::percent_decode;
use piano_core::room::{ConnId, ConnRecord, Effect, Frame, Input, Room as CoreRoom};

mod storage;
use std::cell::RefCell;
use std::collections::HashMap;
use worker::js_sys::Uint8Array;
use worker::*;

/// Verified identity of the connecting player (base64url JSON), set only by the edge worker.
pub const IDENTITY_HEADER: &str = "x-piano-identity";
/// The room name, percent-encoded (headers are ASCII), set by the edge worker.
pub const ROOM_HEADER: &str = "x-piano-room";
/// The WebSocket subprotocol to echo to the client, if it offered one.
pub const PROTOCOL_HEADER: &str = "x-piano-subprotocol";

struct Loaded {
    room: CoreRoom,
    sockets: HashMap<ConnId, WebSocket>,
}

#[durable_object]
pub struct Room {
    state: State,
    loaded: RefCell<Option<Loaded>>,
    /// When this instance was constructed: a wake after hibernation makes a new instance.
    started_at: u64,
}

impl DurableObject for Room {
    fn new(state: State, _env: Env) -> Self {
        Room {
            state,
            loaded: RefCell::new(None),
            started_at: now(),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        match req.path().as_str() {
            "/connect" => self.accept_player(&req),
            "/info" => self.info(&req),
            _ => json_error(404, "not_found", "no such room route"),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(conn) = conn_of(&ws) else {
            let _ = ws.close(Some(close::INTERNAL_ERROR), Some("connection state lost"));
            return Ok(());
        };
        let frame = match &message {
            WebSocketIncomingMessage::Binary(b) => Frame::Binary(b),
            WebSocketIncomingMessage::String(s) => Frame::Text(s),
        };
        self.handle(None, Input::Frame { conn, frame });
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        self.drop_socket(&ws);
        // Complete the closing handshake (a no-op if the runtime already did).
        let _ = ws.close(Some(close::NORMAL), Some("bye"));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: Error) -> Result<()> {
        self.drop_socket(&ws);
        Ok(())
    }
}

impl Room {
    fn accept_player(&self, req: &Request) -> Result<Response> {
        let headers = req.headers();
        if !headers
            .get("upgrade")?
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return json_error(426, "upgrade_required", "expected a WebSocket upgrade");
        }
        let (Some(identity), Some(name)) = (
            headers
                .get(IDENTITY_HEADER)?
                .as_deref()
                .and_then(Identity::from_header),
            headers.get(ROOM_HEADER)?.and_then(|n| percent_decode(&n)),
        ) else {
            return json_error(400, "bad_request", "missing identity or room");
        };

        let pair = WebSocketPair::new()?;
        // Load the room from the sockets accepted so far, before this one joins them.
        let restored = self.ensure_loaded(Some(&name))?;
        self.apply(restored);
        self.state.accept_web_socket(&pair.server);
        let conn = new_conn_id();
        if let Some(l) = self.loaded.borrow_mut().as_mut() {
            l.sockets.insert(conn, pair.server.clone());
        }
        self.handle(Some(&name), Input::Connect { conn, identity });

        let mut resp = Response::from_websocket(pair.client)?;
        if let Some(p) = headers.get(PROTOCOL_HEADER)? {
            resp.headers_mut().set("sec-websocket-protocol", &p)?;
        }
        Ok(resp)
    }

    fn info(&self, req: &Request) -> Result<Response> {
        let name = req
            .headers()
            .get(ROOM_HEADER)?
            .and_then(|n| percent_decode(&n));
        self.ensure_loaded(name.as_deref())?;
        let loaded = self.loaded.borrow();
        let Some(l) = loaded.as_ref() else {
            return json_error(500, "internal", "room not loaded");
        };
        let mut resp = Response::from_json(&serde_json::json!({
            "room": l.room.name(),
            "participants": l.room.participant_count(),
            "connections": l.room.connection_count(),
            "instance_started_at": self.started_at,
        }))?;
        resp.headers_mut().set("cache-control", "no-store")?;
        Ok(resp)
    }

    /// Rebuilds the in-memory room after construction (first use or wake from hibernation);
    /// returns what the core asks for on restore (a crown that fell while the host was down).
    fn ensure_loaded(&self, name_hint: Option<&str>) -> Result<Vec<Effect>> {
        if self.loaded.borrow().is_some() {
            return Ok(Vec::new());
        }
        let sql = self.state.storage().sql();
        let (name, stored) = storage::load(&sql, name_hint)?;
        let mut sockets = HashMap::new();
        let mut records = Vec::new();
        for ws in self.state.get_websockets() {
            match ws.deserialize_attachment::<ConnRecord>() {
                Ok(Some(record)) => {
                    sockets.insert(record.conn, ws);
                    records.push(record);
                }
                // A socket without a record cannot be placed in the room; it must reconnect.
                _ => {
                    let _ = ws.close(Some(close::INTERNAL_ERROR), Some("connection state lost"));
                }
            }
        }
        let (room, effects) = CoreRoom::restore(name, stored, records, now(), random_seed());
        *self.loaded.borrow_mut() = Some(Loaded { room, sockets });
        Ok(effects)
    }

    fn drop_socket(&self, ws: &WebSocket) {
        if let Some(conn) = conn_of(ws) {
            self.handle(None, Input::Disconnect { conn });
            if let Some(l) = self.loaded.borrow_mut().as_mut() {
                l.sockets.remove(&conn);
            }
        }
    }

    /// Feeds the core and carries out its effects.
    fn handle(&self, name_hint: Option<&str>, input: Input<'_>) {
        match self.ensure_loaded(name_hint) {
            Ok(restored) => self.apply(restored),
            Err(e) => {
                console_error!("room load failed: {e}");
                return;
            }
        }
        let effects = match self.loaded.borrow_mut().as_mut() {
            Some(l) => l.room.handle(input, now()),
            None => return,
        };
        self.apply(effects);
    }

    /// Carries out effects in order. A failed send on one socket (it may be closing) never stops
    /// the others; a failed storage write is logged and the room keeps playing.
    fn apply(&self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let mut loaded = self.loaded.borrow_mut();
        let Some(l) = loaded.as_mut() else { return };
        let sql = self.state.storage().sql();
        for effect in effects {
            match effect {
                Effect::Send { to, frame } => {
                    // One JS buffer per broadcast, handed to every socket.
                    let buffer = Uint8Array::from(&frame[..]).buffer();
                    for conn in to.as_slice() {
                        if let Some(ws) = l.sockets.get(conn) {
                            let raw: &web_sys::WebSocket = ws.as_ref();
                            if let Err(e) = raw.send_with_array_buffer(&buffer) {
                                console_warn!("send to {conn} failed: {e:?}");
                            }
                        }
                    }
                }
                Effect::Close { conn, code, reason } => {
                    if let Some(ws) = l.sockets.remove(&conn) {
                        let _ = ws.close(Some(code), Some(reason));
                    }
                }
                Effect::Remember(record) => {
                    if let Some(ws) = l.sockets.get(&record.conn)
                        && let Err(e) = ws.serialize_attachment(&record)
                    {
                        console_error!("attachment write failed: {e}");
                    }
                }
                Effect::Persist(change) => {
                    if let Err(e) = storage::write(&sql, change) {
                        console_error!("storage write failed: {e}");
                    }
                }
            }
        }
    }
}

/// The connection id stored in the socket's attachment.
fn conn_of(ws: &WebSocket) -> Option<ConnId> {
    #[derive(serde::Deserialize)]
    struct JustConn {
        conn: ConnId,
    }
    ws.deserialize_attachment::<JustConn>()
        .ok()
        .flatten()
        .map(|r| r.conn)
}

/// Randomness for the core (password salts), fresh per instance.
fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::getrandom(&mut seed).is_err() {
        seed[..8].copy_from_slice(&now().to_le_bytes());
    }
    seed
}

/// Random connection ids below 2^53, so they survive a trip through a JavaScript number.
fn new_conn_id() -> ConnId {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // crypto.getRandomValues does not fail in workerd; fall back to the clock anyway.
        return now() & ((1 << 53) - 1);
    }
    u64::from_le_bytes(b) & ((1 << 53) - 1)
}

fn now() -> u64 {
    Date::now().as_millis()
}

/// The JSON error shape used by every HTTP endpoint.
pub fn json_error(status: u16, code: &str, message: &str) -> Result<Response> {
    Ok(
        Response::from_json(&serde_json::json!({ "error": { "code": code, "message": message } }))?
            .with_status(status),
    )
}
