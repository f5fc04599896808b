//! The replica's shared state: its players' sockets, the rooms it runs, the rooms its players
//! follow elsewhere (cluster mode), and its copy of the room directory.
//!
//! Routing a player: [`Hub::attach`] finds the room's runner. Without Redis that is always a
//! local room task (started on first use, restored from SQLite). With Redis it is whoever holds
//! the room's lease: this replica (a local task, restored from Redis) or another one, to which
//! the player's frames are published ([`Route::Remote`]); the holder publishes its broadcasts
//! back, once per replica, and this replica hands the same `Bytes` to each local socket.
//!
//! The hub builds what the rooms share (the socket table [`Sockets`], the room map [`Rooms`],
//! the [`RoomDirectory`]) and hands each room task a [`room_task::Ctx`] of them: rooms never
//! call back into the hub.

use crate::cluster::{self, Cluster, Lease, replica_channel};
use crate::config::Config;
use crate::directory::{RoomDirectory, directory_writer, sweep_directory};
use crate::metrics::{METRICS, redis_error};
use crate::mongo::Mongo;
use crate::reach::{self, Reach};
use crate::room_task::{self, RoomInfo, RoomMsg, Rooms};
use crate::sockets::{SERVICE_RESTART, Sockets, TRY_AGAIN_LATER};
use crate::store::Store;
use crate::wire::Wire;
use crate::{lock, now_ms, now_us};
use bytes::Bytes;
use futures_util::StreamExt;
use piano_core::identity::Identity;
use piano_core::lobby::{PUSH_TICK_MS, Report};
use piano_core::room::{ConnId, Protocol};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Where a player's frames go.
pub enum Route {
    Local(mpsc::Sender<RoomMsg>),
    Remote { holder: String, room: String },
}

pub struct Hub {
    pub cfg: Config,
    pub cluster: Option<Arc<Cluster>>,
    pub mongo: Option<Arc<Mongo>>,
    /// The replica's copy of the room directory (and, with Redis, its writer to the shared one).
    pub directory: Arc<RoomDirectory>,
    pub rooms: Arc<Rooms>,
    /// This replica's players' sockets.
    pub sockets: Arc<Sockets>,
    /// What every room task started here is given.
    room_ctx: Arc<room_task::Ctx>,
    /// Local connections whose room runs on another replica: conn → (room, holder).
    follows: Mutex<HashMap<ConnId, (String, String)>>,
    pub draining: AtomicBool,
    /// Cluster mode: subscribed to this replica's channel (required before taking leases).
    pub subscribed: AtomicBool,
    pub started_at: u64,
}

impl Hub {
    pub fn new(
        cfg: Config,
        store: Store,
        cluster: Option<Arc<Cluster>>,
        mongo: Option<Arc<Mongo>>,
    ) -> Arc<Hub> {
        let directory = Arc::new(RoomDirectory::new(cluster.clone()));
        let rooms = Arc::new(Rooms::default());
        let sockets = Arc::new(Sockets::default());
        let analytics = cfg.analytics_url.clone().map(|target| {
            let src = piano_core::analytics::Source {
                env: cfg.environment.clone(),
                deployment: cfg.deployment_id.clone(),
            };
            Arc::new(crate::analytics::Sink::start(
                target,
                src,
                cfg.analytics_limits,
            ))
        });
        let room_ctx = Arc::new(room_task::Ctx {
            replica: cfg.replica_id.clone(),
            sockets_per_user: cfg.room_sockets_per_user,
            resume_grace_ms: cfg.resume_grace_ms,
            sockets_per_network: cfg.room_sockets_per_network,
            redis_key_prefix: cfg.redis_key_prefix.clone(),
            deployment_id: cfg.deployment_id.clone(),
            store,
            mongo: mongo.clone(),
            cluster: cluster.clone(),
            rooms: rooms.clone(),
            sockets: sockets.clone(),
            directory: directory.clone(),
            analytics: analytics.clone(),
        });
        let keys = piano_backends::layout::Keys {
            prefix: cfg.redis_key_prefix.clone(),
        };
        let deployment = cfg.deployment_id.clone();
        let hub = Arc::new(Hub {
            cfg,
            cluster,
            mongo,
            directory,
            rooms,
            sockets,
            room_ctx,
            follows: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            started_at: now_ms(),
        });
        tokio::spawn(push_deltas(hub.clone()));
        if hub.cluster.is_some() {
            tokio::spawn(directory_writer(hub.directory.clone(), keys, deployment));
            tokio::spawn(pubsub_loop(hub.clone()));
            tokio::spawn(watchdog(hub.clone()));
        }
        hub
    }

    /// The HTTP analytics sink, if `ANALYTICS_URL` is set.
    pub fn analytics(&self) -> Option<&Arc<crate::analytics::Sink>> {
        self.room_ctx.analytics.as_ref()
    }

    /// Rooms' store (members' activity totals live there too).
    pub fn store(&self) -> &Store {
        &self.room_ctx.store
    }

    pub fn replica(&self) -> &str {
        &self.cfg.replica_id
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(SeqCst) && (self.cluster.is_none() || self.subscribed.load(SeqCst))
    }

    /// A socket of this replica left its room (for another one): it follows it no more.
    pub fn unfollow(&self, conn: ConnId) {
        lock(&self.follows).remove(&conn);
    }

