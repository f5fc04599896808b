//! Tokens: guest sign-in, the JWKS, and the token check in front of every room connection —
//! the same rules as the edge (`src/auth.rs`), over the same `piano_core::identity` code.
//!
//! Members' tokens (`sid`/`gen` claims) are checked against their session at every use
//! ([`crate::accounts`]): a logged-out or refreshed-away token is refused at once. A session
//! this deployment never issued (the edge's, given the same key) is accepted on its signature
//! unless the shared revocation list (`{REDIS_KEY_PREFIX}revoked:<sid>`, with Redis) names it.

use crate::cluster::Cluster;
use crate::config::Config;
use crate::json::{json_error, with_header};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use piano_core::identity::{Claims, Identity, public_jwk};
use piano_core::limits::SUBPROTOCOL;
use piano_core::names;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest JSON body the auth endpoints read.
pub const MAX_BODY_BYTES: usize = 4096;
pub const BEARER_PREFIX: &str = "bearer.";

/// A token's session as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Live until `expires_at` (ms), unless it ends sooner.
    Live { expires_at: u64 },
    /// Logged out, refreshed away, revoked, expired, or an account that is not there.
    Ended,
    /// Not a session of this deployment (the edge's, with the same key): accepted on signature.
    Unknown,
}

/// Members' sessions as the token check sees them: the account store implements this
/// ([`crate::accounts`], above this module: its handlers check tokens here).
pub trait Sessions: Sync {
    fn check(
        &self,
        sub: &str,
        sid: &str,
        generation: u64,
    ) -> impl std::future::Future<Output = Result<Check, String>> + Send;
}

pub fn jwks(cfg: &Config) -> Response {
    let keys: Vec<_> = cfg.public_keys.iter().map(public_jwk).collect();
    with_header(
        crate::json::json(200, &serde_json::json!({ "keys": keys })),
        "cache-control",
        "public, max-age=300",
    )
}

pub fn guest(cfg: &Config, body: &[u8]) -> Response {
    #[derive(serde::Deserialize)]
    struct GuestRequest {
        name: String,
    }
    let Ok(GuestRequest { name }) = serde_json::from_slice::<GuestRequest>(body) else {
        return json_error(
            400,
            "invalid_json",
            r#"expected a JSON body like {"name": "Ada"}"#,
        );
    };
    let name = match names::display_name(&name) {
        Ok(n) => n,
        Err(e) => return json_error(400, "invalid_name", &format!("name {e}")),
    };
    let now = crate::now_ms() / 1000;
    let claims = Claims {
        sub: format!("guest:{}", crate::config::random_hex(8)),
        name,
        roles: vec!["guest".into()],
        iat: now,
        exp: now + cfg.guest_ttl_secs,
        nbf: None,
        sid: None,
        generation: None,
        iss: cfg.issuer.clone(),
        aud: cfg.audience.clone(),
    };
    let token = cfg.signing.sign(&claims);
    with_header(
        crate::json::json(
            200,
            &serde_json::json!({
                "token": token,
                "expires_at": claims.exp,
                "user": { "id": claims.sub, "name": claims.name, "roles": claims.roles },
            }),
        ),
        "cache-control",
        "no-store",
    )
}

/// The token of a WebSocket upgrade and whether to echo `pianorhythm.v1`.
pub struct UpgradeAuth {
    pub token: Option<String>,
    pub subprotocol: bool,
}

/// `?token=` (tools) or a `bearer.<jwt>` subprotocol entry (browsers). A client that offers
/// subprotocols must offer `pianorhythm.v1`, the only one the server echoes.
pub fn upgrade_auth(uri: &Uri, headers: &HeaderMap) -> Result<UpgradeAuth, &'static str> {
    let mut token = uri.query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == "token").then(|| names::percent_decode(&v.replace('+', " ")).unwrap_or_default())
        })
    });
    let mut subprotocol = false;
    let offered: Vec<&str> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !offered.is_empty() {
        let mut has_ours = false;
        for p in offered
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            if let Some(t) = p.strip_prefix(BEARER_PREFIX) {
                token.get_or_insert_with(|| t.to_owned());
            } else if p == SUBPROTOCOL {
                has_ours = true;
            }
        }
        if !has_ours {
            return Err("offer the WebSocket subprotocol pianorhythm.v1");
        }
        subprotocol = true;
    }
    Ok(UpgradeAuth { token, subprotocol })
}

#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
pub async fn verify(
    cfg: &Config,
    sessions: &impl Sessions,
    token: Option<&str>,
) -> Result<Identity, Response> {
    verify_session(cfg, sessions, token)
        .await
        .map(|(claims, expires_at)| {
            let mut identity = Identity::from(claims);
            if expires_at.is_some() {
                // A member's socket lives as long as the session (as it stands now; a refresh
                // later does not extend sockets opened before it).
                identity.expires_at = expires_at;
            }
            identity
        })
}

