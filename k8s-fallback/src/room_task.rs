//! One room, run by one tokio task: the single writer of docs/architecture.md §1.
//!
//! The task owns the core [`Room`] and is the only code that touches it. Inputs arrive on a
//! bounded channel ([`RoomMsg`]) from local sockets and, in cluster mode, from other replicas
//! through this replica's pub/sub dispatcher. Effects are carried out in order: a broadcast is
//! one `Bytes` handed to every local target's queue and published once per other replica;
//! durable changes go to the room's ordered store writer; directory reports to the replica's
//! directory.
//!
//! In cluster mode the task also renews the room's lease every third of its TTL, and stops the
//! room (players reconnect) the moment the lease is no longer provably its own. When the room
//! has no connections left the task retires: it saves, releases the lease, and leaves the map.

use crate::cluster::{Cluster, replica_channel};
use crate::directory::RoomDirectory;
use crate::metrics::{METRICS, redis_error};
use crate::mongo::{Mirror, MirrorMsg, Mongo};
use crate::network::PresenceWriter;
use crate::reach::{Reach, count_close};
use crate::sockets::{SERVICE_RESTART, Sockets};
use crate::store::{Store, Writer};
use crate::wire::Wire;
use crate::{lock, now_ms, now_us};
use bytes::Bytes;
use piano_core::identity::Identity;
use piano_core::lobby::Delta;
use piano_core::room::{ConnId, DirectoryOp, Effect, Frame, Input, Protocol, Room};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Inputs a room task may queue before senders wait.
const QUEUE: usize = 4096;
/// Broadcasts waiting to be published to other replicas. It fills only while Redis does not
/// take them; then the lease cannot be renewed either and the room stops within a lease TTL
/// (players reconnect), so dropping what does not fit meanwhile (counted) loses nothing more.
const PUBLISH_QUEUE: usize = 16_384;

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(1);

pub enum RoomMsg {
    /// `origin`: the replica holding the socket, `None` for this one.
    Connect {
        conn: ConnId,
        identity: Identity,
        origin: Option<String>,
        protocol: Protocol,
    },
    Frame {
        conn: ConnId,
        data: Bytes,
        binary: bool,
        at_us: u64,
    },
    Disconnect {
        conn: ConnId,
    },
    RoomListChanged(Delta),
    Info(oneshot::Sender<RoomInfo>),
    /// Would the room take this identity's socket (`Room::admit_connection`)? Asked before
    /// the WebSocket upgrade, so a refusal is a plain HTTP 429.
    Admit {
        identity: Identity,
        reply: oneshot::Sender<Result<(), piano_core::proto::ErrorCode>>,
    },
    /// A session ended or roles changed somewhere ([`crate::reach`]).
    Reach(Reach),
    /// The answer of a password check run off the room's task (`Effect::VerifyPassword`).
    PasswordChecked {
        conn: ConnId,
        ok: bool,
    },
    /// The room's deadline passed (`Room::next_deadline`).
    Tick,
    /// The answer of the per-user subscription cap ([`RoomDirectory::subscribe_user`]).
    SubscribeChecked {
        conn: ConnId,
        user_id: String,
        ok: bool,
    },
    /// The answer of the background check on the replicas of remote players.
    ReplicasChecked {
        gone: Vec<String>,
    },
    /// Close every connection with this code and stop; `release` gives up the lease.
    Shutdown {
        code: u16,
        reason: String,
        release: bool,
    },
}

pub struct RoomInfo {
    pub participants: usize,
    pub connections: usize,
    pub started_at: u64,
}

pub struct RoomEntry {
    pub id: u64,
    pub tx: mpsc::Sender<RoomMsg>,
}

/// The rooms this replica runs, by name: a task enters when it starts and leaves when it stops.
#[derive(Default)]
pub struct Rooms {
    map: Mutex<HashMap<String, RoomEntry>>,
    /// One room start at a time, so two players arriving together start it once.
    pub starting: tokio::sync::Mutex<()>,
}

impl Rooms {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, RoomEntry>> {
        lock(&self.map)
    }

    pub fn tx(&self, room: &str) -> Option<mpsc::Sender<RoomMsg>> {
        self.lock().get(room).map(|e| e.tx.clone())
    }

    pub fn senders(&self) -> Vec<mpsc::Sender<RoomMsg>> {
        self.lock().values().map(|e| e.tx.clone()).collect()
    }
}

