//! Process-wide counters, rendered as Prometheus text at `/metrics`.
//!
//! Plain atomics in a static: the hot path (every relayed frame) pays one relaxed add, and no
//! metrics crate or registry has to be threaded through the code.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the relay latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe_us(&self, us: u64) {
        let secs = us as f64 / 1e6;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

pub struct Metrics {
    /// Open player WebSockets on this replica.
    pub connections: AtomicI64,
    /// Rooms this replica runs (holds the lease of).
    pub rooms: AtomicI64,
    /// Frames read from players' sockets.
    pub messages_in: AtomicU64,
    /// Frames written to players' sockets.
    pub messages_out: AtomicU64,
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
    /// Sockets closed because their session ended or their roles changed (4001/4002).
    pub session_closes: AtomicU64,
    /// Messages dropped because a bounded internal queue was full (see each queue's comment).
    pub queue_full: AtomicU64,
    /// Analytics events the HTTP sink accepted (`ANALYTICS_URL`).
    pub analytics_delivered: AtomicU64,
    /// Analytics events dropped: a queue was full or their batch failed.
    pub analytics_dropped: AtomicU64,
    /// Analytics batches that failed (refused, unreachable, timed out).
    pub analytics_failed_batches: AtomicU64,
    /// From reading a frame on the sender's replica to queueing the broadcast for its listeners.
    pub relay_latency: Histogram,
}

pub static METRICS: Metrics = Metrics {
    connections: AtomicI64::new(0),
    rooms: AtomicI64::new(0),
    messages_in: AtomicU64::new(0),
    messages_out: AtomicU64::new(0),
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
    session_closes: AtomicU64::new(0),
    queue_full: AtomicU64::new(0),
    analytics_delivered: AtomicU64::new(0),
    analytics_dropped: AtomicU64::new(0),
    analytics_failed_batches: AtomicU64::new(0),
    relay_latency: Histogram::new(),
};

pub fn redis_error(context: &str, e: &dyn std::fmt::Display) {
    METRICS.redis_errors.fetch_add(1, Relaxed);
    tracing::warn!(error = %e, "redis: {context} failed");
}

/// The Prometheus text exposition (version 0.0.4).
pub fn render(replica: &str) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric(
        "piano_connections",
        "gauge",
        "Open player WebSocket connections on this replica.",
        m.connections.load(Relaxed).to_string(),
    );
    metric(
        "piano_rooms",
        "gauge",
        "Rooms this replica runs (lease holder).",
        m.rooms.load(Relaxed).to_string(),
    );
    metric(
        "piano_messages_in_total",
        "counter",
        "Frames received from players.",
        m.messages_in.load(Relaxed).to_string(),
    );
    metric(
        "piano_messages_out_total",
        "counter",
        "Frames sent to players.",
        m.messages_out.load(Relaxed).to_string(),
    );
    metric(
        "piano_slow_consumer_closes_total",
        "counter",
        "Connections closed because they did not keep up with their room.",
        m.slow_consumers.load(Relaxed).to_string(),
    );
    metric(
        "piano_frames_skipped_total",
        "counter",
        "Note batches and cursor moves not sent to connections that fell behind (they are told how many).",
        m.frames_skipped.load(Relaxed).to_string(),
    );
    metric(
        "piano_redis_errors_total",
        "counter",
        "Failed Redis commands and lost pub/sub connections.",
        m.redis_errors.load(Relaxed).to_string(),
    );
    metric(
        "piano_leases_acquired_total",
        "counter",
        "Room leases this replica acquired.",
        m.leases_acquired.load(Relaxed).to_string(),
    );
    metric(
        "piano_leases_lost_total",
        "counter",
        "Room leases lost while running the room.",
        m.leases_lost.load(Relaxed).to_string(),
    );
    metric(
        "piano_store_errors_total",
        "counter",
        "Failed writes or reads of room state.",
        m.store_errors.load(Relaxed).to_string(),
    );
    metric(
        "piano_mongo_errors_total",
        "counter",
        "Failed MongoDB writes (each retry counts).",
        m.mongo_errors.load(Relaxed).to_string(),
    );
    metric(
        "piano_mongo_writes_dropped_total",
        "counter",
        "MongoDB writes set aside (refused by MongoDB, or the mirror queue was full).",
        m.mongo_dropped.load(Relaxed).to_string(),
    );
    metric(
        "piano_http_header_timeouts_total",
        "counter",
        "HTTP connections closed because request headers did not arrive in time (or the connection idled).",
        m.header_timeouts.load(Relaxed).to_string(),
    );
    metric(
        "piano_http_body_timeouts_total",
        "counter",
        "Requests answered 408 because the body did not arrive in time.",
        m.body_timeouts.load(Relaxed).to_string(),
    );
    metric(
        "piano_websocket_idle_closes_total",
        "counter",
        "WebSockets closed for sending nothing, not even a pong, for WS_IDLE_TIMEOUT_SECS.",
        m.idle_closes.load(Relaxed).to_string(),
    );
    metric(
        "piano_session_closes_total",
        "counter",
        "Sockets closed because their session ended or their roles changed.",
        m.session_closes.load(Relaxed).to_string(),
    );
    metric(
        "piano_queue_full_total",
        "counter",
        "Messages dropped because a bounded internal queue was full.",
        m.queue_full.load(Relaxed).to_string(),
    );
    metric(
        "piano_analytics_events_delivered_total",
        "counter",
        "Analytics events the HTTP sink (ANALYTICS_URL) accepted.",
        m.analytics_delivered.load(Relaxed).to_string(),
    );
    metric(
        "piano_analytics_events_dropped_total",
        "counter",
        "Analytics events dropped (a queue was full, or their batch failed).",
        m.analytics_dropped.load(Relaxed).to_string(),
    );
    metric(
        "piano_analytics_batches_failed_total",
        "counter",
        "Analytics batches the sink refused or that could not be sent.",
        m.analytics_failed_batches.load(Relaxed).to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP piano_connections_refused_total Connections refused by a cap.\n# TYPE piano_connections_refused_total counter"
    );
    for (reason, v) in [
        ("max_connections", &m.refused_total),
        ("max_connections_per_ip", &m.refused_per_ip),
        ("websockets", &m.refused_sockets),
    ] {
        let _ = writeln!(
            out,
            "piano_connections_refused_total{{reason=\"{reason}\"}} {}",
            v.load(Relaxed)
        );
    }
    let h = &m.relay_latency;
    let name = "piano_relay_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From reading a player's frame to queueing the room's broadcast to each listener's connection.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cumulative += h.counts[i].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let count = h.count.load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", h.sum_us.load(Relaxed) as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
    let _ = writeln!(
        out,
        "# HELP piano_replica_info This replica's id.\n# TYPE piano_replica_info gauge\npiano_replica_info{{replica=\"{}\"}} 1",
        replica.replace(['"', '\\', '\n'], "_")
    );
    out
}