/// Verifies a token; on failure, the 401 (or 503) response to return. Members' tokens are also
/// checked against their session ([`Sessions::check`]): a logged-out or
/// refreshed-away token is refused at once.
#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
pub async fn verify_claims(
    cfg: &Config,
    sessions: &impl Sessions,
    token: Option<&str>,
) -> Result<Claims, Response> {
    verify_session(cfg, sessions, token)
        .await
        .map(|(claims, _)| claims)
}

/// [`verify_claims`], plus when a member's session expires (ms; `None` for guests and for
/// sessions this deployment does not hold).
#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
async fn verify_session(
    cfg: &Config,
    sessions: &impl Sessions,
    token: Option<&str>,
) -> Result<(Claims, Option<u64>), Response> {
    let mut session_expiry = None;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(unauthorized(
            "a token is required: Authorization: Bearer <jwt>, ?token=<jwt> or subprotocol bearer.<jwt>",
        ));
    };
    let claims = cfg
        .verifier
        .verify(token, crate::now_ms() / 1000)
        .map_err(|e| unauthorized(&e.to_string()))?;
    if let Some(sid) = &claims.sid {
        match sessions
            .check(&claims.sub, sid, claims.generation.unwrap_or(0))
            .await
        {
            Ok(Check::Live { expires_at }) => session_expiry = Some(expires_at),
            Ok(Check::Unknown) => {}
            Ok(Check::Ended) => {
                return Err(unauthorized(
                    "the session has ended (logged out or refreshed): log in again",
                ));
            }
            Err(e) => {
                tracing::warn!(error = e, "session check failed");
                return Err(json_error(
                    503,
                    "unavailable",
                    "could not check the session; try again",
                ));
            }
        }
    }
    Ok((claims, session_expiry))
}

pub fn unauthorized(message: &str) -> Response {
    with_header(
        json_error(401, "unauthorized", message),
        "www-authenticate",
        r#"Bearer error="invalid_token""#,
    )
}

/// Compares two secrets without revealing, through timing, how much of them matched.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // Hashing first makes the comparison length-independent too.
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `Authorization: Bearer <jwt>`.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// Auth requests per client IP per minute. With Redis, counted there exactly as the edge counts
/// them when it has Redis (`{REDIS_KEY_PREFIX}rate:auth:<ip>:<minute>`, fixed one-minute
/// windows), so the limit holds across replicas and deployments; standalone, or for 30 s after
/// Redis failed, in memory per replica (a sliding minute).
pub struct RateLimiter {
    limit: usize,
    hits: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    redis_skip_until: std::sync::atomic::AtomicU64,
}

impl RateLimiter {
    pub fn new(limit: usize) -> RateLimiter {
        RateLimiter {
            limit,
            hits: Mutex::new(HashMap::new()),
            redis_skip_until: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Err(seconds to wait)` when over the limit: in Redis if there is one, else here.
    pub async fn check_shared(
        &self,
        cluster: Option<&Cluster>,
        redis_key_prefix: &str,
        ip: IpAddr,
    ) -> Result<(), u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = crate::now_ms();
        if let Some(c) = cluster
            && self.redis_skip_until.load(Relaxed) <= now
        {
            let window = now / 60_000;
            let key = piano_backends::layout::Keys {
                prefix: redis_key_prefix.to_owned(),
            }
            .rate(
                "auth",
                &crate::client_ip::network_of(ip).to_string(),
                window,
            );
            let mut pipe = redis::pipe();
            pipe.incr(&key, 1).expire(&key, 120).ignore();
            let counted: redis::RedisResult<(u64,)> = c.conn.pipe(&pipe).await;
            match counted {
                Ok((count,)) => {
                    let retry_after = ((window + 1) * 60_000)
                        .saturating_sub(now)
                        .div_ceil(1000)
                        .max(1);
                    return if count <= self.limit as u64 {
                        Ok(())
                    } else {
                        Err(retry_after)
                    };
                }
                Err(e) => {
                    crate::metrics::redis_error("counting an auth request", &e);
                    self.redis_skip_until.store(now + 30_000, Relaxed);
                }
            }
        }
        self.check(ip)
    }

    /// `Err(seconds to wait)` when over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        const WINDOW: Duration = Duration::from_secs(60);
        let now = Instant::now();
        // Bounded: at most `TRACKED` networks (each with at most `limit` instants). Past it,
        // networks not tracked yet share one bucket, so a flood from many addresses throttles
        // newcomers together instead of growing the map.
        const TRACKED: usize = 100_000;
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = crate::client_ip::network_of(ip);
        if hits.len() >= TRACKED && !hits.contains_key(&key) {
            hits.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if hits.len() >= TRACKED {
                key = IpAddr::from([0, 0, 0, 0]);
            }
        }
        let q = hits.entry(key).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let wait = q
                .front()
                .map(|t| WINDOW.saturating_sub(now.duration_since(*t)))
                .unwrap_or(WINDOW);
            return Err(wait.as_secs().max(1));
        }
        q.push_back(now);
        Ok(())
    }
}
