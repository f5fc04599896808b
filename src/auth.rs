//! Tokens: guest sign-in, the JWKS, the token check in front of every room connection and
//! member request (with the session check at the member's Account object), and what guards
//! every auth endpoint: the rate limit's counters (the policy is `piano_core::account::rate`)
//! and the capped body. [`crate::accounts`] builds on this module; this one never calls it.

use crate::config::{self, Config, Keys};
use piano_core::account::ApiError;
use piano_core::account::rate;
use piano_core::account::tokens::{Issuer, guest_body};
use piano_core::identity::{Claims, Identity, public_jwk};
use piano_core::limits::SUBPROTOCOL;
use piano_core::names;
pub use piano_durable_objects::account::api_response;
use piano_durable_objects::json_error;
use serde::Deserialize;
use std::rc::Rc;
use worker::*;

const ACCOUNTS_BINDING: &str = "ACCOUNTS";
const LIMITER_BINDING: &str = "LIMITER";
const MAX_BODY_BYTES: usize = 4096;

/// Calls the Account object of `username` (the normalized name).
pub async fn account_call(
    env: &Env,
    username: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(method)
        .with_headers(headers)
        .with_body(body.map(|b| b.to_string().into()));
    let req = Request::new_with_init(&format!("https://account.internal{path}"), &init)?;
    env.durable_object(ACCOUNTS_BINDING)?
        .id_from_name(username)?
        .get_stub()?
        .fetch_with_request(req)
        .await
}

/// Whether the session a member's token names is still the live one: `Some(expiry)` when it
/// is (the session's expiry in ms when this deployment issued it), `None` when not. A session
/// this deployment never issued (another deployment sharing the signing key and Redis issued
/// it, e.g. the Kubernetes fallback) is live unless the shared revocation list names it;
/// without a shared Redis, or while it cannot be read, it is refused.
async fn session_is_live(
    env: &Env,
    user_id: &str,
    sid: &str,
    generation: u64,
) -> Result<Option<Option<u64>>> {
    let Some(username) = user_id.strip_prefix("user:") else {
        return Ok(None);
    };
    let mut resp = account_call(
        env,
        username,
        Method::Post,
        "/check",
        Some(serde_json::json!({ "sid": sid, "generation": generation })),
    )
    .await?;
    #[derive(Deserialize)]
    struct Check {
        valid: bool,
        #[serde(default = "yes")]
        known: bool,
        #[serde(default)]
        expires: Option<u64>,
    }
    fn yes() -> bool {
        true
    }
    let check: Check = resp.json().await?;
    if check.valid || check.known {
        return Ok(check.valid.then_some(check.expires));
    }
    Ok(crate::shared::not_revoked(env, sid).await.then_some(None))
}

/// Counts one auth request of this client's network ([`rate`]): in the shared Redis when
/// there is one (fixed minutes, shared with every deployment), else in its Limiter object.
async fn rate_limited(
    req: &Request,
    env: &Env,
    cfg: &Config,
) -> Result<std::result::Result<(), ApiError>> {
    let ip = req
        .headers()
        .get("cf-connecting-ip")?
        .unwrap_or_else(|| "unknown".into());
    let key = rate::client_key(&ip);
    let now = Date::now().as_millis();
    if let Some(count) = crate::shared::rate_hit(env, &key, now).await {
        return Ok(rate::shared_verdict(count, cfg.auth_rate_limit, now));
    }
    let wait = limiter_hit(
        env,
        &format!("{}:{key}", rate::AUTH_SCOPE),
        cfg.auth_rate_limit,
    )
    .await?;
    Ok(rate::verdict_of_wait(wait))
}

/// Counts one hit on the Limiter object `key` (a sliding minute, [`rate::AUTH_WINDOW_MS`]):
/// `None` when allowed, else how long until the next hit would be (ms).
pub async fn limiter_hit(env: &Env, key: &str, limit: usize) -> Result<Option<u64>> {
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(
        serde_json::json!({ "limit": limit, "window_ms": rate::AUTH_WINDOW_MS })
            .to_string()
            .into(),
    ));
    let hit = Request::new_with_init("https://limiter.internal/hit", &init)?;
    let stub = env
        .durable_object(LIMITER_BINDING)?
        .id_from_name(key)?
        .get_stub()?;
    #[derive(Deserialize)]
    struct Verdict {
        allowed: bool,
        retry_after_ms: u64,
    }
    let verdict: Verdict = stub.fetch_with_request(hit).await?.json().await?;
    Ok((!verdict.allowed).then_some(verdict.retry_after_ms))
}

