//! Configuration from the environment (12-factor): every setting has a default that works on a
//! laptop, and every one is documented in `k8s-fallback/README.md`.
//!
//! Token settings mean exactly what they mean at the edge (`src/config.rs`), so one key pair
//! serves both: tokens issued by either are accepted by both.

use crate::client_ip::TrustedProxies;
use piano_core::identity::{SigningKey, Verifier, parse_public_keys};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub struct Config {
    pub bind: SocketAddr,
    /// The built browser client (`web/dist`), served for paths that are not API routes.
    pub static_dir: Option<PathBuf>,
    /// Local persistence (SQLite) when Redis is not configured; also where a development
    /// signing key is kept.
    pub data_dir: PathBuf,
    pub redis_url: Option<String>,
    /// Prefix of the edge's keys in a shared Redis (`revoked:<sid>`), as `piano_backends` uses.
    pub redis_key_prefix: String,
    /// MongoDB mirror and source of last resort (`mongo.rs`), in the shared layout.
    pub mongodb_url: Option<String>,
    pub mongodb_database: String,
    /// Names this deployment's chat documents in MongoDB (the edge's default is `edge`).
    pub deployment_id: String,
    /// This process's name in leases and pub/sub channels (unique per process start).
    pub replica_id: String,
    pub lease_ttl: Duration,
    pub signing: SigningKey,
    pub verifier: Verifier,
    /// Every key tokens may be signed with: the current one first.
    pub public_keys: Vec<[u8; 32]>,
    pub issuer: String,
    pub audience: String,
    pub guest_ttl_secs: u64,
    /// Lifetime of members' access tokens (`ACCESS_TOKEN_TTL_SECS`, as at the edge).
    pub access_ttl_secs: u64,
    /// How long a session (its refresh token) lives without a refresh
    /// (`REFRESH_TOKEN_TTL_SECS`, as at the edge).
    pub session_ttl_secs: u64,
    /// `MAX_SESSIONS_PER_ACCOUNT`: 0 is unlimited; beyond it a login ends the oldest sessions.
    pub max_sessions: u32,
    /// `ADMIN_USERNAMES` (normalized): these members get the admin role at registration/login.
    pub admins: Vec<String>,
    pub auth_rate_limit: usize,
    /// `TRUSTED_PROXIES`: which hops of `X-Forwarded-For` to believe ([`TrustedProxies`]).
    pub trusted_proxies: TrustedProxies,
    /// From the first byte of a request (or from a kept-alive connection going idle) to the end
    /// of its headers; then the connection is closed (slowloris).
    pub header_timeout: Duration,
    /// Reading a request body (the JSON endpoints); then 408.
    pub body_timeout: Duration,
    /// A WebSocket that sends nothing, not even a pong to the server's pings, for this long is
    /// closed; pings go out every third of it.
    pub ws_idle_timeout: Duration,
    /// Open TCP connections (WebSockets included) on this replica; beyond it new ones are
    /// answered 503 and closed.
    pub max_connections: usize,
    /// Open TCP connections per client network (IPv4 address or IPv6 /64) that is not one of
    /// `TRUSTED_PROXIES`; beyond it 429 and closed.
    pub max_connections_per_ip: usize,
    /// Open WebSockets per client network (after `TRUSTED_PROXIES`) on this replica; beyond it
    /// the upgrade is refused with 429 `too_many_connections`.
    pub max_sockets_per_ip: usize,
    /// Sockets per user in one room, and per client network in one room (the core's
    /// `Limits::conns_per_user` / `conns_per_network`; staff are exempt from the latter).
    pub room_sockets_per_user: usize,
    pub room_sockets_per_network: usize,
    /// `RESUME_GRACE_MS`: how long a dropped connection keeps its place (docs/resume.md);
    /// 0 turns resuming off.
    pub resume_grace_ms: u64,
    /// `METRICS_TOKEN`: `/metrics` on the main port needs `Authorization: Bearer <it>`.
    pub metrics_token: Option<String>,
    /// `METRICS_ADDR`: serve `/metrics` (only) on this address, without a credential.
    pub metrics_addr: Option<SocketAddr>,
    /// `CORS_ORIGINS`: the only origins given `Access-Control-Allow-Origin`.
    pub cors_origins: Vec<String>,
    /// `ADMIN_BOOTSTRAP_SECRET`: registering a name in `ADMIN_USERNAMES` requires it
    /// (`x-admin-bootstrap`).
    pub admin_bootstrap_secret: Option<String>,
    /// Frames queued per connection before it counts as a slow consumer and is closed.
    pub outbound_queue: usize,
    pub drain_timeout: Duration,
    /// `ANALYTICS_URL`: the HTTP sink for analytics events (NDJSON batches), if any.
    pub analytics_url: Option<AnalyticsTarget>,
    /// `ANALYTICS_QUEUE_EVENTS`, `ANALYTICS_BATCH_EVENTS`, `ANALYTICS_FLUSH_MS`.
    pub analytics_limits: piano_core::analytics::BatchLimits,
    /// Whether the signing key was generated here (development only; logged as a warning).
    pub generated_key: bool,
    /// `ENVIRONMENT` (dev|staging|production) and `RELEASE` (default: the crate's version), in
    /// every error report; analytics events carry the environment too.
    pub environment: String,
    pub release: String,
    /// `SENTRY_DSN`: where error reports go (any Sentry-compatible service); none without it.
    pub sentry_dsn: Option<piano_core::report::Dsn>,
    /// `PIANO_TEST_ROUTES=1`: `/api/debug/…` (a forced panic and a forced 500) exist.
    pub test_routes: bool,
    /// `OAUTH_PROVIDERS` (with `OAUTH_CLIENT_SECRET_<ID>`): sign-in providers; empty: passwords
    /// only.
    pub oauth_providers: Vec<piano_core::oauth::Provider>,
    /// `PUBLIC_URL`: the origin players use (callback addresses, the cookie requests' origin);
    /// `None`: each request's own origin (development).
    pub public_url: Option<String>,
    /// Signs the sign-in flow cookie; derived from the JWT signing key, so every replica has it.
    pub flow_key: piano_core::oauth::FlowKey,
}

