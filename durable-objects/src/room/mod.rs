//! The Room Durable Object: the sans-I/O room from `piano-core` hosted on workers-rs.
//!
//! One object per room name. It is a thin adapter (docs/architecture.md §1): it accepts WebSockets with the
//! hibernation API, turns runtime events into [`piano_core::room::Input`]s and carries out the
//! returned effects. The object is only reachable through the edge worker's binding, which has
//! already verified the player's token and passes the identity in [`IDENTITY_HEADER`].
//!
//! Hibernation: the runtime may evict the object whenever no event is running; the WebSockets
//! stay open. Each socket's attachment holds its [`ConnRecord`], so the first event after a wake
//! rebuilds the same room from `get_websockets()`, and the sessions kept in SQLite bring back
//! the connections that dropped and may still resume ([`resume`]). No timers run while the
//! room is idle.
//!
//! Durability: the room's durable state (settings, crown, bans, mutes, chat) is written to the
//! object's SQLite storage as the core reports each [`Change`] (see [`storage`]), and read back
//! whenever the object is constructed, so it survives hibernation, eviction and restarts.
//!
//! Directory: the core's [`DirectoryOp`]s (reports on joins, leaves and settings changes, and
//! subscriptions) go to the [`lobby::Lobby`] object once the room's own effects are done; the
//! lobby pushes listing changes back with `POST /directory`.
//!
//! Internal routes (worker → object): `GET /connect` (WebSocket upgrade), `GET /info`; (lobby →
//! object): `POST /directory` (a listing change for subscribers), `POST /refresh` (report now).

mod directory;
pub(crate) mod host;
mod metrics;
mod resume;
mod stats;

use piano_core::backlog::{Unacked, Verdict};
use piano_core::identity::Identity;
use piano_core::limits::close;
use piano_core::lobby::Delta;
use piano_core::metrics::Fam;
use piano_core::names::percent_decode;
use piano_core::room::stored::Change;
use piano_core::room::{
    ConnId, ConnRecord, DirectoryOp, Effect, Frame, Input, Keep, Protocol, Room as CoreRoom,
};

use crate::outbox::Outbox;
use crate::{
    IDENTITY_HEADER, MPP_HEADER, PROTOCOL_HEADER, RELAY_CHANGE_ROOM, ROOM_HEADER, json_error,
    storage,
};
use piano_backends::layout;
use piano_backends::outbox::Lane;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use worker::*;

struct Loaded {
    room: CoreRoom,
    sockets: HashMap<ConnId, WebSocket>,
    /// The sockets that speak MPP JSON (the worker's relay sockets): sent text frames.
    mpp: HashSet<ConnId>,
    /// What each socket was sent (and skipped) since the client last sent a frame (see
    /// [`host`]).
    unread: HashMap<ConnId, Unacked>,
    /// Connections with a kept session (`resume.rs`): their ids are never given to new sockets.
    kept: HashSet<ConnId>,
}

#[durable_object]
pub struct Room {
    state: State,
    env: Env,
    loaded: RefCell<Option<Loaded>>,
    /// When this instance was constructed: a wake after hibernation makes a new instance.
    started_at: u64,
    /// Writes bound for MongoDB (settings, crown, bans, chat, user stats) and Redis (presence).
    outbox: Outbox,
    /// Whether the room's SQLite database holds the room (created at the first successful
    /// Join, deleted on `Change::Discard`); `None` until looked up.
    has_storage: Cell<Option<bool>>,
    /// Join passwords the core asked to check ([`Effect::VerifyPassword`]), run after the event.
    pending_checks: RefCell<Vec<(ConnId, String, piano_core::password::PasswordHash)>>,
    /// The core asked to delete the room's storage ([`Change::Discard`]).
    discard_asked: Cell<bool>,
    /// Members whose sockets here the Account object must learn about (user id, room name).
    announce: RefCell<Vec<String>>,
    /// Unread bytes after which a socket is closed as a slow reader (`SLOW_READER_BYTES`).
    slow_reader_bytes: usize,
    /// `RESUME_GRACE_MS` (`resume.rs`).
    resume_grace_ms: u64,
    /// What the room counted and has not yet pushed to the metrics aggregator (`metrics.rs`).
    pusher: RefCell<piano_core::metrics::push::Pusher>,
    /// Analytics Engine and the HTTP analytics sink.
    analytics: crate::analytics::Analytics,
    /// Members' activity for their Account objects' totals, sent after the event.
    member_stats: RefCell<Vec<(String, piano_core::room::StatsDelta)>>,
}

