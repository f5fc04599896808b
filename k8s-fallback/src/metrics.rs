//! Process-wide counters, rendered as Prometheus text at `/metrics` by the core's one list of
//! metrics (`piano_core::metrics`, the same names and labels as the edge).
//!
//! Plain atomics in a static: the hot path (every relayed frame) pays one relaxed add, and no
//! metrics crate or registry has to be threaded through the code. What the rooms count (messages
//! by kind, notes, joins refused, errors) and the HTTP layer's outcomes go into [`SERIES`], one
//! atomic per series of the core's list.

use piano_core::metrics::{self, Counters, Fam, Gauges, LATENCY_BUCKETS, SLOTS};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe_us(&self, us: u64) {
        if let Some(i) = metrics::Histogram::bucket_of(us) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn load(&self) -> metrics::Histogram {
        metrics::Histogram {
            buckets: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

pub struct Metrics {
    /// Open player WebSockets on this replica.
    pub connections: AtomicI64,
    /// Rooms this replica runs (holds the lease of).
    pub rooms: AtomicI64,
    /// Participants joined to the rooms this replica runs.
    pub players: AtomicI64,
    /// Connections closed because their outbound queue was full.
    pub slow_consumers: AtomicU64,
    /// Note batches and cursor moves not sent to connections that fell behind.
    pub frames_skipped: AtomicU64,
    /// Failed Redis commands and lost pub/sub connections.
    pub redis_errors: AtomicU64,
    /// Rooms this replica took over or started under a lease.
    pub leases_acquired: AtomicU64,
    /// Leases lost while running the room (another replica took it, or Redis was unreachable).
    pub leases_lost: AtomicU64,
    /// Failed writes to the room store.
    pub store_errors: AtomicU64,
    /// Failed MongoDB writes (each retry counts).
    pub mongo_errors: AtomicU64,
    /// MongoDB writes set aside: refused by MongoDB (retrying cannot help) or not queued
    /// because the room's bounded mirror queue was full.
    pub mongo_dropped: AtomicU64,
    /// TCP connections refused: replica at `MAX_CONNECTIONS`.
    pub refused_total: AtomicU64,
    /// TCP connections refused: the client's network at `MAX_CONNECTIONS_PER_IP`.
    pub refused_per_ip: AtomicU64,
    /// WebSocket upgrades refused: the client's network at `MAX_WEBSOCKETS_PER_IP`, or the
    /// room's own per-user/per-network cap (`admit_connection`).
    pub refused_sockets: AtomicU64,
    /// HTTP connections closed because a request's headers did not arrive in time (or the
    /// kept-alive connection idled past it).
    pub header_timeouts: AtomicU64,
    /// Requests answered 408 because their body did not arrive in time.
    pub body_timeouts: AtomicU64,
    /// WebSockets closed for sending nothing (not even a pong) for `WS_IDLE_TIMEOUT_SECS`.
    pub idle_closes: AtomicU64,
    /// Messages dropped because a bounded internal queue was full (see each queue's comment).
    pub queue_full: AtomicU64,
    /// Analytics events the HTTP sink accepted (`ANALYTICS_URL`).
    pub analytics_delivered: AtomicU64,
    /// Analytics events dropped: a queue was full or their batch failed.
    pub analytics_dropped: AtomicU64,
    /// Analytics batches that failed (refused, unreachable, timed out).
    pub analytics_failed_batches: AtomicU64,
    /// Analytics events in the sink's batcher now (a gauge).
    pub analytics_queued: AtomicU64,
    /// From reading a frame on the sender's replica to queueing the broadcast for its listeners.
    pub relay_latency: Histogram,
}

pub static METRICS: Metrics = Metrics {
    connections: AtomicI64::new(0),
    rooms: AtomicI64::new(0),
    players: AtomicI64::new(0),
    slow_consumers: AtomicU64::new(0),
    frames_skipped: AtomicU64::new(0),
    redis_errors: AtomicU64::new(0),
    leases_acquired: AtomicU64::new(0),
    leases_lost: AtomicU64::new(0),
    store_errors: AtomicU64::new(0),
    mongo_errors: AtomicU64::new(0),
    mongo_dropped: AtomicU64::new(0),
    refused_total: AtomicU64::new(0),
    refused_per_ip: AtomicU64::new(0),
    refused_sockets: AtomicU64::new(0),
    header_timeouts: AtomicU64::new(0),
    body_timeouts: AtomicU64::new(0),
    idle_closes: AtomicU64::new(0),
    queue_full: AtomicU64::new(0),
    analytics_delivered: AtomicU64::new(0),
    analytics_dropped: AtomicU64::new(0),
    analytics_failed_batches: AtomicU64::new(0),
    analytics_queued: AtomicU64::new(0),
    relay_latency: Histogram::new(),
};

pub fn redis_error(context: &str, e: &dyn std::fmt::Display) {
    METRICS.redis_errors.fetch_add(1, Relaxed);
    tracing::warn!(error = %e, "redis: {context} failed");
}

/// One atomic per series of the core's list: what rooms and the HTTP layer count.
static SERIES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

/// Adds to one series (what a room counted: `Room::drain_counters`).
pub fn add_slot(slot: usize, n: u64) {
    if let Some(a) = SERIES.get(slot) {
        a.fetch_add(n, Relaxed);
    }
}

/// Counts an HTTP error response (status 400 and up).
pub fn http_response(status: u16) {
    if status >= 400 {
        add_slot(metrics::http_status_slot(status), 1);
    }
}

/// The Prometheus text exposition (version 0.0.4), with the outbox backlog as the caller
/// read it.
pub fn render(replica: &str, release: &str, outbox: [metrics::LaneBacklog; 2]) -> String {
    let m = &METRICS;
    let mut c = Counters::default();
    for (slot, a) in SERIES.iter().enumerate() {
        c.set_slot(slot, a.load(Relaxed));
    }
    for (fam, i, a) in [
        (Fam::SlowConsumerCloses, 0, &m.slow_consumers),
        (Fam::FramesSkipped, 0, &m.frames_skipped),
        (Fam::RedisErrors, 0, &m.redis_errors),
        (Fam::LeasesAcquired, 0, &m.leases_acquired),
        (Fam::LeasesLost, 0, &m.leases_lost),
        (Fam::StoreErrors, 0, &m.store_errors),
        (Fam::MongoErrors, 0, &m.mongo_errors),
        (Fam::MongoDropped, 0, &m.mongo_dropped),
        (Fam::HeaderTimeouts, 0, &m.header_timeouts),
        (Fam::BodyTimeouts, 0, &m.body_timeouts),
        (Fam::IdleCloses, 0, &m.idle_closes),
        (Fam::QueueFull, 0, &m.queue_full),
        (Fam::AnalyticsDelivered, 0, &m.analytics_delivered),
        (Fam::AnalyticsDropped, 0, &m.analytics_dropped),
        (Fam::AnalyticsFailedBatches, 0, &m.analytics_failed_batches),
        (Fam::Refused, 0, &m.refused_total),
        (Fam::Refused, 1, &m.refused_per_ip),
        (Fam::Refused, 2, &m.refused_sockets),
    ] {
        c.set_slot(metrics::slot(fam, i), a.load(Relaxed));
    }
    let gauges = Gauges {
        connections: m.connections.load(Relaxed).max(0) as u64,
        rooms_awake: m.rooms.load(Relaxed).max(0) as u64,
        players: m.players.load(Relaxed).max(0) as u64,
        outbox,
        analytics_queued: m.analytics_queued.load(Relaxed),
    };
    metrics::render(&metrics::Snapshot {
        counters: &c,
        gauges: &gauges,
        latency: &m.relay_latency.load(),
        host: "fallback",
        instance: replica,
        release,
    })
}