/// Reads settings through `get` (the process environment in production, a map in tests).
pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let number = |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| match get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                format!(
                    "{name} must be a number from {} to {}",
                    range.start(),
                    range.end()
                )
            }),
    };
    if get("TRUST_X_FORWARDED_FOR").is_some() {
        // It trusted the leftmost entry, which any client writes: refuse rather than guess.
        return Err("TRUST_X_FORWARDED_FOR was removed: set TRUSTED_PROXIES to the number of proxies in front of this server (e.g. 1) or their CIDRs".into());
    }
    let secs = |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| {
        number(name, default, range).map(Duration::from_secs)
    };
    let metrics_addr = match get("METRICS_ADDR") {
        None => None,
        Some(a) => Some(a.trim().parse::<SocketAddr>().map_err(|_| {
            format!("METRICS_ADDR must be an address with a port, e.g. 0.0.0.0:9090 (got {a:?})")
        })?),
    };
    let port = number("PORT", 8080, 1..=65535)? as u16;
    let ip: IpAddr = match get("BIND") {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(b) => b
            .trim()
            .parse()
            .map_err(|_| format!("BIND must be an IP address (got {b:?})"))?,
    };
    let data_dir =
        PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "target/k8s-fallback-data".into()));
    let static_dir = match get("STATIC_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => Some(PathBuf::from("web/dist")).filter(|p| p.join("index.html").is_file()),
    };
    let redis_url = get("REDIS_URL");
    let replica_id = get("REPLICA_ID")
        .map(|r| format!("{}-{}", r.trim(), random_hex(4)))
        .unwrap_or_else(|| random_hex(8));

    let (pem, generated_key) = match get("JWT_PRIVATE_KEY") {
        Some(pem) => (pem.replace("\\n", "\n"), false),
        None if redis_url.is_some() => {
            return Err("JWT_PRIVATE_KEY is required with REDIS_URL: every replica must sign and verify with the same key".into());
        }
        None => (dev_key(&data_dir)?, true),
    };
    let signing = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("JWT_PRIVATE_KEY is unusable: {e}"))?;
    let issuer = get("JWT_ISSUER").unwrap_or_else(|| "pianorhythm".into());
    let audience = get("JWT_AUDIENCE").unwrap_or_else(|| "pianorhythm".into());
    let previous = parse_public_keys(&get("JWT_VERIFY_KEYS").unwrap_or_default())
        .map_err(|e| format!("JWT_VERIFY_KEYS is unusable: {e}"))?;
    let mut public_keys = vec![signing.public_key()];
    public_keys.extend(previous.into_iter().filter(|k| *k != signing.public_key()));
    let verifier = Verifier::new(&issuer, &audience).with_keys(public_keys.iter().copied());
    let flow_key = piano_core::oauth::FlowKey::from_pem(&pem)
        .ok_or("JWT_PRIVATE_KEY is unusable for the sign-in flow key")?;
    let oauth_providers =
        piano_core::oauth::config::parse(&get("OAUTH_PROVIDERS").unwrap_or_default(), |name| {
            get(name)
        })?;
    let public_url = get("PUBLIC_URL").map(|u| public_origin(&u)).transpose()?;

    Ok(Config {
        bind: SocketAddr::new(ip, port),
        static_dir,
        data_dir,
        redis_url,
        redis_key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "pr:".into()),
        mongodb_url: get("MONGODB_URL"),
        mongodb_database: get("MONGODB_DATABASE").unwrap_or_else(|| "pianorhythm".into()),
        deployment_id: get("DEPLOYMENT_ID").unwrap_or_else(|| "fallback".into()),
        replica_id,
        lease_ttl: Duration::from_millis(number("LEASE_TTL_MS", 3000, 500..=60_000)?),
        signing,
        verifier,
        public_keys,
        issuer,
        audience,
        guest_ttl_secs: number("GUEST_TOKEN_TTL_SECS", 86_400, 60..=30 * 86_400)?,
        access_ttl_secs: number("ACCESS_TOKEN_TTL_SECS", 900, 30..=86_400)?,
        session_ttl_secs: number(
            "REFRESH_TOKEN_TTL_SECS",
            piano_core::account::SESSION_TTL_MS / 1000,
            piano_core::account::session::SESSION_TTL_SECS_RANGE,
        )?,
        max_sessions: number("MAX_SESSIONS_PER_ACCOUNT", 0, 0..=1000)? as u32,
        admins: get("ADMIN_USERNAMES")
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        auth_rate_limit: number("AUTH_RATE_LIMIT_PER_MINUTE", 10, 1..=1_000_000)? as usize,
        trusted_proxies: TrustedProxies::parse(get("TRUSTED_PROXIES").as_deref())?,
        header_timeout: secs("HTTP_HEADER_TIMEOUT_SECS", 10, 1..=300)?,
        body_timeout: secs("HTTP_BODY_TIMEOUT_SECS", 10, 1..=300)?,
        ws_idle_timeout: secs("WS_IDLE_TIMEOUT_SECS", 60, 1..=3600)?,
        max_connections: number("MAX_CONNECTIONS", 20_000, 1..=1_000_000)? as usize,
        max_connections_per_ip: number("MAX_CONNECTIONS_PER_IP", 64, 1..=1_000_000)? as usize,
        max_sockets_per_ip: number("MAX_WEBSOCKETS_PER_IP", 32, 1..=1_000_000)? as usize,
        room_sockets_per_user: number(
            "ROOM_SOCKETS_PER_USER",
            piano_core::room::budget::Limits::default().conns_per_user as u64,
            1..=1000,
        )? as usize,
        room_sockets_per_network: number(
            "ROOM_SOCKETS_PER_NETWORK",
            piano_core::room::budget::Limits::default().conns_per_network as u64,
            1..=100_000,
        )? as usize,
        resume_grace_ms: number(
            "RESUME_GRACE_MS",
            piano_core::limits::RESUME_GRACE_MS,
            0..=600_000,
        )?,
        metrics_token: get("METRICS_TOKEN").map(|t| t.trim().to_owned()),
        metrics_addr,
        cors_origins: piano_core::http_policy::parse_origins(get("CORS_ORIGINS").as_deref()),
        admin_bootstrap_secret: get("ADMIN_BOOTSTRAP_SECRET"),
        release: get("RELEASE").unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
        sentry_dsn: get("SENTRY_DSN")
            .map(|d| piano_core::report::Dsn::parse(&d))
            .transpose()?,
        test_routes: get("PIANO_TEST_ROUTES").as_deref() == Some("1"),
        outbound_queue: number("OUTBOUND_QUEUE_FRAMES", 1024, 16..=1_000_000)? as usize,
        drain_timeout: Duration::from_secs(number("DRAIN_TIMEOUT_SECS", 10, 0..=600)?),
        environment: piano_core::report::environment(get("ENVIRONMENT").as_deref())?.to_owned(),
        analytics_url: get("ANALYTICS_URL")
            .map(|u| AnalyticsTarget::parse(&u))
            .transpose()?,
        analytics_limits: piano_core::analytics::BatchLimits {
            queue: number("ANALYTICS_QUEUE_EVENTS", 10_000, 1..=1_000_000)? as usize,
            batch: number("ANALYTICS_BATCH_EVENTS", 500, 1..=10_000)? as usize,
            max_wait_ms: number("ANALYTICS_FLUSH_MS", 5_000, 10..=600_000)?,
        },
        generated_key,
        oauth_providers,
        public_url,
        flow_key,
    })
}

