//! Tokens: guest sign-in, the JWKS, the token check in front of every room connection and
//! member request, the auth rate limit's counters, and the one conversion of an [`ApiError`]
//! into HTTP ([`api_error`]) — the same rules as the edge (`src/auth.rs`), from the core.
//!
//! Members' tokens (`sid`/`gen` claims) are checked against their session at every use
//! ([`Sessions`], implemented by the account store under the core's
//! [`piano_core::account::session::check`]): a logged-out or refreshed-away token is refused at
//! once. A session this deployment never issued (the edge's, given the same key) is accepted on
//! its signature unless the shared revocation list (`{REDIS_KEY_PREFIX}revoked:<sid>`, with
//! Redis) names it.

use crate::cluster::Cluster;
use crate::config::Config;
use crate::json::{json_error, with_header};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use piano_core::account::ApiError;
use piano_core::account::rate;
use piano_core::account::session::Check;
use piano_core::account::tokens::{Issuer, guest_body};
use piano_core::identity::{Claims, Identity, public_jwk};
use piano_core::limits::SUBPROTOCOL;
use piano_core::names;
use piano_core::window::RateWindow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// The response of a refused API request: the one place an [`ApiError`] becomes HTTP.
pub fn api_error(e: &ApiError) -> Response {
    let mut resp = crate::json::json(e.status(), &e.body());
    for (name, value) in e.headers() {
        resp = with_header(resp, name, &value);
    }
    resp
}

/// Largest JSON body the auth endpoints read.
pub const MAX_BODY_BYTES: usize = 4096;
pub const BEARER_PREFIX: &str = "bearer.";

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
        Err(e) => return api_error(&ApiError::InvalidName(e.to_string())),
    };
    let issuer = Issuer {
        issuer: &cfg.issuer,
        audience: &cfg.audience,
        ttl_secs: cfg.guest_ttl_secs,
    };
    let id = crate::config::random_hex(8);
    let claims = issuer.guest(&id, name, crate::now_ms() / 1000);
    let token = cfg.signing.sign(&claims);
    with_header(
        crate::json::json(200, &guest_body(&token, &claims)),
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
        .map_err(|e| api_error(&e))
}

/// Verifies a token; members' tokens are also checked against their session: a logged-out or
/// refreshed-away token is refused at once.
pub async fn verify_claims(
    cfg: &Config,
    sessions: &impl Sessions,
    token: Option<&str>,
) -> Result<Claims, ApiError> {
    verify_session(cfg, sessions, token)
        .await
        .map(|(claims, _)| claims)
}

/// [`verify_claims`], plus when a member's session expires (ms; `None` for guests and for
/// sessions this deployment does not hold).
async fn verify_session(
    cfg: &Config,
    sessions: &impl Sessions,
    token: Option<&str>,
) -> Result<(Claims, Option<u64>), ApiError> {
    let mut session_expiry = None;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(ApiError::Unauthorized(
            "a token is required: Authorization: Bearer <jwt>, ?token=<jwt> or subprotocol bearer.<jwt>".into(),
        ));
    };
    let claims = cfg
        .verifier
        .verify(token, crate::now_ms() / 1000)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    if let Some(sid) = &claims.sid {
        let check = sessions
            .check(&claims.sub, sid, claims.generation.unwrap_or(0))
            .await
            .map_err(|e| {
                tracing::warn!(error = e, "session check failed");
                ApiError::Unavailable {
                    retry_after_secs: None,
                }
            })?;
        match check {
            Check::Live { expires_at } => session_expiry = Some(expires_at),
            Check::Unknown => {}
            Check::Ended => {
                return Err(ApiError::Unauthorized(
                    "the session has ended (logged out or refreshed): log in again".into(),
                ));
            }
        }
    }
    Ok((claims, session_expiry))
}

pub fn unauthorized(message: &str) -> Response {
    api_error(&ApiError::Unauthorized(message.to_owned()))
}

/// `Authorization: Bearer <jwt>`.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// The counters of the auth rate limit ([`rate`]: what is limited, key, window, budget). With
/// Redis, counted there exactly as the edge counts them when it has Redis, so the limit holds
/// across replicas and deployments; standalone, or for a while after Redis failed, in memory
/// per replica.
pub struct RateLimiter {
    limit: usize,
    /// Each network's window and its last hit (to drop idle networks).
    hits: Mutex<HashMap<IpAddr, (RateWindow, u64)>>,
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

    /// Counts one auth request of `ip`: in Redis if there is one, else here.
    pub async fn check_shared(
        &self,
        cluster: Option<&Cluster>,
        redis_key_prefix: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = crate::now_ms();
        if let Some(c) = cluster
            && self.redis_skip_until.load(Relaxed) <= now
        {
            let key = piano_backends::layout::Keys {
                prefix: redis_key_prefix.to_owned(),
            }
            .rate(
                rate::AUTH_SCOPE,
                &rate::client_key(&ip.to_string()),
                rate::shared_window(now),
            );
            let mut pipe = redis::pipe();
            pipe.incr(&key, 1)
                .expire(&key, rate::SHARED_COUNTER_TTL_SECS as i64)
                .ignore();
            let counted: redis::RedisResult<(u64,)> = c.conn.pipe(&pipe).await;
            match counted {
                Ok((count,)) => return rate::shared_verdict(count, self.limit, now),
                Err(e) => {
                    crate::metrics::redis_error("counting an auth request", &e);
                    self.redis_skip_until
                        .store(now + rate::SHARED_BACKOFF_MS, Relaxed);
                }
            }
        }
        self.check(ip, now)
    }

    /// Counts one auth request of `ip` in this process (a sliding window per network).
    pub fn check(&self, ip: IpAddr, now: u64) -> Result<(), ApiError> {
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = crate::client_ip::network_of(ip);
        if hits.len() >= rate::LOCAL_TRACKED_NETWORKS && !hits.contains_key(&key) {
            hits.retain(|_, (_, last)| *last + rate::AUTH_WINDOW_MS > now);
            if hits.len() >= rate::LOCAL_TRACKED_NETWORKS {
                key = IpAddr::from([0, 0, 0, 0]);
            }
        }
        let (window, last) = hits.entry(key).or_default();
        *last = now;
        rate::local_verdict(window, self.limit, now)
    }
}