/// The configuration for an auth endpoint, unless the caller is over the rate limit (or the
/// server is not configured): then the response to send.
pub async fn limited_config(
    req: &Request,
    env: &Env,
) -> std::result::Result<Rc<Config>, Result<Response>> {
    let cfg = config_or_503(env)?;
    match rate_limited(req, env, &cfg).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(api_response(&e)),
        Err(e) => return Err(Err(e)),
    }
    // The keys before any account call: a session the Account object created or rotated must
    // not be lost to a signing key that cannot be imported.
    keys_or_503(&cfg).await?;
    Ok(cfg)
}

/// Reads a request body while it streams in, stopping (413 `body_too_large`) as soon as it
/// passes [`MAX_BODY_BYTES`]: a large or endless body is never buffered whole.
pub async fn capped_body(req: &mut Request) -> std::result::Result<Vec<u8>, Result<Response>> {
    use futures_util::StreamExt;
    let too_large = || api_response(&ApiError::BodyTooLarge);
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|n| n.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let Ok(mut stream) = req.stream() else {
        // No body at all.
        return Ok(body);
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Err)?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Prefix of the subprotocol entry that carries a token (browsers cannot set headers on a
/// WebSocket): `Sec-WebSocket-Protocol: pianorhythm.v1, bearer.<jwt>`.
pub const BEARER_PREFIX: &str = "bearer.";

pub fn config_or_503(env: &Env) -> std::result::Result<Rc<Config>, Result<Response>> {
    config::load(env).map_err(|e| json_error(503, "not_configured", &e.0))
}

/// The configuration's keys in WebCrypto, or the 503 that says why there are none.
pub async fn keys_or_503(cfg: &Config) -> std::result::Result<Rc<Keys>, Result<Response>> {
    cfg.keys()
        .await
        .map_err(|e| json_error(503, "not_configured", &e.0))
}

pub async fn jwks(env: &Env) -> Result<Response> {
    let keys = match config_or_503(env) {
        Ok(cfg) => match keys_or_503(&cfg).await {
            Ok(k) => k,
            Err(resp) => return resp,
        },
        Err(resp) => return resp,
    };
    let keys: Vec<_> = keys.public_keys().map(public_jwk).collect();
    let mut resp = Response::from_json(&serde_json::json!({ "keys": keys }))?;
    resp.headers_mut()
        .set("cache-control", "public, max-age=300")?;
    Ok(resp)
}

pub async fn guest(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = match limited_config(&req, env).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let body = match capped_body(&mut req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    #[derive(serde::Deserialize)]
    struct GuestRequest {
        name: String,
    }
    let Ok(GuestRequest { name }) = serde_json::from_slice::<GuestRequest>(&body) else {
        return json_error(
            400,
            "invalid_json",
            r#"expected a JSON body like {"name": "Ada"}"#,
        );
    };
    let name = match names::display_name(&name) {
        Ok(n) => n,
        Err(e) => return api_response(&ApiError::InvalidName(e.to_string())),
    };
    let issuer = Issuer {
        issuer: &cfg.issuer,
        audience: &cfg.audience,
        ttl_secs: cfg.guest_ttl_secs,
    };
    let claims = issuer.guest(&random_hex(8)?, name, Date::now().as_millis() / 1000);
    let token = match keys_or_503(&cfg).await {
        Ok(keys) => keys.sign(&claims).await.map_err(signing_failed)?,
        Err(resp) => return resp,
    };
    let mut resp = Response::from_json(&guest_body(&token, &claims))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}

/// The token of a WebSocket upgrade and the subprotocol to echo back.
pub struct UpgradeAuth {
    pub token: Option<String>,
    pub subprotocol: Option<&'static str>,
}

/// Reads the token from `?token=` (tools) or a `bearer.<jwt>` subprotocol entry (browsers).
/// A client that offers subprotocols must offer `pianorhythm.v1`, the one the server echoes:
/// echoing nothing would make the browser fail the handshake, and echoing the token would send
/// the credential back in a header.
pub fn upgrade_auth(req: &Request) -> std::result::Result<UpgradeAuth, &'static str> {
    let mut token = req.url().ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let offered = req.headers().get("sec-websocket-protocol").ok().flatten();
    let mut subprotocol = None;
    if let Some(offered) = offered {
        let mut has_ours = false;
        for p in offered.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(t) = p.strip_prefix(BEARER_PREFIX) {
                token.get_or_insert_with(|| t.to_owned());
            } else if p == SUBPROTOCOL {
                has_ours = true;
            }
        }
        if !has_ours {
            return Err("offer the WebSocket subprotocol pianorhythm.v1");
        }
        subprotocol = Some(SUBPROTOCOL);
    }
    Ok(UpgradeAuth { token, subprotocol })
}

/// Verifies a token; on failure, the 401 (or 503) response to return. Members' tokens are also
/// checked against their session (a logged-out or refreshed-away token is refused).
/// A member's identity ends with their session (`expires_at`, as the account answered), a
/// guest's with the token.
pub async fn verify(
    env: &Env,
    token: Option<&str>,
) -> std::result::Result<Identity, Result<Response>> {
    let (claims, session_expires) = verify_session(env, token).await?;
    let member = claims.sid.is_some();
    let mut identity = Identity::from(claims);
    if member {
        identity.expires_at = session_expires;
    }
    Ok(identity)
}

pub async fn verify_claims(
    env: &Env,
    token: Option<&str>,
) -> std::result::Result<Claims, Result<Response>> {
    verify_session(env, token).await.map(|(c, _)| c)
}

/// The token's claims and, for a member, when its session expires (when the account knows).
async fn verify_session(
    env: &Env,
    token: Option<&str>,
) -> std::result::Result<(Claims, Option<u64>), Result<Response>> {
    let cfg = config_or_503(env)?;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(unauthorized(
            "a token is required: Authorization: Bearer <jwt>, ?token=<jwt> or subprotocol bearer.<jwt>",
        ));
    };
    let now = Date::now().as_millis() / 1000;
    let claims = keys_or_503(&cfg)
        .await?
        .verify(token, now)
        .await
        .map_err(|e| {
            piano_durable_objects::log::error("crypto")
                .msg(format!(
                    "WebCrypto could not check a token's signature: {e:?}"
                ))
                .emit();
            api_response(&ApiError::Unavailable {
                retry_after_secs: None,
            })
        })?
        .map_err(|e| unauthorized(&e.to_string()))?;
    let mut expires = None;
    if let Some(sid) = &claims.sid {
        let check = session_is_live(env, &claims.sub, sid, claims.generation.unwrap_or(0))
            .await
            .map_err(|e| {
                piano_durable_objects::log::error("crypto")
                    .msg(format!("session check failed: {e}"))
                    .emit();
                api_response(&ApiError::Unavailable {
                    retry_after_secs: None,
                })
            })?;
        let Some(session_expires) = check else {
            return Err(unauthorized(
                "the session has ended (logged out or refreshed): log in again",
            ));
        };
        expires = session_expires;
    }
    Ok((claims, expires))
}

