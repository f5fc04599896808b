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
//! Layout (a request's path through the crate):
//! - [`config`]: settings from the environment (documented in `k8s-fallback/README.md`).
//! - [`http`]: the router (the edge's paths, `/readyz`, `/metrics`, static files) and the
//!   WebSocket gate; [`auth`]: guest tokens, JWKS, token checks (members' sessions included),
//!   the auth rate limit; [`accounts`]: member accounts and sessions as the edge serves them
//!   (register, login, refresh with rotation and reuse detection, logout, profiles, roles), in
//!   SQLite or Redis, mirrored to and imported from MongoDB in the edge's layout.
//! - [`ws`]: one player's socket: reader → room, bounded outbound queue → writer.
//! - [`hub`]: the replica's state: local sockets, running rooms, followed rooms, the directory;
//!   placement of a new connection ([`hub::Hub::attach`]); drain on SIGTERM.
//! - [`room_task`]: one task per running room, the single writer of its core `Room`.
//! - [`store`]: the rooms' durable state (SQLite or Redis); [`cluster`]: leases, channels and
//!   the shared directory in Redis ([`redis_handle`]: the one reconnecting, time-bounded Redis
//!   connection); [`wire`]: the binary messages replicas exchange;
//!   [`mongo`]: with `MONGODB_URL`, every room change mirrored to MongoDB in the layout the edge
//!   uses, and rooms the room store does not know restored from it; [`outbox`]: those writes
//!   stored durably first (a local SQLite file) and delivered under the core's rules; [`network`]: in cluster
//!   mode, the edge's cross-deployment keys (presence, `online`, the `rooms` index) and
//!   `GET /api/network/rooms|online`.
//! - [`serve`]: the accept loop (hyper HTTP/1.1 with header/keep-alive timeouts, connection
//!   caps per replica and per client network); [`client_ip`]: who the client is behind
//!   `TRUSTED_PROXIES`; [`body`]: request bodies read capped and timed; [`security`]: security
//!   headers and CORS on every response.
//! - [`reach`]: session ends and role changes reach the rooms holding the member's sockets
//!   (through Redis pub/sub across replicas).
//! - [`metrics`]: counters and the relay latency histogram, in Prometheus text format.

pub mod accounts;
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod mongo;
pub mod network;
pub mod outbox;
pub mod reach;
pub mod redis_handle;
pub mod room_task;
pub mod security;
pub mod serve;
pub mod store;
pub mod wire;
pub mod ws;

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
            (store::Store::Redis(cluster.conn.clone()), Some(cluster))
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
    .configure(cfg.access_ttl_secs, mongo.clone());
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
    let hub = hub::Hub::new(cfg, store, cluster, mongo.clone(), accounts);
    tokio::spawn(reach::run(hub.clone(), reach_rx));
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
    let app = http::router(hub.clone());
    let shutdown = {
        let hub = hub.clone();
        async move {
            wait_for_signal().await;
            // Accepting stops once this returns; the players' sockets are closed by now.
            hub.drain().await;
        }
    };
    serve::serve(listener, app, limits, settings, shutdown).await;
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