impl DurableObject for Room {
    fn new(state: State, env: Env) -> Self {
        crate::log::init(&env);
        Room {
            outbox: Outbox::new(&env),
            state,
            loaded: RefCell::new(None),
            started_at: now(),
            has_storage: Cell::new(None),
            pending_checks: RefCell::new(Vec::new()),
            discard_asked: Cell::new(false),
            announce: RefCell::new(Vec::new()),
            analytics: crate::analytics::Analytics::new(&env),
            member_stats: RefCell::new(Vec::new()),
            slow_reader_bytes: host::slow_reader_bytes(&env),
            resume_grace_ms: resume::grace_ms(&env),
            pusher: RefCell::default(),
            env,
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        crate::log::flush_panics_now();
        match req.path().as_str() {
            "/connect" => self.accept_player(&req).await,
            "/info" => self.info(&req).await,
            "/refresh" => {
                // The lobby's entry for this room is old: report afresh (loading the room, if
                // it was not in memory, reports by itself).
                let name = room_header(&req)?;
                let mut ops = self.handle_restore(name.as_deref());
                let fresh = match self.loaded.borrow_mut().as_mut() {
                    Some(l) if ops.is_empty() => l.room.refresh_report(now()),
                    _ => Vec::new(),
                };
                ops.extend(self.apply(fresh));
                self.directory(ops).await;
                Response::empty()
            }
            "/session" => self.session_notice(&mut req).await,
            "/outbox" => {
                let status = self.outbox.status(&self.state.storage().sql())?;
                Response::from_json(&status)
            }
            "/directory" => {
                let name = room_header(&req)?;
                let delta: Delta = req.json().await?;
                let ops = self.handle(name.as_deref(), Input::RoomListChanged(delta));
                self.directory(ops).await;
                let subscribed = self
                    .loaded
                    .borrow()
                    .as_ref()
                    .is_some_and(|l| l.room.has_subscribers());
                // 410 tells the lobby to stop pushing here.
                Response::empty().map(|r| r.with_status(if subscribed { 204 } else { 410 }))
            }
            // Test-only (`PIANO_TEST_ROUTES=1`): a panic inside the object, for the reports' trial.
            p if p.starts_with("/debug/panic/") && crate::log::test_routes(&self.env) => {
                panic!("debug panic requested in a room {p}")
            }
            _ => json_error(404, "not_found", "no such room route"),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        crate::log::flush_panics_now();
        // Frames of a socket the room already closed are dropped before they get here
        // (worker/entry.mjs).
        let Some(conn) = conn_of(&ws) else {
            let _ = ws.close(Some(close::INTERNAL_ERROR), Some("connection state lost"));
            return Ok(());
        };
        self.client_read(conn);
        let frame = match &message {
            WebSocketIncomingMessage::Binary(b) => Frame::Binary(b),
            WebSocketIncomingMessage::String(s) => Frame::Text(s),
        };
        let ops = self.handle(None, Input::Frame { conn, frame });
        self.directory(ops).await;
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        crate::log::flush_panics_now();
        let ops = self.drop_socket(&ws, Some(code));
        // Complete the closing handshake (a no-op if the runtime already did).
        let _ = ws.close(Some(close::NORMAL), Some("bye"));
        self.directory(ops).await;
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: Error) -> Result<()> {
        crate::log::flush_panics_now();
        let ops = self.drop_socket(&ws, None);
        self.directory(ops).await;
        Ok(())
    }

    /// The core's deadline (tokens and sessions that ended close their sockets with 4001;
    /// players' activity due reaches its totals) and the outbox's delivery.
    async fn alarm(&self) -> Result<Response> {
        crate::log::flush_panics_now();
        self.outbox.begin_alarm();
        let started = now();
        let ops = self.handle_at(None, Input::Tick, self.outbox.alarm_now(started));
        let sql = self.state.storage().sql();
        let flushed = self.outbox.flush(&sql, now()).await;
        self.step("alarm: flushed", started);
        let outbox_empty = flushed.as_ref().is_ok_and(|f| f.pending == 0);
        // Counted work goes now (the room may hibernate after this), before the next alarm is
        // chosen: a push that was due would otherwise ask for an alarm at once.
        self.push_metrics(true).await;
        self.step("alarm: metrics pushed", started);
        let resp = self
            .outbox
            .finish_alarm(&self.state.storage(), &sql, flushed, self.deadline(), now())
            .await;
        self.step("alarm: next alarm set", started);
        if outbox_empty {
            self.discard_if_asked().await;
        }
        self.directory(ops).await;
        self.step("alarm: done", started);
        resp
    }
}

impl Room {
    /// A debug line for a step of the alarm or of the work after an event (which ones finish,
    /// and when, is what a stuck room's log has to say), with the deadline it leaves.
    fn step(&self, what: &str, started: u64) {
        if !crate::log::enabled(piano_core::logging::Level::Debug) {
            return;
        }
        crate::log::debug("room_step")
            .room(self.room_name())
            .duration_ms(now().saturating_sub(started))
            .field("deadline", self.deadline().map_or(-1, |d| d as i64))
            .msg(what.to_owned())
            .emit();
    }

    async fn accept_player(&self, req: &Request) -> Result<Response> {
        let headers = req.headers();
        if !headers
            .get("upgrade")?
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return json_error(426, "upgrade_required", "expected a WebSocket upgrade");
        }
        let (Some(mut identity), Some(name)) = (
            headers
                .get(IDENTITY_HEADER)?
                .as_deref()
                .and_then(Identity::from_header),
            room_header(req)?,
        ) else {
            return json_error(400, "bad_request", "missing identity or room");
        };
        // The client's network (Cloudflare sets this header; the worker forwards it), for the
        // per-network socket cap and bans.
        identity.network = headers
            .get("cf-connecting-ip")?
            .map(|ip| piano_core::http_policy::network_key(&ip));

        let sql = self.state.storage().sql();
        // Nothing is written for a room before its first successful Join: a room new here is
        // imported only when the shared database has it (created on another deployment).
        let shared = if self.storage_exists()? {
            None
        } else {
            self.shared_room(&name).await
        };
        // Another player may have created the room while we asked MongoDB: then theirs
        // stands. A room only looked at (its info, a lobby refresh) was loaded with defaults
        // and nobody in it: it is reloaded from the imported state.
        let untouched = self
            .loaded
            .borrow()
            .as_ref()
            .is_none_or(|l| l.room.connection_count() == 0);
        if let Some(doc) = shared
            && untouched
            && !self.storage_exists()?
        {
            storage::init(&sql, &name)?;
            storage::import(&sql, &doc)?;
            self.has_storage.set(Some(true));
            *self.loaded.borrow_mut() = None;
        }
        // Load the room from the sockets accepted so far, before this one joins them.
        let restored = self.ensure_loaded(Some(&name))?;
        let mut ops = self.apply(restored);
        // Socket caps (per user, per network) are answered before the upgrade.
        let admitted = match self.loaded.borrow().as_ref() {
            Some(l) => l.room.admit_connection(&identity),
            None => Ok(()),
        };
        if admitted.is_err() {
            self.directory(ops).await;
            return host::too_many_connections();
        }
        let member = identity
            .session_id
            .is_some()
            .then(|| identity.user_id.clone());
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        let conn = self.fresh_conn_id();
        let mpp = headers.get(MPP_HEADER)?.is_some();
        if let Some(l) = self.loaded.borrow_mut().as_mut() {
            l.sockets.insert(conn, pair.server.clone());
            if mpp {
                l.mpp.insert(conn);
            }
        }
        crate::log::info(piano_core::logging::event::JOIN)
            .room(&name)
            .user(&identity.user_id)
            .conn(conn)
            .msg("connected to the room")
            .emit();
        let input = if mpp {
            Input::ConnectMpp { conn, identity }
        } else {
            Input::Connect { conn, identity }
        };
        ops.extend(self.handle(Some(&name), input));
        if let Some(user) = member {
            self.announce.borrow_mut().push(user);
        }
        self.directory(ops).await;

        let mut resp = Response::from_websocket(pair.client)?;
        if let Some(p) = headers.get(PROTOCOL_HEADER)? {
            resp.headers_mut().set("sec-websocket-protocol", &p)?;
        }
        Ok(resp)
    }

    /// A room new to this object may exist in the shared database (created on another
    /// deployment): its document, if MongoDB is configured and answers.
    async fn shared_room(&self, name: &str) -> Option<serde_json::Value> {
        let mongo = self.outbox.backends()?.mongo.as_ref()?;
        match mongo
            .find_one(layout::ROOMS, serde_json::json!({ "_id": name }))
            .await
        {
            Ok(doc) => doc,
            Err(e) => {
                crate::log::warn(piano_core::logging::event::BACKEND_ERROR)
                    .msg(format!(
                        "shared room lookup failed, starting {name} fresh: {e}"
                    ))
                    .emit();
                None
            }
        }
    }

    async fn info(&self, req: &Request) -> Result<Response> {
        let name = room_header(req)?;
        let restored = self.ensure_loaded(name.as_deref())?;
        let ops = self.apply(restored);
        self.directory(ops).await;
        let loaded = self.loaded.borrow();
        let Some(l) = loaded.as_ref() else {
            return json_error(500, "internal", "room not loaded");
        };
        let mut resp = Response::from_json(&serde_json::json!({
            "room": l.room.name(),
            "kind": l.room.kind().as_str(),
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
        self.has_storage.set(Some(stored.is_some()));
        let mut sockets = HashMap::new();
        let mut mpp = HashSet::new();
        let mut records = Vec::new();
        for ws in self.state.get_websockets() {
            match ws.deserialize_attachment::<ConnRecord>() {
                Ok(Some(record)) => {
                    if record.protocol == Protocol::Mpp {
                        mpp.insert(record.conn);
                    }
                    sockets.insert(record.conn, ws);
                    records.push(record);
                }
                // A socket without a record cannot be placed in the room; it must reconnect.
                _ => {
                    let _ = ws.close(Some(close::INTERNAL_ERROR), Some("connection state lost"));
                }
            }
        }
        crate::log::debug("room_step")
            .room(name.clone())
            .field("sockets", records.len())
            .msg("room loaded (first use, or the object was evicted or restarted)")
            .emit();
        // Sessions kept for resuming: connections whose sockets went with the room's memory (a
        // restart; a drop noticed meanwhile) come back suspended, keeping their old ids.
        let kept = match stored {
            Some(_) => resume::load_kept(&sql, self.resume_grace_ms),
            None => Default::default(),
        };
        let kept_conns = kept.sessions.iter().map(|s| s.record.conn).collect();
        let limits = piano_core::room::budget::Limits {
            resume_grace_ms: self.resume_grace_ms,
            ..Default::default()
        };
        let (mut room, effects) =
            CoreRoom::restore_configured(name, stored, records, kept, limits, now(), random_seed());
        resume::configure(&mut room, self.resume_grace_ms);
        // Players' activity: members' totals (their Account objects, MongoDB's `user_stats`)
        // and the analytics events; counted always (the stats endpoint needs no MongoDB).
        room.count_activity(true);
        // Presence continues from what was published before (kept in SQLite), so players who
        // left while the object was down (a restart, a deploy) are taken out.
        if self.outbox.wants(Lane::Redis) {
            room.resume_presence(storage::present(&sql)?);
        }
        *self.loaded.borrow_mut() = Some(Loaded {
            room,
            sockets,
            mpp,
            unread: HashMap::new(),
            kept: kept_conns,
        });
        Ok(effects)
    }

    /// Loads the room if needed and carries out what restoring asked for.
    fn handle_restore(&self, name_hint: Option<&str>) -> Vec<DirectoryOp> {
        match self.ensure_loaded(name_hint) {
            Ok(restored) => self.apply(restored),
            Err(e) => {
                crate::log::error("storage")
                    .msg(format!("room load failed: {e}"))
                    .emit();
                Vec::new()
            }
        }
    }

    /// Feeds the core and carries out its effects; returns the directory work left to do.
    fn handle(&self, name_hint: Option<&str>, input: Input<'_>) -> Vec<DirectoryOp> {
        self.handle_at(name_hint, input, now())
    }

    /// [`Room::handle`] at a given time (the alarm's Tick: see `Outbox::alarm_now`).
    fn handle_at(&self, name_hint: Option<&str>, input: Input<'_>, at: u64) -> Vec<DirectoryOp> {
        let mut ops = self.handle_restore(name_hint);
        let (effects, first_join) = match self.loaded.borrow_mut().as_mut() {
            Some(l) => {
                let before = l.room.participant_count();
                let effects = l.room.handle(input, at);
                (effects, l.room.participant_count() > before)
            }
            None => return ops,
        };
        if first_join {
            // The room's storage begins with its first successful Join.
            self.ensure_storage();
        }
        ops.extend(self.apply(effects));
        ops
    }

    /// After an event: the outbox's new rows go out now, and the core's next deadline (token
    /// and session expiry, players' activity due: it may then be evicted with it in memory)
    /// gets the alarm.
    async fn arm_alarm(&self) {
        let storage = self.state.storage();
        let at = now();
        if let Err(e) = self.outbox.kick(&storage, at).await {
            crate::log::error("outbox")
                .msg(format!("could not arm the outbox alarm: {e}"))
                .emit();
        }
        if let Some(deadline) = self.deadline()
            && let Err(e) = self.outbox.alarm_by(&storage, deadline, at).await
        {
            crate::log::error("storage")
                .msg(format!("could not arm the expiry alarm: {e}"))
                .emit();
        }
    }

    /// Carries out effects in order, returning the directory work for later. A failed send on
    /// one socket (it may be closing) never stops the others; a failed storage write is logged
    /// and the room keeps playing.
    fn apply(&self, effects: Vec<Effect>) -> Vec<DirectoryOp> {
        let mut ops = Vec::new();
        if effects.is_empty() {
            return ops;
        }
        if effects.iter().any(|e| {
            matches!(e, Effect::Persist(c) if !matches!(c, Change::Discard))
                || matches!(e, Effect::Keep(Keep::Session(_) | Keep::Replay(_)))
        }) {
            self.ensure_storage();
        }
        let mut loaded = self.loaded.borrow_mut();
        let Some(l) = loaded.as_mut() else { return ops };
        let sql = self.state.storage().sql();
        let mut mirrored: Vec<Change> = Vec::new();
        let mut slow: Vec<ConnId> = Vec::new();
        let mut published = Vec::new();
        for effect in effects {
            match effect {
                Effect::Keep(keep) => self.keep(l, &sql, keep),
                Effect::Send {
                    to,
                    frame,
                    delivery,
                } => {
                    // One JS buffer per broadcast, handed to every socket; MPP connections are
                    // sent their own Sends (UTF-8 JSON) as text. The targets of one Send all
                    // speak one protocol: the first says which.
                    let mpp = !l.mpp.is_empty()
                        && to.as_slice().first().is_some_and(|c| l.mpp.contains(c));
                    let out = host::Outgoing::new(&frame, mpp);
                    for conn in to.as_slice() {
                        let Some(ws) = l.sockets.get(conn) else {
                            continue;
                        };
                        let unread = l.unread.entry(*conn).or_default();
                        match unread.offer(delivery, frame.len(), self.slow_reader_bytes) {
                            Verdict::Skip => {
                                self.count(Fam::FramesSkipped);
                                continue;
                            }
                            Verdict::Close => {
                                if !slow.contains(conn) {
                                    slow.push(*conn);
                                    self.count(Fam::SlowConsumerCloses);
                                }
                                continue;
                            }
                            Verdict::Queue { notice: None } => {}
                            Verdict::Queue { notice: Some(n) } => {
                                host::send_fell_behind(ws, *conn, mpp, n)
                            }
                        }
                        out.send(ws, *conn);
                    }
                }
                Effect::VerifyPassword {
                    conn,
                    password,
                    hash,
                } => self
                    .pending_checks
                    .borrow_mut()
                    .push((conn, password, hash)),
                Effect::Persist(Change::Discard) => {
                    // Deleted after the event (and after the outbox delivered its rows).
                    self.discard_asked.set(true);
                    if self.outbox.wants(Lane::Mongo) {
                        mirrored.push(Change::Discard);
                    }
                }
                // A suspended connection has no socket: nothing to close.
                Effect::Close { conn, code, reason } => {
                    l.unread.remove(&conn);
                    l.mpp.remove(&conn);
                    if let Some(ws) = l.sockets.remove(&conn) {
                        let (level, name) = piano_core::logging::for_close(code);
                        crate::log::at(level, name)
                            .room(l.room.name())
                            .conn(conn)
                            .field("code", code)
                            .field("reason", reason)
                            .msg("socket closed")
                            .emit();
                        let _ = ws.close(Some(code), Some(reason));
                    }
                }
                // An MPP connection left for another room: its relay (the worker) takes the
                // client there on hearing so.
                Effect::ChangeRoom { conn, room, frame } => {
                    l.unread.remove(&conn);
                    l.mpp.remove(&conn);
                    if let Some(ws) = l.sockets.remove(&conn) {
                        let note = serde_json::json!({
                            "relay": RELAY_CHANGE_ROOM, "room": room, "frame": frame,
                        });
                        let _ = ws.send_with_str(note.to_string());
                        let _ = ws.close(Some(close::NORMAL), Some("room change"));
                    }
                }
                Effect::Remember(record) => {
                    if let Some(ws) = l.sockets.get(&record.conn)
                        && let Err(e) = ws.serialize_attachment(&record)
                    {
                        crate::log::error("storage")
                            .msg(format!("attachment write failed: {e}"))
                            .emit();
                    }
                }
                Effect::Persist(change) => {
                    if self.outbox.wants(Lane::Mongo) {
                        mirrored.push(change.clone());
                    }
                    if let Err(e) = storage::write(&sql, change) {
                        crate::log::error("storage")
                            .msg(format!("storage write failed: {e}"))
                            .emit();
                    }
                }
                Effect::Directory(op) => ops.push(op),
                // After the loop: they write SQLite and the outbox, which the room's own
                // effects never wait on.
                e @ (Effect::Presence { .. } | Effect::Stats(_)) => published.push(e),
            }
        }
        // The mirror for MongoDB is queued in the same step as the changes (one commit), each
        // field's final state only (the core's coalescing, as in the fallback).
        if let Some(b) = self.outbox.backends().filter(|_| !mirrored.is_empty()) {
            let at = now();
            let ops: Vec<_> = piano_core::outbox::final_changes(&mirrored)
                .into_iter()
                .map(|c| layout::room_change(&b.deployment, l.room.name(), c, at))
                .collect();
            if let Err(e) = self.outbox.enqueue(&sql, ops, at) {
                crate::log::error("outbox")
                    .msg(format!("outbox write failed: {e}"))
                    .emit();
            }
        }
        // Slow readers are closed (1013) and leave the room like any disconnect.
        for conn in &slow {
            l.unread.remove(conn);
            l.mpp.remove(conn);
            if let Some(ws) = l.sockets.remove(conn) {
                let _ = ws.close(Some(close::TRY_AGAIN_LATER), Some("slow reader"));
            }
        }
        let room_name = l.room.name().to_owned();
        drop(loaded);
        for e in published {
            match e {
                Effect::Presence { joined, left } => {
                    self.publish_presence(&room_name, joined, left)
                }
                Effect::Stats(deltas) => self.add_stats(&room_name, deltas),
                _ => {}
            }
        }
        for conn in slow {
            crate::log::warn("slow_reader")
                .msg(format!("closed slow reader {conn}"))
                .emit();
            ops.extend(self.handle(None, Input::Disconnect { conn }));
        }
        ops
    }
}

/// The room name the worker (or the lobby) put in [`ROOM_HEADER`].
fn room_header(req: &Request) -> Result<Option<String>> {
    Ok(req
        .headers()
        .get(ROOM_HEADER)?
        .and_then(|n| percent_decode(&n)))
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

fn now() -> u64 {
    Date::now().as_millis()
}