/// What a room task uses of its replica, built once by the hub: infrastructure handles and the
/// replica's shared tables, never the hub itself (the hub starts rooms; rooms do not call it).
pub struct Ctx {
    pub replica: String,
    /// The room's socket caps per user and per network (`ROOM_SOCKETS_PER_*`).
    pub sockets_per_user: usize,
    pub sockets_per_network: usize,
    /// Cluster mode's shared presence keys (`crate::network`).
    pub redis_key_prefix: String,
    pub deployment_id: String,
    pub store: Store,
    pub mongo: Option<Arc<Mongo>>,
    pub cluster: Option<Arc<Cluster>>,
    pub rooms: Arc<Rooms>,
    pub sockets: Arc<Sockets>,
    pub directory: Arc<RoomDirectory>,
}

struct Task {
    ctx: Arc<Ctx>,
    name: String,
    id: u64,
    room: Room,
    writer: Writer,
    mirror: Option<Mirror>,
    local: HashSet<ConnId>,
    /// Connections held by other replicas: conn → replica.
    remote: HashMap<ConnId, String>,
    /// Publishes in order, so the room never waits on Redis.
    publisher: Option<mpsc::Sender<(String, Bytes)>>,
    started_at: u64,
    /// The lease as [`keep_lease`] last confirmed it.
    lease: watch::Receiver<LeaseView>,
    keeper: Option<tokio::task::AbortHandle>,
    /// This task's own queue, for answers of background checks.
    me: mpsc::Sender<RoomMsg>,
    checking_replicas: bool,
    /// Users who follow the room list from here (their per-user cap counts this room).
    subscribed_users: HashSet<String>,
    /// Cluster mode: the room's players in the edge's shared presence keys.
    presence: Option<PresenceWriter>,
}

/// How often players' activity goes to their stored totals while they play.
/// Without a lease to renew, how often an idle room looks whether it is empty.
const IDLE_TICK: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct LeaseView {
    /// Until when the lease is surely ours (the last renewal's send time plus the TTL).
    valid_until: Instant,
    /// Redis said another replica holds it.
    lost: bool,
}

/// Renews the room's lease every third of its TTL, off the room's task, and publishes what it
/// knows. Ends when the lease is lost or the room stops (the receiver is gone).
async fn keep_lease(c: Arc<Cluster>, room: String, view: watch::Sender<LeaseView>) {
    let mut tick = tokio::time::interval(c.lease_ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        if view.is_closed() {
            return;
        }
        let sent = Instant::now();
        match c.renew(&room).await {
            Ok(true) => {
                let _ = view.send(LeaseView {
                    valid_until: sent + c.lease_ttl,
                    lost: false,
                });
            }
            Ok(false) => {
                view.send_modify(|v| v.lost = true);
                return;
            }
            Err(e) => redis_error("renewing a lease", &e),
        }
    }
}

enum Next {
    Continue,
    Stop { release: bool },
}

