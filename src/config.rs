//! Settings from the worker's vars and secrets, parsed once per isolate.
//!
//! | name | kind | default | meaning |
//! |---|---|---|---|
//! | `JWT_PRIVATE_KEY` | secret | none (required) | Ed25519 private key, PKCS#8 PEM |
//! | `JWT_VERIFY_KEYS` | var | none | previous public keys still accepted (JWK `x` values) |
//! | `JWT_ISSUER` | var | `pianorhythm` | `iss` of issued tokens, and the only one accepted |
//! | `JWT_AUDIENCE` | var | `pianorhythm` | `aud` of issued tokens, and the only one accepted |
//! | `GUEST_TOKEN_TTL_SECS` | var | `86400` | lifetime of guest tokens |
//! | `ACCESS_TOKEN_TTL_SECS` | var | `900` | lifetime of members' access tokens |
//! | `REFRESH_TOKEN_TTL_SECS` | var | `2592000` (30 days) | lifetime of a session (its refresh token) without a refresh |
//! | `MAX_SESSIONS_PER_ACCOUNT` | var | `0` (no limit) | live sessions per member; older ones end |
//! | `ADMIN_USERNAMES` | var | none | usernames that get the admin role on register/login |
//! | `AUTH_RATE_LIMIT_PER_MINUTE` | var | `10` | auth requests per client IP per minute |
//! | `ADMIN_BOOTSTRAP_SECRET` | secret | none | registering a name in `ADMIN_USERNAMES` needs it (header `x-admin-bootstrap`) |
//! | `WS_UPGRADE_RATE_PER_MINUTE` | var | 3 × the auth limit (30) | WebSocket upgrades per client IP per minute |
//! | `CORS_ORIGINS` | var | none | origins allowed to call the API from a browser (exact, comma-separated) |
//! | `METRICS_TOKEN` | secret | none (`/metrics` answers 404) | bearer token a scraper presents at `/metrics` (read by `metrics.rs`) |
//! | `RELEASE` | var | the crate's version | the release `/metrics` and `/api/status` report |
//! | `ENVIRONMENT` | var | `dev` | dev, staging or production; analytics events carry it (read by the Room objects) |
//! | `ANALYTICS_URL` | var | none | HTTP sink for analytics events, NDJSON POSTs (read by the Room objects, `durable-objects/src/analytics.rs`) |
//! | `ANALYTICS` | Analytics Engine binding | per environment in `wrangler.toml` | one data point per analytics event |
//! | `LOG_LEVEL` | var | `info` | `error`, `warn`, `info` or `debug`: the least severe log lines printed |
//! | `DEPLOYMENT_ID` | var | `edge` | names this deployment in logs, reports (`server_name`) and shared keys |
//! | `SENTRY_DSN` | secret | none | error reports to any Sentry-compatible service (`docs/operating-logs-errors.md`) |
//! | `OAUTH_PROVIDERS` | var | none (password sign-in only) | sign-in providers, JSON (`docs/accounts-oauth.md`; read by `oauth.rs`, a bad value answers 503 on its routes) |
//! | `OAUTH_CLIENT_SECRET_<ID>` | secret | none (public client, PKCE only) | a provider's client secret |
//! | `PUBLIC_URL` | var | the request's origin | the origin players use: callback URLs, and the origin cookie requests must come from |
//! | `PIANO_TEST_ROUTES` | var | none | `1` (tests only): `GET /api/debug/panic` and `/api/debug/error` exist |
//!
//! The logging and reporting settings are read by `piano_durable_objects::log`, for the worker
//! and the objects alike.

use piano_core::identity::{self, Claims, TokenError, Verifier, parse_public_keys};
use piano_durable_objects::webcrypto::ed25519;
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use wasm_bindgen::JsValue;
use worker::Env;
use zeroize::Zeroizing;

/// Auth requests per client IP per minute unless `AUTH_RATE_LIMIT_PER_MINUTE` says otherwise.
pub const DEFAULT_AUTH_RATE_LIMIT: usize = 10;

