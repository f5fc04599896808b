//! k8s-fallback: the native host of the piano core, for operators who do not run on Cloudflare
//! (docs/architecture.md §6). Same rooms (`piano_core::room`), same URL paths, protobuf protocol, Ed25519
//! tokens and browser client as the edge worker; tokio + axum instead of workerd.
//!
//! Two modes, chosen by `REDIS_URL`:
//! - **standalone** (no configuration): one process runs every room, each in its own task,
//!   with the rooms' durable state in SQLite under `DATA_DIR`, so `cargo run -p k8s-fallback`
//!   just works and a restarted process finds its rooms again.
//! - **cluster**: stateless replicas behind any load balancer. One replica at a time runs a
//!   room, under a lease in Redis; the others forward their players' frames to it and deliver
//!   its broadcasts, through Redis pub/sub. Room state lives in Redis, so when the holder dies
//!   the next replica with a player for the room takes the lease and restores it; players
//!   reconnect with the same token and find the same room, owner and chat.
//!
//! Layout: a one-way stack of three layers. Each list runs top to bottom, and a module imports
//! only modules listed after it (in its own layer or a lower one), never one above it: no
//! import cycles (`scripts/module-cycles k8s-fallback` checks it).
//!
//! **Transport** (HTTP and WebSocket in, responses out):
//! - [`http`]: the router (the edge's paths, `/readyz`, `/metrics`, static files) and the
//!   WebSocket gate; [`status`]: `GET /api/status` (the core's component states, cached).
//! - [`ws`]: one player's socket: reader → room, bounded outbound queue → writer; [`ws::mpp`]:
//!   `GET /mpp`, sockets speaking Multiplayer Piano JSON that pick their room after `hi`.
//! - [`observe`]: every request's id, its panics turned into 500s, server errors logged and
//!   reported.
//! - [`body`]: request bodies read capped and timed; [`security`]: security headers and CORS on
//!   every response.
//! - [`serve`]: the accept loop (hyper HTTP/1.1 with header/keep-alive timeouts, connection
//!   caps per replica and per client network).
//!
//! **Services** (what the server does):
//! - [`oauth`]: signing in through Discord and OpenID Connect providers (the flow, the
//!   providers' requests and cached keys, linked identities), over [`accounts`].
//! - [`accounts`]: member accounts and sessions as the edge serves them (register, login,
//!   refresh with rotation and reuse detection, logout, profiles, roles), in SQLite or Redis,
//!   mirrored to and imported from MongoDB in the edge's layout; browser sessions in cookies;
//!   providers' identity claims.
//! - [`auth`]: guest tokens, JWKS, token checks (members' sessions through [`auth::Sessions`],
//!   which the account store implements), the auth rate limit.
//! - [`hub`]: the replica's routing: placement of a new connection ([`hub::Hub::attach`]),
//!   followed rooms and messages from other replicas, session changes to the rooms, drain on
//!   SIGTERM. It builds what the rooms share and starts them.
//! - [`room_task`]: one task per running room, the single writer of its core `Room`, given a
//!   [`room_task::Ctx`] of handles (never the hub).
//! - [`directory`]: the room directory (local copy, shared copy in Redis, subscription caps).
//! - [`network`]: in cluster mode, the edge's cross-deployment keys (presence, `online`, the
//!   `rooms` index) and `GET /api/network/rooms|online`.
//! - [`sockets`]: the table of this replica's sockets (bounded queues, closes) that the hub and
//!   the rooms write to.
//!
//! **Infrastructure** (storage, messages, settings):
//! - [`store`]: the rooms' durable state (SQLite or Redis); [`mongo`]: with `MONGODB_URL`,
//!   every room change mirrored to MongoDB in the layout the edge uses, and rooms the room
//!   store does not know restored from it; [`outbox`]: those writes stored durably first (a
//!   local SQLite file) and delivered under the core's rules (`piano_core::outbox`).
//! - [`cluster`]: leases, channels and the shared directory in Redis; [`redis_handle`]: the one
//!   reconnecting, time-bounded Redis connection.
//! - [`config`]: settings from the environment (documented in `k8s-fallback/README.md`);
//!   [`client_ip`]: who the client is behind `TRUSTED_PROXIES`.
//! - [`reach`]: the message that takes session ends and role changes to the rooms holding the
//!   member's sockets; [`wire`]: the binary messages replicas exchange.
//! - [`telemetry`]: log lines in the core's schema, the panic hook, error reports to
//!   `SENTRY_DSN`.
//! - [`json`]: JSON responses and errors; [`metrics`]: counters and the relay latency
//!   histogram, rendered by the core's one list of metrics (`piano_core::metrics`).

