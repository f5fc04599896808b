//! The replica's shared state: its players' sockets, the rooms it runs, the rooms its players
//! follow elsewhere (cluster mode), and its copy of the room directory.
//!
//! Routing a player: [`Hub::attach`] finds the room's runner. Without Redis that is always a
//! local room task (started on first use, restored from SQLite). With Redis it is whoever holds
//! the room's lease: this replica (a local task, restored from Redis) or another one, to which
//! the player's frames are published ([`Route::Remote`]); the holder publishes its broadcasts
//! back, once per replica, and this replica hands the same `Bytes` to each local socket.
//!
//! Sockets never block a room: each has a bounded outbound queue, and a connection whose queue
//! is full is closed ([`SLOW_CONSUMER`]) rather than slowing everyone else down.

use crate::cluster::{self, Cluster, Lease, replica_channel};
use crate::config::Config;
use crate::directory::{PendingReports, directory_writer, push_deltas, sweep_directory};
use crate::metrics::{METRICS, redis_error};
use crate::reach::{self, Reach};
use crate::room_task::{RoomEntry, RoomInfo, RoomMsg};
use crate::store::Store;
use crate::wire::Wire;
use crate::{now_ms, now_us};
use bytes::Bytes;
use futures_util::StreamExt;
use piano_core::identity::Identity;
use piano_core::lobby::{Directory, PUSH_TICK_MS, Report, Subscribers, Summary};
use piano_core::room::ConnId;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
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

struct LocalConn {
    tx: mpsc::Sender<Outbound>,
    /// Tells the socket's writer to close at once, bypassing a full queue.
    kill: Option<oneshot::Sender<(u16, String)>>,
    /// A close was already asked for: the first code is the one the client must see (frames
    /// still in flight after a 1008 would otherwise earn an "unknown connection" close too).
    closing: bool,
}

/// Where a player's frames go.
pub enum Route {
    Local(mpsc::Sender<RoomMsg>),
    Remote { holder: String, room: String },
}

pub struct Hub {
    pub cfg: Config,
    pub store: Store,
    pub cluster: Option<Cluster>,
    pub mongo: Option<Arc<crate::mongo::Mongo>>,
    pub(crate) directory: Mutex<Directory>,
    /// Who follows the room list from which rooms (standalone; in Redis with `REDIS_URL`).
    pub(crate) subscribers: Mutex<Subscribers>,
    /// Reports waiting to be written to the shared directory (cluster mode): the latest per
    /// room only (a report is the room's whole summary), so the backlog is bounded by the
    /// number of rooms however slow Redis is.
    directory_pending: Option<Arc<PendingReports>>,
    rooms: Mutex<HashMap<String, RoomEntry>>,
    conns: Mutex<HashMap<ConnId, LocalConn>>,
    /// Local connections whose room runs on another replica: conn → (room, holder).
    follows: Mutex<HashMap<ConnId, (String, String)>>,
    /// One room start at a time, so two players arriving together start it once.
    pub(crate) starting: tokio::sync::Mutex<()>,
    pub draining: AtomicBool,
    /// Open WebSockets per client network on this replica (`MAX_WEBSOCKETS_PER_IP`).
    pub sockets: Arc<crate::serve::ConnLimits>,
    /// Cluster mode: subscribed to this replica's channel (required before taking leases).
    pub subscribed: AtomicBool,
    pub started_at: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole replica down with poisoned locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(
        cfg: Config,
        store: Store,
        cluster: Option<Cluster>,
        mongo: Option<Arc<crate::mongo::Mongo>>,
    ) -> Arc<Hub> {
        let directory_pending = cluster
            .is_some()
            .then(|| Arc::new(PendingReports::default()));
        let sockets = crate::serve::ConnLimits::new(usize::MAX, cfg.max_sockets_per_ip);
        let hub = Arc::new(Hub {
            cfg,
            store,
            cluster,
            mongo,
            directory: Mutex::new(Directory::new().coalesce_every(PUSH_TICK_MS)),
            subscribers: Mutex::new(Subscribers::new()),
            directory_pending: directory_pending.clone(),
            rooms: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            follows: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
            sockets,
            subscribed: AtomicBool::new(false),
            started_at: now_ms(),
        });
        tokio::spawn(push_deltas(hub.clone()));
        if let Some(pending) = directory_pending {
            tokio::spawn(directory_writer(hub.clone(), pending));
            tokio::spawn(pubsub_loop(hub.clone()));
            tokio::spawn(watchdog(hub.clone()));
        }
        hub
    }