/// WebCrypto refused to sign (it never should with a key it imported): an error of ours.
pub fn signing_failed(e: wasm_bindgen::JsValue) -> Error {
    Error::RustError(format!("token signing failed: {e:?}"))
}

pub fn unauthorized(message: &str) -> Result<Response> {
    api_response(&ApiError::Unauthorized(message.to_owned()))
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| Error::RustError(format!("no randomness: {e}")))?;
    Ok(piano_core::hex::encode(&buf))
}

/// The token of a REST request: `Authorization: Bearer <jwt>`.
pub fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .ok()
        .flatten()
        .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_owned()))
}

/// `GET /api/users/me` for a guest: who the token says you are (members get their stored
/// profile from `accounts::me`).
pub async fn me(req: &Request, env: &Env) -> Result<Response> {
    let identity = match verify(env, bearer(req).as_deref()).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let guest = identity.roles.iter().any(|r| r == "guest");
    let mut resp = Response::from_json(&serde_json::json!({
        "id": identity.user_id,
        "name": identity.name,
        "roles": identity.roles,
        "kind": if guest { "guest" } else { "member" },
    }))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}

/// The origin players use: `PUBLIC_URL`, else the request's own (development).
pub fn own_origin(req: &Request, env: &Env) -> String {
    piano_durable_objects::setting(env, "PUBLIC_URL")
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .or_else(|| {
            req.url()
                .ok()
                .and_then(|u| piano_core::oauth::cookies::origin_of(u.as_str()))
        })
        .unwrap_or_default()
}

/// Where a cookie request comes from (`piano_core::oauth::cookies::RequestSite`, owned).
pub struct Site {
    origin: Option<String>,
    sec_fetch_site: Option<String>,
    csrf: Option<String>,
}

impl Site {
    pub fn of(req: &Request) -> Site {
        let h = |name: &str| req.headers().get(name).ok().flatten();
        Site {
            origin: h("origin"),
            sec_fetch_site: h("sec-fetch-site"),
            csrf: h(piano_core::oauth::cookies::CSRF_HEADER),
        }
    }

    pub fn view(&self) -> piano_core::oauth::cookies::RequestSite<'_> {
        piano_core::oauth::cookies::RequestSite {
            origin: self.origin.as_deref(),
            sec_fetch_site: self.sec_fetch_site.as_deref(),
            csrf_header: self.csrf.as_deref(),
        }
    }
}

/// Adds `Set-Cookie` headers (appended: a response may set several).
pub fn set_cookies<'a>(
    resp: &mut Response,
    cookies: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    for c in cookies {
        resp.headers_mut().append("set-cookie", c)?;
    }
    Ok(())
}