pub struct Config {
    /// The signing key's seed, and the public key a PKCS#8 v2 key lists (checked against what
    /// WebCrypto derives).
    seed: Zeroizing<[u8; 32]>,
    listed_public: Option<[u8; 32]>,
    /// Previous public keys still accepted (`JWT_VERIFY_KEYS`).
    previous: Vec<[u8; 32]>,
    /// The keys in WebCrypto, made at first use ([`Config::keys`]: importing is asynchronous).
    keys: OnceCell<Rc<Keys>>,
    pub issuer: String,
    pub audience: String,
    pub guest_ttl_secs: u64,
    pub access_ttl_secs: u64,
    pub max_sessions: u32,
    pub admins: Vec<String>,
    pub admin_bootstrap_secret: Option<String>,
    pub auth_rate_limit: usize,
    /// A session's lifetime without a refresh (`REFRESH_TOKEN_TTL_SECS`): the session cookies'.
    pub session_ttl_secs: u64,
}

/// Why the worker cannot issue or verify tokens; shown to callers as a 503.
pub struct NotConfigured(pub String);

thread_local! {
    // Keyed by the raw settings, so a changed secret (new deployment) is picked up.
    static CACHE: RefCell<Option<(String, Rc<Config>)>> = const { RefCell::new(None) };
}

use piano_durable_objects::setting;

pub fn load(env: &Env) -> Result<Rc<Config>, NotConfigured> {
    let key = setting(env, "JWT_PRIVATE_KEY").ok_or_else(|| {
        NotConfigured(
            "JWT_PRIVATE_KEY is not set: run `npm run dev` (writes a development key to .dev.vars) \
             or `wrangler secret put JWT_PRIVATE_KEY`"
                .into(),
        )
    })?;
    let issuer = setting(env, "JWT_ISSUER").unwrap_or_else(|| "pianorhythm".into());
    let audience = setting(env, "JWT_AUDIENCE").unwrap_or_else(|| "pianorhythm".into());
    let ttl = setting(env, "GUEST_TOKEN_TTL_SECS");
    let previous = setting(env, "JWT_VERIFY_KEYS").unwrap_or_default();
    let others: Vec<Option<String>> = [
        "ACCESS_TOKEN_TTL_SECS",
        "MAX_SESSIONS_PER_ACCOUNT",
        "ADMIN_USERNAMES",
        "AUTH_RATE_LIMIT_PER_MINUTE",
        "ADMIN_BOOTSTRAP_SECRET",
        "REFRESH_TOKEN_TTL_SECS",
    ]
    .iter()
    .map(|n| setting(env, n))
    .collect();
    let cache_key =
        format!("{key}\u{0}{issuer}\u{0}{audience}\u{0}{ttl:?}\u{0}{previous}\u{0}{others:?}");
    if let Some(hit) = CACHE.with_borrow(|c| {
        c.as_ref()
            .filter(|(k, _)| *k == cache_key)
            .map(|(_, cfg)| cfg.clone())
    }) {
        return Ok(hit);
    }
    let pem = Zeroizing::new(key.trim().replace("\\n", "\n"));
    let (seed, listed_public) = piano_core::pkcs8::ed25519_key(&pem).ok_or_else(|| {
        NotConfigured(format!(
            "JWT_PRIVATE_KEY is unusable: {}",
            identity::KeyError::NotEd25519Pkcs8Pem
        ))
    })?;
    let guest_ttl_secs = match ttl {
        None => 86_400,
        Some(t) => t
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|t| (60..=30 * 86_400).contains(t))
            .ok_or_else(|| NotConfigured("GUEST_TOKEN_TTL_SECS must be 60 to 2592000".into()))?,
    };
    let previous = parse_public_keys(&previous)
        .map_err(|e| NotConfigured(format!("JWT_VERIFY_KEYS is unusable: {e}")))?;
    let number =
        |i: usize, name: &str, default: u64, range: std::ops::RangeInclusive<u64>| match &others[i]
        {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    NotConfigured(format!("{name} must be {}-{}", range.start(), range.end()))
                }),
        };
    let access_ttl_secs = number(0, "ACCESS_TOKEN_TTL_SECS", 900, 30..=86_400)?;
    let max_sessions = number(1, "MAX_SESSIONS_PER_ACCOUNT", 0, 0..=1000)? as u32;
    // The Account object reads it itself (it rotates sessions); checked here so that a bad
    // value refuses the auth endpoints as `not_configured` instead of passing unnoticed.
    let session_ttl_secs = number(
        5,
        "REFRESH_TOKEN_TTL_SECS",
        piano_core::account::SESSION_TTL_MS / 1000,
        piano_core::account::session::SESSION_TTL_SECS_RANGE,
    )?;
    let auth_rate_limit = number(
        3,
        "AUTH_RATE_LIMIT_PER_MINUTE",
        DEFAULT_AUTH_RATE_LIMIT as u64,
        1..=1_000_000,
    )? as usize;
    let admins = others[2]
        .as_deref()
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let cfg = Rc::new(Config {
        seed,
        listed_public,
        previous,
        keys: OnceCell::new(),
        issuer,
        audience,
        guest_ttl_secs,
        access_ttl_secs,
        max_sessions,
        admins,
        admin_bootstrap_secret: others[4].clone(),
        auth_rate_limit,
        session_ttl_secs,
    });
    CACHE.with_borrow_mut(|c| *c = Some((cache_key, cfg.clone())));
    Ok(cfg)
}