    pub fn replica(&self) -> &str {
        &self.cfg.replica_id
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(SeqCst) && (self.cluster.is_none() || self.subscribed.load(SeqCst))
    }

    // -- local sockets -------------------------------------------------------------------

    pub fn register(
        &self,
        conn: ConnId,
        tx: mpsc::Sender<Outbound>,
        kill: oneshot::Sender<(u16, String)>,
    ) {
        lock(&self.conns).insert(
            conn,
            LocalConn {
                tx,
                kill: Some(kill),
                closing: false,
            },
        );
    }

    pub fn unregister(&self, conn: ConnId) {
        lock(&self.conns).remove(&conn);
        lock(&self.follows).remove(&conn);
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

    /// Queues a ping; a full queue skips it (that socket is about to be closed as slow anyway).
    pub fn ping(&self, conn: ConnId) {
        if let Some(c) = lock(&self.conns).get(&conn) {
            let _ = c.tx.try_send(Outbound::Ping);
        }
    }

    /// Closes a local socket after what is already queued for it.
    pub fn close_local(&self, conn: ConnId, code: u16, reason: &str) {
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

    pub fn local_connections(&self) -> usize {
        lock(&self.conns).len()
    }

    // -- rooms ---------------------------------------------------------------------------

    pub(crate) fn room_tx(&self, room: &str) -> Option<mpsc::Sender<RoomMsg>> {
        lock(&self.rooms).get(room).map(|e| e.tx.clone())
    }

    pub(crate) fn rooms_lock(&self) -> MutexGuard<'_, HashMap<String, RoomEntry>> {
        lock(&self.rooms)
    }

    /// Places a new connection in its room; the route for its frames, or a close code.
    pub async fn attach(
        self: &Arc<Self>,
        room: &str,
        conn: ConnId,
        identity: &Identity,
    ) -> Result<Route, (u16, &'static str)> {
        for _ in 0..8 {
            if let Some(tx) = self.room_tx(room) {
                let msg = RoomMsg::Connect {
                    conn,
                    identity: identity.clone(),
                    origin: None,
                };
                if tx.send(msg).await.is_ok() {
                    return Ok(Route::Local(tx));
                }
                // The room task just retired; start it again.
                continue;
            }
            let guard = self.starting.lock().await;
            if self.room_tx(room).is_some() {
                continue;
            }
            let Some(cluster) = &self.cluster else {
                if let Err(e) = crate::room_task::start(self, room).await {
                    tracing::error!(room, error = %e, "could not start a room");
                    return Err((
                        piano_core::limits::close::INTERNAL_ERROR,
                        "the room could not be loaded",
                    ));
                }
                continue;
            };
            if !self.subscribed.load(SeqCst) {
                return Err((TRY_AGAIN_LATER, "not connected to Redis yet: reconnect"));
            }
            match cluster.acquire(room).await {
                Ok(Lease::Mine) => {
                    if let Err(e) = crate::room_task::start(self, room).await {
                        tracing::error!(room, error = %e, "could not start a room");
                        cluster.release_if(room, self.replica()).await;
                        return Err((
                            piano_core::limits::close::INTERNAL_ERROR,
                            "the room could not be loaded",
                        ));
                    }
                }
                Ok(Lease::HeldBy(holder)) => {
                    drop(guard);
                    let connect = Wire::Connect {
                        room: room.to_owned(),
                        conn,
                        from: self.replica().to_owned(),
                        identity: identity.clone(),
                    };
                    lock(&self.follows).insert(conn, (room.to_owned(), holder.clone()));
                    match cluster
                        .publish(&replica_channel(&holder), connect.encode())
                        .await
                    {
                        Ok(n) if n > 0 => {
                            return Ok(Route::Remote {
                                holder,
                                room: room.to_owned(),
                            });
                        }
                        Ok(_) => {
                            // Nobody listens on the holder's channel: it is gone. Its lease
                            // would lapse within the TTL; taking it now saves players seconds.
                            lock(&self.follows).remove(&conn);
                            tracing::info!(room, holder, "lease holder is gone; taking over");
                            cluster.release_if(room, &holder).await;
                        }
                        Err(e) => {
                            lock(&self.follows).remove(&conn);
                            redis_error("forwarding a connect", &e);
                            return Err((TRY_AGAIN_LATER, "Redis is unavailable: reconnect"));
                        }
                    }
                }
                Err(e) => {
                    redis_error("acquiring a lease", &e);
                    return Err((TRY_AGAIN_LATER, "Redis is unavailable: reconnect"));
                }
            }
        }
        Err((TRY_AGAIN_LATER, "the room is changing hands: reconnect"))
    }

    /// Room info as `GET /api/rooms/{name}` shows it.
    pub async fn info(&self, room: &str) -> serde_json::Value {
        let kind = piano_core::room::stored::RoomKind::of(room);
        if let Some(tx) = self.room_tx(room) {
            let (reply, rx) = oneshot::channel();
            if tx.send(RoomMsg::Info(reply)).await.is_ok()
                && let Ok(Ok(i)) = tokio::time::timeout(Duration::from_secs(2), rx).await
            {
                let RoomInfo {
                    participants,
                    connections,
                    started_at,
                } = i;
                return serde_json::json!({
                    "room": room, "kind": kind.as_str(), "participants": participants,
                    "connections": connections, "instance_started_at": started_at,
                    "served_by": self.replica(),
                });
            }
        }
        let players = lock(&self.directory)
            .get(room)
            .map(|r| r.summary.players)
            .unwrap_or(0);
        let served_by = match &self.cluster {
            Some(c) => c
                .holders(&[room.to_owned()])
                .await
                .ok()
                .and_then(|mut h| h.pop().flatten()),
            None => None,
        };
        serde_json::json!({
            "room": room, "kind": kind.as_str(), "participants": players,
            "connections": players, "instance_started_at": 0, "served_by": served_by,
        })
    }

    // -- directory -----------------------------------------------------------------------

    /// A room's report: applied here (single process) or published to every replica.
    pub fn report(&self, report: Report) {
        match &self.directory_pending {
            Some(p) => p.put(report),
            None => self.apply_report(report),
        }
    }

    pub(crate) fn apply_report(&self, report: Report) {
        // Listing changes are gathered and pushed as one net delta per tick ([`push_deltas`]).
        lock(&self.directory).report(report, now_ms());
    }

    /// Pushes the directory's net change to every room with subscribers.
    pub(crate) fn push_delta(&self) {
        let Some(delta) = lock(&self.directory).take_delta(now_ms()) else {
            return;
        };
        for entry in lock(&self.rooms).values() {
            // A room with no subscribers ignores it; a full queue skips one listing update,
            // which the next full list (on subscribe) corrects.
            let _ = entry.tx.try_send(RoomMsg::RoomListChanged(delta.clone()));
        }
    }

    pub fn listing(&self) -> Vec<Summary> {
        lock(&self.directory).listing()
    }

    /// The lobby `user` should join (`POST /api/lobby/next`). With Redis, the seat count must be
    /// shared by every replica or each would fill `lobby` on its own: the same rule as
    /// [`Directory::next_lobby`] runs as one atomic script over the shared directory hash and
    /// one reservation set per lobby.
    pub async fn next_lobby(&self, user: &str) -> String {
        if let Some(c) = &self.cluster {
            let script = redis::Script::new(cluster::NEXT_LOBBY);
            let mut call = script.prepare_invoke();
            call.arg(user)
                .arg(now_ms())
                .arg(piano_core::lobby::RESERVATION_MS)
                .arg(piano_core::lobby::LOBBY_CAPACITY);
            let placed: redis::RedisResult<String> = c.conn.script(&call).await;
            match placed {
                Ok(lobby) => return lobby,
                Err(e) => redis_error("placing a player in a lobby", &e),
            }
        }
        lock(&self.directory).next_lobby(user, now_ms())
    }

    // -- cluster messages ----------------------------------------------------------------

    async fn on_wire(&self, wire: Wire) {
        let cluster = match &self.cluster {
            Some(c) => c,
            None => return,
        };
        let refuse = |conn: ConnId, from: String| async move {
            let close = Wire::Close {
                conn,
                code: SERVICE_RESTART,
                reason: "the room moved: reconnect".into(),
            };
            if let Err(e) = cluster
                .publish(&replica_channel(&from), close.encode())
                .await
            {
                redis_error("refusing a connection", &e);
            }
        };
        match wire {
            Wire::Connect {
                room,
                conn,
                from,
                identity,
            } => {
                let msg = RoomMsg::Connect {
                    conn,
                    identity,
                    origin: Some(from.clone()),
                };
                match self.room_tx(&room) {
                    Some(tx) if tx.send(msg).await.is_ok() => {}
                    _ => refuse(conn, from).await,
                }
            }
            Wire::Frame {
                room,
                conn,
                binary,
                at_us,
                data,
            } => {
                if let Some(tx) = self.room_tx(&room) {
                    let _ = tx
                        .send(RoomMsg::Frame {
                            conn,
                            data,
                            binary,
                            at_us,
                        })
                        .await;
                }
            }
            Wire::Disconnect { room, conn } => {
                if let Some(tx) = self.room_tx(&room) {
                    let _ = tx.send(RoomMsg::Disconnect { conn }).await;
                }
            }
            Wire::Deliver { at_us, conns, data } => {
                for c in &conns {
                    self.deliver(*c, &data);
                }
                if at_us > 0 {
                    METRICS
                        .relay_latency
                        .observe_us(now_us().saturating_sub(at_us));
                }
            }
            Wire::Close { conn, code, reason } => {
                lock(&self.follows).remove(&conn);
                self.close_local(conn, code, &reason);
            }
        }
    }

    /// Rebuilds the directory copy from the shared hash (after (re)subscribing).
    async fn load_directory(&self) {
        let Some(c) = &self.cluster else { return };
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(cluster::DIRECTORY);
        let all: redis::RedisResult<HashMap<String, String>> = c.conn.cmd(&cmd).await;
        match all {
            Ok(all) => {
                let reports = all
                    .values()
                    .filter_map(|v| serde_json::from_str::<Report>(v).ok());
                *lock(&self.directory) =
                    Directory::from_reports(reports).coalesce_every(PUSH_TICK_MS);
            }
            Err(e) => redis_error("loading the directory", &e),
        }
    }

    /// A session ended or roles changed: every room this replica runs is told (each checks its
    /// own connections).
    pub async fn reach_rooms(&self, event: Reach) {
        let rooms: Vec<mpsc::Sender<RoomMsg>> =
            lock(&self.rooms).values().map(|e| e.tx.clone()).collect();
        for tx in rooms {
            // Waits for room in a busy room's queue rather than dropping a revocation.
            let _ = tx.send(RoomMsg::Reach(event.clone())).await;
        }
    }

    // -- drain ---------------------------------------------------------------------------

    /// SIGTERM: refuse new players, tell every connected one to reconnect elsewhere
    /// ([`SERVICE_RESTART`]), save and hand over the rooms, and wait (bounded) for sockets to go.
    pub async fn drain(&self) {
        self.draining.store(true, SeqCst);
        let rooms: Vec<mpsc::Sender<RoomMsg>> =
            lock(&self.rooms).values().map(|e| e.tx.clone()).collect();
        tracing::info!(
            rooms = rooms.len(),
            connections = self.local_connections(),
            "draining"
        );
        for tx in rooms {
            let _ = tx
                .send(RoomMsg::Shutdown {
                    code: SERVICE_RESTART,
                    reason: "server restarting: reconnect".into(),
                    release: true,
                })
                .await;
        }
        let conns: Vec<ConnId> = lock(&self.conns).keys().copied().collect();
        for conn in conns {
            self.close_local(conn, SERVICE_RESTART, "server restarting: reconnect");
        }
        let deadline = tokio::time::Instant::now() + self.cfg.drain_timeout;
        // A room leaves the map when it stops, but is done only after saving (room store,
        // MongoDB) and releasing its lease: `piano_rooms` counts it until then.
        while tokio::time::Instant::now() < deadline
            && (METRICS.rooms.load(Relaxed) > 0 || self.local_connections() > 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(
            rooms = lock(&self.rooms).len(),
            connections = self.local_connections(),
            "drained"
        );
    }
}

/// Hands every session change the accounts emit to the rooms of the deployment (see
/// [`crate::reach`]).
pub async fn pass_on_reach(hub: Arc<Hub>, mut rx: mpsc::Receiver<Reach>) {
    while let Some(event) = rx.recv().await {
        tracing::info!(?event, "session change: closing affected sockets");
        if let Some(c) = &hub.cluster {
            let Ok(json) = serde_json::to_vec(&event) else {
                continue;
            };
            match c.publish(reach::CHANNEL, json.into()).await {
                // Our own subscription delivers it here too (`pubsub_loop`).
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => redis_error("publishing a session change", &e),
            }
        }
        hub.reach_rooms(event).await;
    }
}

/// This replica's subscription: its own channel (room traffic) and the directory channel.
/// Reconnects forever; while it is down the replica is not ready and takes no leases.
async fn pubsub_loop(hub: Arc<Hub>) {
    let Some(c) = &hub.cluster else { return };
    let own = replica_channel(hub.replica());
    loop {
        match c.client.get_async_pubsub().await {
            Ok(mut ps) => {
                let subscribed = async {
                    ps.subscribe(&own).await?;
                    ps.subscribe(reach::CHANNEL).await?;
                    ps.subscribe(cluster::DIRECTORY).await
                }
                .await;
                match subscribed {
                    Ok(()) => {
                        hub.load_directory().await;
                        hub.subscribed.store(true, SeqCst);
                        tracing::info!(channel = own, "subscribed");
                        let mut stream = ps.on_message();
                        while let Some(msg) = stream.next().await {
                            let payload: &[u8] = msg.get_payload_bytes();
                            if msg.get_channel_name() == reach::CHANNEL {
                                match serde_json::from_slice::<Reach>(payload) {
                                    Ok(event) => hub.reach_rooms(event).await,
                                    Err(e) => {
                                        tracing::warn!(error = %e, "unreadable session change")
                                    }
                                }
                            } else if msg.get_channel_name() == cluster::DIRECTORY {
                                if let Ok(report) = serde_json::from_slice::<Report>(payload) {
                                    hub.apply_report(report);
                                }
                            } else if let Some(wire) = Wire::decode(Bytes::copy_from_slice(payload))
                            {
                                hub.on_wire(wire).await;
                            }
                        }
                        hub.subscribed.store(false, SeqCst);
                        redis_error("pub/sub connection", &"closed");
                    }
                    Err(e) => redis_error("subscribing", &e),
                }
            }
            Err(e) => redis_error("pub/sub connect", &e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Followers' check on the replicas running their rooms: a holder that is gone (no subscriber
/// on its channel) or no longer holds the lease means the room moved or will restart; its
/// players here are told to reconnect ([`SERVICE_RESTART`]) and will find the new holder.
async fn watchdog(hub: Arc<Hub>) {
    let Some(c) = &hub.cluster else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(20) {
            sweep_directory(&hub, c).await;
        }
        let follows: Vec<(ConnId, String, String)> = lock(&hub.follows)
            .iter()
            .map(|(c, (r, h))| (*c, r.clone(), h.clone()))
            .collect();
        if follows.is_empty() {
            continue;
        }
        let mut rooms: Vec<String> = follows.iter().map(|f| f.1.clone()).collect();
        rooms.sort();
        rooms.dedup();
        let mut holders: Vec<String> = follows.iter().map(|f| f.2.clone()).collect();
        holders.sort();
        holders.dedup();
        let (leases, alive) = match (c.holders(&rooms).await, c.alive(&holders).await) {
            (Ok(l), Ok(a)) => (l, a),
            (Err(e), _) | (_, Err(e)) => {
                redis_error("watching lease holders", &e);
                continue;
            }
        };
        for (conn, room, holder) in follows {
            let lease = rooms
                .iter()
                .position(|r| *r == room)
                .and_then(|i| leases[i].clone());
            let up = holders
                .iter()
                .position(|h| *h == holder)
                .is_some_and(|i| alive[i]);
            if !up || lease.as_deref() != Some(holder.as_str()) {
                tracing::info!(
                    conn,
                    room,
                    holder,
                    up,
                    "room holder changed; asking the player to reconnect"
                );
                lock(&hub.follows).remove(&conn);
                if !up {
                    // Free the dead holder's lease now rather than when it lapses.
                    c.release_if(&room, &holder).await;
                }
                hub.close_local(conn, SERVICE_RESTART, "the room moved: reconnect");
            }
        }
    }
}