    /// A socket of this replica closed: it no longer follows a room elsewhere either.
    pub fn unregister(&self, conn: ConnId) {
        self.sockets.remove(conn);
        lock(&self.follows).remove(&conn);
    }

    // -- rooms ---------------------------------------------------------------------------

    /// Places a new connection in its room; the route for its frames, or a close code.
    pub async fn attach(
        self: &Arc<Self>,
        room: &str,
        conn: ConnId,
        identity: &Identity,
        protocol: Protocol,
    ) -> Result<Route, (u16, &'static str)> {
        for _ in 0..8 {
            if let Some(tx) = self.rooms.tx(room) {
                let msg = RoomMsg::Connect {
                    conn,
                    identity: identity.clone(),
                    origin: None,
                    protocol,
                };
                if tx.send(msg).await.is_ok() {
                    return Ok(Route::Local(tx));
                }
                // The room task just retired; start it again.
                continue;
            }
            let guard = self.rooms.starting.lock().await;
            if self.rooms.tx(room).is_some() {
                continue;
            }
            let Some(cluster) = &self.cluster else {
                if let Err(e) = room_task::start(&self.room_ctx, room).await {
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
                    if let Err(e) = room_task::start(&self.room_ctx, room).await {
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
                        protocol,
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
        if let Some(tx) = self.rooms.tx(room) {
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
        let players = self.directory.players(room);
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

    /// Pushes the directory's net change to every room with subscribers.
    fn push_delta(&self) {
        let Some(delta) = self.directory.take_delta() else {
            return;
        };
        for entry in self.rooms.lock().values() {
            // A room with no subscribers ignores it; a full queue skips one listing update,
            // which the next full list (on subscribe) corrects.
            let _ = entry.tx.try_send(RoomMsg::RoomListChanged(delta.clone()));
        }
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
                protocol,
            } => {
                let msg = RoomMsg::Connect {
                    conn,
                    identity,
                    origin: Some(from.clone()),
                    protocol,
                };
                match self.rooms.tx(&room) {
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
                if let Some(tx) = self.rooms.tx(&room) {
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
            Wire::Disconnect {
                room,
                conn,
                dropped,
            } => {
                if let Some(tx) = self.rooms.tx(&room) {
                    let _ = tx.send(RoomMsg::Disconnect { conn, dropped }).await;
                }
            }
            Wire::Deliver {
                at_us,
                conns,
                data,
                delivery,
            } => {
                for c in &conns {
                    self.sockets.deliver(*c, &data, delivery);
                }
                if at_us > 0 {
                    METRICS
                        .relay_latency
                        .observe_us(now_us().saturating_sub(at_us));
                }
            }
            Wire::Close { conn, code, reason } => {
                lock(&self.follows).remove(&conn);
                self.sockets.close(conn, code, &reason);
            }
            Wire::Move { conn, room, frame } => {
                lock(&self.follows).remove(&conn);
                if !self.sockets.change_room(conn, room, frame) {
                    let code = piano_core::limits::close::INTERNAL_ERROR;
                    self.sockets.close(conn, code, "the room change failed");
                }
            }
        }
    }

    /// A session ended or roles changed: every room this replica runs is told (each checks its
    /// own connections).
    pub async fn reach_rooms(&self, event: Reach) {
        for tx in self.rooms.senders() {
            // Waits for room in a busy room's queue rather than dropping a revocation.
            let _ = tx.send(RoomMsg::Reach(event.clone())).await;
        }
    }

    // -- drain ---------------------------------------------------------------------------

    /// SIGTERM: refuse new players, tell every connected one to reconnect elsewhere
    /// ([`SERVICE_RESTART`]), save and hand over the rooms, and wait (bounded) for sockets to go.
    pub async fn drain(&self) {
        self.draining.store(true, SeqCst);
        let rooms = self.rooms.senders();
        tracing::info!(
            rooms = rooms.len(),
            connections = self.sockets.count(),
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
        for conn in self.sockets.ids() {
            self.sockets
                .close(conn, SERVICE_RESTART, "server restarting: reconnect");
        }
        let deadline = tokio::time::Instant::now() + self.cfg.drain_timeout;
        // A room leaves the map when it stops, but is done only after saving (room store,
        // MongoDB) and releasing its lease: `piano_rooms` counts it until then.
        while tokio::time::Instant::now() < deadline
            && (METRICS.rooms.load(Relaxed) > 0 || self.sockets.count() > 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(
            rooms = self.rooms.lock().len(),
            connections = self.sockets.count(),
            "drained"
        );
    }
}

/// Every [`PUSH_TICK_MS`], the directory's coalesced change goes to the rooms (so ten settings
/// toggles in a tick are one push, not ten).
async fn push_deltas(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_millis(PUSH_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hub.push_delta();
    }
}

/// Hands every session change the accounts emit to the rooms of the deployment (see
/// [`crate::reach`]).
pub async fn pass_on_reach(hub: Arc<Hub>, mut rx: mpsc::Receiver<Reach>) {
    while let Some(event) = rx.recv().await {
        tracing::info!(change = ?event, "session change: closing affected sockets");
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
                        hub.directory.load().await;
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
                                    hub.directory.apply_report(report);
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
            sweep_directory(&hub.directory, c).await;
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
                hub.sockets
                    .close(conn, SERVICE_RESTART, "the room moved: reconnect");
            }
        }
    }
}