/// Loads the room's durable state and starts its task. The caller holds the start lock
/// ([`Rooms::starting`]; in cluster mode, also the lease).
pub async fn start(ctx: &Arc<Ctx>, name: &str) -> Result<(), String> {
    let mut stored = ctx.store.load(name).await?;
    if stored.is_none()
        && let Some(m) = &ctx.mongo
    {
        // The room store has never seen this room: MongoDB may have it (another deployment,
        // a lost Redis). If MongoDB cannot be read, the room starts as new.
        stored = m.load(name).await.unwrap_or_else(|e| {
            tracing::warn!(room = name, error = %e, "could not read the room from MongoDB");
            None
        });
        if stored.is_some() {
            tracing::info!(room = name, "room restored from MongoDB");
        }
    }
    let now = now_ms();
    let (mut room, effects) = match stored {
        Some(stored) => Room::restore(name, Some(stored), [], now, seed()),
        None => (Room::new(name, seed()), Vec::new()),
    };
    let writer = ctx.store.writer(name, room.stored().clone());
    let mirror = ctx.mongo.as_ref().map(|m| m.mirror(name));
    room.set_limits(piano_core::room::budget::Limits {
        conns_per_user: ctx.sockets_per_user,
        conns_per_network: ctx.sockets_per_network,
        ..Default::default()
    });
    // Players' activity has a home only in MongoDB's `user_stats`.
    room.count_activity(mirror.is_some());
    let (tx, rx) = mpsc::channel(QUEUE);
    let me = tx.clone();
    let id = NEXT_ENTRY.fetch_add(1, Relaxed);
    ctx.rooms
        .lock()
        .insert(name.to_owned(), RoomEntry { id, tx });
    // The lease was taken just before this start (cluster mode).
    let ttl = ctx
        .cluster
        .as_ref()
        .map(|c| c.lease_ttl)
        .unwrap_or_default();
    let (lease_tx, lease) = watch::channel(LeaseView {
        valid_until: Instant::now() + ttl,
        lost: false,
    });
    let keeper = ctx
        .cluster
        .as_ref()
        .map(|c| tokio::spawn(keep_lease(c.clone(), name.to_owned(), lease_tx)).abort_handle());
    METRICS.rooms.fetch_add(1, Relaxed);
    let publisher = ctx.cluster.as_ref().map(|c| {
        let (ptx, prx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish_loop(c.clone(), prx));
        ptx
    });
    tracing::info!(
        room = name,
        restored = !effects.is_empty() || room.stored().crown.assigned_once,
        "room started"
    );
    // Cluster mode: the room reports who arrives and leaves for the shared presence keys
    // (cleared for this room as the writer starts: nobody of ours is in it yet).
    let presence = PresenceWriter::start(
        ctx.cluster.as_deref(),
        &ctx.redis_key_prefix,
        &ctx.deployment_id,
        name,
    );
    room.track_presence(presence.is_some());
    let task = Task {
        ctx: ctx.clone(),
        name: name.to_owned(),
        id,
        room,
        writer,
        mirror,
        local: HashSet::new(),
        remote: HashMap::new(),
        publisher,
        started_at: now,
        lease,
        keeper,
        me,
        checking_replicas: false,
        subscribed_users: HashSet::new(),
        presence,
    };
    tokio::spawn(task.run(rx, effects));
    Ok(())
}