/// `PUBLIC_URL`: an origin (`https://host[:port]`, or plain `http` on loopback), nothing after it.
fn public_origin(url: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "PUBLIC_URL must be an origin like https://piano.example (plain http only on loopback; got {url:?})"
        )
    };
    let checked = piano_core::oauth::config::provider_url(url).map_err(|_| bad())?;
    match piano_core::oauth::cookies::origin_of(&checked) {
        Some(origin) if origin == checked => Ok(origin),
        _ => Err(bad()),
    }
}

/// A throw-away development key, kept in the data directory so tokens survive a restart.
fn dev_key(data_dir: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join("dev-jwt-key.pem");
    if let Ok(pem) = std::fs::read_to_string(&path) {
        // Written world-readable by earlier versions: whoever reads it can sign any token.
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), error = %e, "could not make the development key private");
        }
        return Ok(pem);
    }
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness for a key: {e}"))?;
    let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(Default::default())
        .map_err(|e| format!("could not encode a development key: {e}"))?
        .to_string();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("DATA_DIR {}: {e}", data_dir.display()))?;
    // Owner-only from the first byte (no window where another user could read it); a file
    // that appeared meanwhile (another process) wins.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, pem.as_bytes()));
    match written {
        Ok(()) => Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // getrandom does not fail on Linux; the clock keeps ids distinct anyway.
        let t = crate::now_ms().to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = t[i % 8];
        }
    }
    piano_core::hex::encode(&buf)
}

/// Where the analytics sink POSTs (`ANALYTICS_URL`): an `http://` or `https://` URL with a
/// host and no credentials (they would be logged with the URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsTarget {
    pub url: reqwest::Url,
}

impl AnalyticsTarget {
    pub fn parse(url: &str) -> Result<AnalyticsTarget, String> {
        let parsed = reqwest::Url::parse(url.trim())
            .map_err(|e| format!("ANALYTICS_URL is not a URL ({e}): {url:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "ANALYTICS_URL must be an http:// or https:// URL; got {url:?}"
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty)
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(format!("ANALYTICS_URL has no usable host: {url:?}"));
        }
        Ok(AnalyticsTarget { url: parsed })
    }
}