pub mod accounts;
pub mod analytics;
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod http;
pub mod hub;
pub mod json;
pub mod kept;
pub mod metrics;
pub mod mongo;
pub mod network;
pub mod oauth;
pub mod observe;
pub mod outbox;
pub mod reach;
pub mod redis_handle;
pub mod room_task;
pub mod security;
pub mod serve;
pub mod sockets;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod user_stats;
pub mod wire;
pub mod ws;

use std::sync::Arc;

/// Locks a mutex even if a panic elsewhere poisoned it: one panicking task must not take the
/// whole replica down with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> u64 {
    now_us() / 1000
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Runs the server until SIGTERM or SIGINT, then drains.
pub async fn run(cfg: config::Config) -> Result<(), String> {
    telemetry::start_reports(
        cfg.sentry_dsn.clone(),
        piano_core::report::Origin {
            environment: cfg.environment.clone(),
            release: cfg.release.clone(),
            server_name: cfg.replica_id.clone(),
            client: format!("piano-fallback/{}", env!("CARGO_PKG_VERSION")),
        },
    );
    if cfg.generated_key {
        tracing::warn!(
            path = %cfg.data_dir.join("dev-jwt-key.pem").display(),
            "JWT_PRIVATE_KEY is not set: signing with a generated development key"
        );
    }
    let (store, cluster) = match &cfg.redis_url {
        Some(url) => {
            let cluster =
                cluster::Cluster::connect(url, cfg.replica_id.clone(), cfg.lease_ttl).await?;
            (
                store::Store::Redis(
                    cluster.conn.clone(),
                    user_stats::redis_key_base(&cfg.redis_key_prefix, &cfg.deployment_id).into(),
                ),
                Some(Arc::new(cluster)),
            )
        }
        None => (store::Store::sqlite(&cfg.data_dir)?, None),
    };
    let mongo = match &cfg.mongodb_url {
        Some(url) => Some(
            mongo::Mongo::start(
                url,
                &cfg.mongodb_database,
                &cfg.deployment_id,
                &cfg.data_dir,
            )
            .await?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        %addr,
        replica = cfg.replica_id,
        mode = if cluster.is_some() { "redis" } else { "standalone" },
        mongodb = mongo.is_some(),
        static_dir = ?cfg.static_dir,
        "listening"
    );
    let accounts = match &cluster {
        Some(c) => accounts::Accounts::redis(c.conn.clone(), &cfg.redis_key_prefix),
        None => accounts::Accounts::sqlite(&cfg.data_dir)?,
    }
    .configure(cfg.access_ttl_secs, cfg.session_ttl_secs, mongo.clone());
    let (reach_tx, reach_rx) = reach::channel();
    let accounts = accounts.with_reach(reach_tx);
    let limits = serve::ConnLimits::new(cfg.max_connections, cfg.max_connections_per_ip);
    let settings = serve::Settings {
        header_timeout: cfg.header_timeout,
        trusted: cfg.trusted_proxies.clone(),
        drain_timeout: cfg.drain_timeout,
    };
    let metrics_listener = match cfg.metrics_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on METRICS_ADDR {a}: {e}"))?,
        ),
        None => None,
    };
    if cfg.metrics_addr.is_none() && cfg.metrics_token.is_none() {
        tracing::info!("/metrics is off: set METRICS_TOKEN or METRICS_ADDR to serve it");
    }
    let accounts = Arc::new(accounts);
    let hub = hub::Hub::new(cfg, store, cluster, mongo.clone());
    tokio::spawn(hub::pass_on_reach(hub.clone(), reach_rx));
    if let Some(l) = metrics_listener {
        tracing::info!(addr = ?l.local_addr().ok(), "serving /metrics");
        let metrics_limits = serve::ConnLimits::new(64, 64);
        let metrics_settings = serve::Settings {
            header_timeout: hub.cfg.header_timeout,
            trusted: client_ip::TrustedProxies::None,
            drain_timeout: std::time::Duration::ZERO,
        };
        tokio::spawn(serve::serve(
            l,
            http::metrics_router(hub.clone()),
            metrics_limits,
            metrics_settings,
            std::future::pending(),
        ));
    }
    let app = http::router(hub.clone(), accounts);
    let shutdown = {
        let hub = hub.clone();
        async move {
            wait_for_signal().await;
            // Accepting stops once this returns; the players' sockets are closed by now.
            hub.drain().await;
        }
    };
    serve::serve(listener, app, limits, settings, shutdown).await;
    if let Some(a) = hub.analytics() {
        // The rooms' last hand-overs are queued by now; deliver them while we may.
        a.drain(std::time::Duration::from_secs(5)).await;
    }
    if let Some(m) = &mongo {
        // The rooms' last writes were stored as they stopped; deliver them while we may.
        m.drain(std::time::Duration::from_secs(5)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