async fn publish_loop(c: Arc<Cluster>, mut rx: mpsc::Receiver<(String, Bytes)>) {
    while let Some((channel, payload)) = rx.recv().await {
        if let Err(e) = c.publish(&channel, payload).await {
            redis_error("publishing to a replica", &e);
        }
    }
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomMsg>, initial: Vec<Effect>) {
        self.execute(initial, None);
        let period = match &self.ctx.cluster {
            Some(c) => c.lease_ttl / 6,
            // Nothing to renew; the tick flushes stats and lets an idle room notice it is empty.
            None => IDLE_TICK,
        };
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        // The core's next deadline (a token or session expiring): `Input::Tick` then.
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        let mut armed = None;
        let release = loop {
            let next = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.on_msg(m),
                    None => Next::Stop { release: true },
                },
                _ = tick.tick() => self.on_tick(),
                _ = &mut deadline, if armed.is_some() => {
                    armed = None;
                    self.on_msg(RoomMsg::Tick)
                }
            };
            let wanted = self.room.next_deadline();
            if wanted != armed {
                armed = wanted;
                if let Some(at) = wanted {
                    // A few ms late rather than early: the core closes what is due by `now`.
                    let wait = at.saturating_sub(now_ms()) + 5;
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + Duration::from_millis(wait));
                }
            }
            if let Next::Stop { release } = next {
                self.retire(&mut rx);
                break release;
            }
            if self.local.is_empty() && self.remote.is_empty() {
                // Save everything first, while still in the map: a player arriving now waits
                // in the queue for the flush, and a later start (here or, with Redis, on
                // another replica) loads the room with every change written.
                self.writer.flush().await;
                // Retire, unless something arrived meanwhile (checked under the map's lock,
                // so no sender can find this task in the map after it left).
                let pending = {
                    let mut rooms = self.ctx.rooms.lock();
                    match rx.try_recv() {
                        Ok(m) => Some(m),
                        Err(_) => {
                            if rooms.get(&self.name).is_some_and(|e| e.id == self.id) {
                                rooms.remove(&self.name);
                            }
                            None
                        }
                    }
                };
                match pending {
                    Some(m) => {
                        if let Next::Stop { release } = self.on_msg(m) {
                            self.retire(&mut rx);
                            break release;
                        }
                    }
                    None => {
                        self.retire(&mut rx);
                        break true;
                    }
                }
            }
        };
        if let Some(k) = &self.keeper {
            k.abort();
        }
        if !self.subscribed_users.is_empty() {
            self.end_subscriptions();
        }
        // What only memory holds (activity, presence) goes out; a room handed to another
        // replica (no release) leaves presence to the next holder.
        let stop = self.room.handle(Input::Stop, now_ms());
        let stop = stop
            .into_iter()
            .filter(|e| release || !matches!(e, Effect::Presence { .. }))
            .collect();
        self.execute(stop, None);
        if let Some(p) = self.presence.take() {
            // Before the lease goes: the next holder's "joined" must land after our "left".
            p.close().await;
        }
        self.writer.flush().await;
        if let Some(m) = &self.mirror {
            // Best effort: MongoDB may be slow or down; the room store already has it all.
            let (reply, done) = oneshot::channel();
            if m.send(MirrorMsg::Flush(reply)) {
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
        }
        if release && let Some(c) = &self.ctx.cluster {
            // A player may have come back while we were saving: a new task for the room on
            // this replica then holds the same lease (it names the replica), and keeps it.
            // Room starts take the same lock, so none can slip in between check and release.
            let _starting = self.ctx.rooms.starting.lock().await;
            if !self.ctx.rooms.lock().contains_key(&self.name) {
                c.release_if(&self.name, &self.ctx.replica).await;
            }
        }
        METRICS.rooms.fetch_sub(1, Relaxed);
        tracing::info!(room = self.name, "room stopped");
    }

    /// Leaves the map and turns away whatever was still queued (those players reconnect).
    fn retire(&mut self, rx: &mut mpsc::Receiver<RoomMsg>) {
        {
            let mut rooms = self.ctx.rooms.lock();
            if rooms.get(&self.name).is_some_and(|e| e.id == self.id) {
                rooms.remove(&self.name);
            }
        }
        rx.close();
        while let Ok(m) = rx.try_recv() {
            if let RoomMsg::Connect { conn, origin, .. } = m {
                self.close(
                    conn,
                    origin.as_deref(),
                    SERVICE_RESTART,
                    "the room restarted: reconnect",
                );
            }
        }
        for conn in std::mem::take(&mut self.local) {
            self.ctx
                .sockets
                .close(conn, SERVICE_RESTART, "the room restarted: reconnect");
        }
        for (conn, replica) in std::mem::take(&mut self.remote) {
            self.close(
                conn,
                Some(&replica),
                SERVICE_RESTART,
                "the room restarted: reconnect",
            );
        }
    }

    fn on_msg(&mut self, msg: RoomMsg) -> Next {
        self.handle_msg(msg)
    }

    fn handle_msg(&mut self, msg: RoomMsg) -> Next {
        let now = now_ms();
        match msg {
            RoomMsg::Connect {
                conn,
                identity,
                origin,
                protocol,
            } => {
                match origin {
                    Some(r) => {
                        self.remote.insert(conn, r);
                    }
                    None => {
                        self.local.insert(conn);
                    }
                }
                let input = match protocol {
                    Protocol::Protobuf => Input::Connect { conn, identity },
                    Protocol::Mpp => Input::ConnectMpp { conn, identity },
                };
                let effects = self.room.handle(input, now);
                self.execute(effects, None);
            }
            RoomMsg::Frame {
                conn,
                data,
                binary,
                at_us,
            } => {
                let frame = match std::str::from_utf8(&data) {
                    Ok(text) if !binary => Frame::Text(text),
                    _ => Frame::Binary(&data),
                };
                let effects = self.room.handle(Input::Frame { conn, frame }, now);
                self.execute(effects, Some(at_us));
            }
            RoomMsg::Disconnect { conn } => {
                self.local.remove(&conn);
                self.remote.remove(&conn);
                let effects = self.room.handle(Input::Disconnect { conn }, now);
                self.execute(effects, None);
            }
            RoomMsg::RoomListChanged(delta) => {
                if self.room.has_subscribers() {
                    let effects = self.room.handle(Input::RoomListChanged(delta), now);
                    self.execute(effects, None);
                }
            }
            RoomMsg::ReplicasChecked { gone } => {
                self.checking_replicas = false;
                let conns: Vec<ConnId> = self
                    .remote
                    .iter()
                    .filter(|(_, r)| gone.contains(r))
                    .map(|(c, _)| *c)
                    .collect();
                if !conns.is_empty() {
                    tracing::info!(
                        room = self.name,
                        players = conns.len(),
                        "a follower replica is gone; its players left"
                    );
                }
                for conn in conns {
                    self.on_msg(RoomMsg::Disconnect { conn });
                }
            }
            RoomMsg::Admit { identity, reply } => {
                let _ = reply.send(self.room.admit_connection(&identity));
            }
            RoomMsg::Reach(event) => {
                let input = match event {
                    Reach::SessionEnded {
                        user_id,
                        session_id,
                    } => Input::SessionEnded {
                        user_id,
                        session_id,
                    },
                    Reach::IdentityChanged { user_id } => Input::IdentityChanged { user_id },
                };
                let effects = self.room.handle(input, now);
                self.execute(effects, None);
            }
            RoomMsg::PasswordChecked { conn, ok } => {
                let effects = self.room.handle(Input::PasswordChecked { conn, ok }, now);
                self.execute(effects, None);
            }
            RoomMsg::Tick => {
                let effects = self.room.handle(Input::Tick, now);
                self.execute(effects, None);
            }
            RoomMsg::SubscribeChecked { conn, user_id, ok } => {
                let effects = if ok {
                    self.subscribed_users.insert(user_id);
                    let rooms = self.ctx.directory.listing();
                    self.room.handle(Input::RoomList { conn, rooms }, now)
                } else {
                    self.room.handle(Input::SubscribeRefused { conn }, now)
                };
                self.execute(effects, None);
            }
            RoomMsg::Info(reply) => {
                let _ = reply.send(RoomInfo {
                    participants: self.room.participant_count(),
                    connections: self.room.connection_count(),
                    started_at: self.started_at,
                });
            }
            RoomMsg::Shutdown {
                code,
                reason,
                release,
            } => {
                for conn in std::mem::take(&mut self.local) {
                    self.ctx.sockets.close(conn, code, &reason);
                }
                for (conn, replica) in std::mem::take(&mut self.remote) {
                    self.close(conn, Some(&replica), code, &reason);
                }
                return Next::Stop { release };
            }
        }
        Next::Continue
    }

    /// Checks the lease (kept by [`keep_lease`], so the room never waits on Redis) and asks,
    /// in the background, whether the replicas holding its remote players are still there.
    fn on_tick(&mut self) -> Next {
        let Some(c) = &self.ctx.cluster else {
            return Next::Continue;
        };
        let lease = *self.lease.borrow();
        // Stop a little before the lease could lapse in Redis (renewals are timed from when
        // they were sent): another replica may take the room from then on.
        let safe_until = lease.valid_until.checked_sub(c.lease_ttl / 5);
        if lease.lost || safe_until.is_none_or(|t| Instant::now() >= t) {
            METRICS.leases_lost.fetch_add(1, Relaxed);
            tracing::warn!(
                room = self.name,
                lost_to_another = lease.lost,
                "lease not held any more; stopping the room"
            );
            return self.on_msg(RoomMsg::Shutdown {
                code: SERVICE_RESTART,
                reason: "the room moved: reconnect".into(),
                release: false,
            });
        }
        if !self.remote.is_empty() && !self.checking_replicas {
            let mut replicas: Vec<String> = self.remote.values().cloned().collect();
            replicas.sort();
            replicas.dedup();
            self.checking_replicas = true;
            let c = c.clone();
            let me = self.me.clone();
            tokio::spawn(async move {
                let gone = match c.alive(&replicas).await {
                    Ok(alive) => replicas
                        .into_iter()
                        .zip(alive)
                        .filter(|(_, a)| !a)
                        .map(|(r, _)| r)
                        .collect(),
                    Err(e) => {
                        redis_error("checking follower replicas", &e);
                        Vec::new()
                    }
                };
                let _ = me.send(RoomMsg::ReplicasChecked { gone }).await;
            });
        }
        Next::Continue
    }

    /// Nobody here follows the room list any more: the users' subscriptions here end.
    fn end_subscriptions(&mut self) {
        let users: Vec<String> = self.subscribed_users.drain().collect();
        let (dir, room) = (self.ctx.directory.clone(), self.name.clone());
        tokio::spawn(async move { dir.unsubscribe_room(&room, users).await });
    }

    fn publish(&self, replica: &str, wire: Wire) {
        if let Some(p) = &self.publisher
            && let Err(mpsc::error::TrySendError::Full(_)) =
                p.try_send((replica_channel(replica), wire.encode()))
        {
            METRICS.queue_full.fetch_add(1, Relaxed);
            tracing::warn!(
                room = self.name,
                "publish queue full: a broadcast to a replica was dropped"
            );
        }
    }

    fn close(&self, conn: ConnId, replica: Option<&str>, code: u16, reason: &str) {
        match replica {
            Some(r) => self.publish(
                r,
                Wire::Close {
                    conn,
                    code,
                    reason: reason.into(),
                },
            ),
            None => self.ctx.sockets.close(conn, code, reason),
        }
    }

    /// Carries out the room's effects in order. `at_us`: when the frame that caused them was
    /// read, for the relay latency histogram.
    fn execute(&mut self, effects: Vec<Effect>, at_us: Option<u64>) {
        for effect in effects {
            match effect {
                Effect::Send { to, frame } => {
                    let mut by_replica: HashMap<&str, Vec<ConnId>> = HashMap::new();
                    let mut local = false;
                    for conn in to.as_slice() {
                        match self.remote.get(conn) {
                            Some(r) => by_replica.entry(r.as_str()).or_default().push(*conn),
                            None => local |= self.ctx.sockets.deliver(*conn, &frame),
                        }
                    }
                    for (replica, conns) in by_replica {
                        self.publish(
                            replica,
                            Wire::Deliver {
                                at_us: at_us.unwrap_or(0),
                                conns,
                                data: frame.clone(),
                            },
                        );
                    }
                    if local && let Some(at) = at_us {
                        METRICS
                            .relay_latency
                            .observe_us(now_us().saturating_sub(at));
                    }
                }
                Effect::Close { conn, code, reason } => {
                    count_close(code);
                    self.local.remove(&conn);
                    let replica = self.remote.remove(&conn);
                    self.close(conn, replica.as_deref(), code, reason);
                }
                // An MPP socket asked for another room: its reader (here, or on the replica
                // holding it) takes it there.
                Effect::ChangeRoom { conn, room, frame } => {
                    if let Some(replica) = self.remote.remove(&conn) {
                        self.publish(&replica, Wire::Move { conn, room, frame });
                    } else if !(self.local.remove(&conn)
                        && self.ctx.sockets.change_room(conn, room, frame))
                    {
                        let code = piano_core::limits::close::INTERNAL_ERROR;
                        self.ctx.sockets.close(conn, code, "the room change failed");
                    }
                }
                // Connection records serve hibernation on the edge; here a room that restarts
                // (another replica, a new process) has lost its sockets and players rejoin.
                Effect::Remember(_) => {}
                // Players' activity, added to their totals in MongoDB's `user_stats` by the
                // mirror (the room counts it only when there is a mirror: `count_activity`).
                Effect::Stats(stats) => {
                    if let Some(m) = &self.mirror {
                        m.send(MirrorMsg::Stats(stats));
                    }
                }
                Effect::Presence { joined, left } => {
                    if let Some(p) = &self.presence {
                        p.apply(&joined, &left);
                    }
                }
                Effect::Persist(change) => {
                    if let Some(m) = &self.mirror {
                        m.send(MirrorMsg::Change(change.clone()));
                    }
                    self.writer.write(change);
                }
                Effect::Directory(DirectoryOp::Report(report)) => self.ctx.directory.report(report),
                // The per-user cap first (off the room's task), then the full list.
                Effect::Directory(DirectoryOp::Subscribe { conn, user_id }) => {
                    let dir = self.ctx.directory.clone();
                    let (me, room) = (self.me.clone(), self.name.clone());
                    tokio::spawn(async move {
                        let ok = dir.subscribe_user(&room, &user_id).await;
                        let _ = me
                            .send(RoomMsg::SubscribeChecked { conn, user_id, ok })
                            .await;
                    });
                }
                Effect::Directory(DirectoryOp::Unsubscribe) => self.end_subscriptions(),
                Effect::Directory(DirectoryOp::UnsubscribeUser { user_id }) => {
                    if self.subscribed_users.remove(&user_id) {
                        let (dir, room) = (self.ctx.directory.clone(), self.name.clone());
                        tokio::spawn(async move { dir.unsubscribe_user(&room, &user_id).await });
                    }
                }
                Effect::VerifyPassword {
                    conn,
                    password,
                    hash,
                } => {
                    // A KDF on a blocking thread, never on the room's task: the room keeps
                    // relaying while it runs (the core caps how many a room asks for).
                    let me = self.me.clone();
                    tokio::spawn(async move {
                        let ok = tokio::task::spawn_blocking(move || hash.verify(&password))
                            .await
                            .unwrap_or(false);
                        let _ = me.send(RoomMsg::PasswordChecked { conn, ok }).await;
                    });
                }
            }
        }
    }
}

/// Randomness for the core (password salts), fresh per room start.
fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        seed[..8].copy_from_slice(&now_us().to_le_bytes());
    }
    seed
}