/// The token keys in the runtime's WebCrypto: the signing key, and a verification key for each
/// accepted public key (the current one first, then previous ones).
pub struct Keys {
    kid: String,
    signing: JsValue,
    verifier: Verifier,
    verifying: Vec<([u8; 32], JsValue)>,
}

impl Config {
    /// The key that signs sign-in flow cookies (derived from the signing key's seed).
    pub fn flow_key(&self) -> piano_core::oauth::FlowKey {
        piano_core::oauth::FlowKey::from_seed(&self.seed)
    }

    /// The keys, imported into WebCrypto once per isolate (a setting WebCrypto refuses, e.g. a
    /// public key that is no Ed25519 point, is `NotConfigured`).
    pub async fn keys(&self) -> Result<Rc<Keys>, NotConfigured> {
        if let Some(k) = self.keys.get() {
            return Ok(k.clone());
        }
        let unusable = |what: &str, e: JsValue| NotConfigured(format!("{what} is unusable: {e:?}"));
        let der = piano_core::pkcs8::ed25519_der(&self.seed);
        let (signing, public) = ed25519::import_signing(&der)
            .await
            .map_err(|e| unusable("JWT_PRIVATE_KEY", e))?;
        if self.listed_public.is_some_and(|p| p != public) {
            return Err(NotConfigured(
                "JWT_PRIVATE_KEY is unusable: its public key does not match its seed".into(),
            ));
        }
        let mut public_keys = vec![public];
        public_keys.extend(self.previous.iter().copied().filter(|k| *k != public));
        let mut verifying = Vec::with_capacity(public_keys.len());
        for k in &public_keys {
            let key = ed25519::import_public(k)
                .await
                .map_err(|e| unusable("JWT_VERIFY_KEYS", e))?;
            verifying.push((*k, key));
        }
        let keys = Rc::new(Keys {
            kid: identity::key_id(&public),
            signing,
            verifier: Verifier::new(&self.issuer, &self.audience)
                .with_keys(public_keys.iter().copied()),
            verifying,
        });
        // Two requests may have imported at once: the first one kept is the one used.
        let _ = self.keys.set(keys.clone());
        Ok(self.keys.get().cloned().unwrap_or(keys))
    }
}

impl Keys {
    /// Every public key tokens may be signed with: the current one first.
    pub fn public_keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.verifying.iter().map(|(k, _)| k)
    }

    /// A token of these claims, signed with the current key.
    pub async fn sign(&self, claims: &Claims) -> Result<String, JsValue> {
        let input = identity::signing_input(claims, &self.kid);
        let signature = ed25519::sign(&self.signing, input.as_bytes()).await?;
        Ok(identity::signed_token(&input, &signature))
    }

    /// The core's checks around WebCrypto's signature check: the token's verdict, or `Err`
    /// when WebCrypto itself failed (not the token's fault: the caller answers 503).
    pub async fn verify(
        &self,
        token: &str,
        now_secs: u64,
    ) -> Result<Result<Claims, TokenError>, JsValue> {
        let u = match self.verifier.unverified(token) {
            Ok(u) => u,
            Err(e) => return Ok(Err(e)),
        };
        let Some(key) = self
            .verifying
            .iter()
            .find(|(k, _)| *k == u.key)
            .map(|(_, key)| key)
        else {
            return Ok(Err(TokenError::UnknownKey));
        };
        Ok(
            match ed25519::verify(key, &u.signature, u.signing_input.as_bytes()).await? {
                true => self.verifier.accept(u, now_secs),
                false => Err(TokenError::BadSignature),
            },
        )
    }
}
