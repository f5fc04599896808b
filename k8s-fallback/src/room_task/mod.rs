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
//!
//! Files: this one holds the messages, the shared context and the start of a room; `run.rs` the
//! task's loop; `effects.rs` how effects are carried out; `lease.rs` the lease and publisher.

mod effects;
mod lease;
mod run;

use crate::cluster::{Cluster, replica_channel};
use crate::directory::RoomDirectory;
use crate::metrics::{METRICS, redis_error};
use crate::mongo::{Mirror, MirrorMsg, Mongo};
use crate::network::PresenceWriter;
use crate::reach::Reach;
use crate::sockets::{SERVICE_RESTART, Sockets};
use crate::store::{Store, Writer};
use crate::wire::Wire;
use crate::{lock, now_ms, now_us};
use bytes::Bytes;
use lease::{LeaseView, Pub, keep_lease, publish_loop};
use piano_core::identity::Identity;
use piano_core::lobby::Delta;
use piano_core::room::{
    ConnId, DirectoryOp, Effect, Frame, Input, Keep, Protocol, ReplayDurability, Room,
};
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
    /// `dropped`: the socket ended without a goodbye (`Input::Dropped`).
    Disconnect {
        conn: ConnId,
        dropped: bool,
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
    /// `RESUME_GRACE_MS`.
    pub resume_grace_ms: u64,
    /// Cluster mode's shared presence keys (`crate::network`).
    pub redis_key_prefix: String,
    pub deployment_id: String,
    pub store: Store,
    pub mongo: Option<Arc<Mongo>>,
    pub cluster: Option<Arc<Cluster>>,
    pub rooms: Arc<Rooms>,
    pub sockets: Arc<Sockets>,
    pub directory: Arc<RoomDirectory>,
    /// The HTTP analytics sink (`ANALYTICS_URL`).
    pub analytics: Option<Arc<crate::analytics::Sink>>,
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
    publisher: Option<mpsc::Sender<lease::Pub>>,
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
    /// Participants as last added to the players gauge.
    players: usize,
}

/// How often players' activity goes to their stored totals while they play.
/// Without a lease to renew, how often an idle room looks whether it is empty.
const IDLE_TICK: Duration = Duration::from_secs(5);

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
    // What dropped players need to resume here (a restart, a drain, a failover). Without it
    // they rejoin: nothing else is lost.
    let kept = ctx.store.load_kept(name).await.unwrap_or_else(|e| {
        tracing::warn!(room = name, error = %e, "could not read the room's resume state");
        Default::default()
    });
    let now = now_ms();
    // A room with kept sessions comes back with them even if it has no stored state (a room
    // nobody configured).
    let limits = piano_core::room::budget::Limits {
        conns_per_user: ctx.sockets_per_user,
        conns_per_network: ctx.sockets_per_network,
        resume_grace_ms: ctx.resume_grace_ms,
        ..Default::default()
    };
    let (mut room, effects) = match stored.is_some() || kept != Default::default() {
        true => Room::restore_configured(name, stored, [], kept, limits.clone(), now, seed()),
        false => (Room::new(name, seed()), Vec::new()),
    };
    let writer = ctx.store.writer(name, room.stored().clone());
    let mirror = ctx.mongo.as_ref().map(|m| m.mirror(name));
    room.set_limits(limits);
    // Cluster mode: the holder may die at any moment, so every replay entry is kept;
    // standalone, only while someone may come back for them.
    room.keep_replay(match ctx.cluster {
        Some(_) => ReplayDurability::Always,
        None => ReplayDurability::WhileSuspended,
    });
    // Players' activity: members' totals in the store (and MongoDB's `user_stats`), and the
    // analytics events; counted always (`GET /api/users/{id}/stats` needs no MongoDB).
    room.count_activity(true);
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
        tokio::spawn(publish_loop(c.clone(), name.to_owned(), prx));
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
        players: 0,
        presence,
    };
    tokio::spawn(task.run(rx, effects));
    Ok(())
}

/// Randomness for the core (password salts), fresh per room start.
fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        seed[..8].copy_from_slice(&now_us().to_le_bytes());
    }
    seed
}
