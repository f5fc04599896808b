//! Member accounts: register, log in, refresh, log out, profiles and roles.
//!
//! Each account is an Account Durable Object named by the normalized username (so uniqueness
//! holds under concurrency). Logging in gives a short-lived access token (EdDSA JWT with `sid`
//! and `gen`) and a rotating refresh token `<username>.<sid>.<secret>`. Auth endpoints are rate
//! limited per client IP (a Limiter object per IP).

use crate::auth::{self, bearer, config_or_503};
use crate::config::Config;
use piano_core::identity::Claims;
use piano_core::names;
use piano_durable_objects::json_error;
use serde::Deserialize;
use std::rc::Rc;
use worker::*;

const ACCOUNTS_BINDING: &str = "ACCOUNTS";
const LIMITER_BINDING: &str = "LIMITER";
const MAX_BODY_BYTES: usize = 4096;

async fn account_call(
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
pub async fn session_is_live(
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

/// 429 with `Retry-After` when this client IP made too many auth requests this minute.
pub async fn rate_limited(req: &Request, env: &Env, cfg: &Config) -> Result<Option<Response>> {
    let ip = req
        .headers()
        .get("cf-connecting-ip")?
        .unwrap_or_else(|| "unknown".into());
    if let Some((allowed, retry_after)) =
        crate::shared::rate_hit(env, &ip, cfg.auth_rate_limit, Date::now().as_millis()).await
    {
        return if allowed {
            Ok(None)
        } else {
            too_many(retry_after).map(Some)
        };
    }
    match limiter_hit(env, &format!("auth:{ip}"), cfg.auth_rate_limit).await? {
        None => Ok(None),
        Some(retry_after_ms) => too_many(retry_after_ms.div_ceil(1000).max(1)).map(Some),
    }
}

/// Counts one hit on the Limiter object `key` (a sliding minute): `None` when allowed, else
/// how long until the next hit would be (ms).
pub async fn limiter_hit(env: &Env, key: &str, limit: usize) -> Result<Option<u64>> {
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(
        serde_json::json!({ "limit": limit, "window_ms": 60_000 })
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

fn too_many(secs: u64) -> Result<Response> {
    let mut resp = json_error(
        429,
        "rate_limited",
        &format!("too many requests: try again in {secs} s"),
    )?;
    resp.headers_mut().set("retry-after", &secs.to_string())?;
    Ok(resp)
}

/// The configuration for an auth endpoint, unless the caller is over the rate limit (or the
/// server is not configured): then the response to send.
pub async fn limited_config(
    req: &Request,
    env: &Env,
) -> std::result::Result<Rc<Config>, Result<Response>> {
    let cfg = config_or_503(env)?;
    match rate_limited(req, env, &cfg).await {
        Ok(None) => Ok(cfg),
        Ok(Some(resp)) => Err(Ok(resp)),
        Err(e) => Err(Err(e)),
    }
}

/// Reads a request body while it streams in, stopping (413 `body_too_large`) as soon as it
/// passes [`MAX_BODY_BYTES`]: a large or endless body is never buffered whole.
pub async fn capped_body(req: &mut Request) -> std::result::Result<Vec<u8>, Result<Response>> {
    use futures_util::StreamExt;
    let too_large = || json_error(413, "body_too_large", "request body is over 4096 bytes");
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

async fn json_body<T: for<'de> Deserialize<'de>>(
    req: &mut Request,
) -> std::result::Result<T, Result<Response>> {
    let body = capped_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| json_error(400, "invalid_json", &format!("bad request body: {e}")))
}

/// Turns an Account object's session answer into tokens for the client.
async fn issue(cfg: &Config, mut resp: Response) -> Result<Response> {
    let status = resp.status_code();
    if status >= 400 {
        // The object's JSON error passes through unchanged (its code is stable).
        return crate::relay_json(resp, None).await;
    }
    #[derive(Deserialize)]
    struct Session {
        user: serde_json::Value,
        sid: String,
        secret: String,
        generation: u64,
    }
    let s: Session = resp.json().await?;
    let now = Date::now().as_millis() / 1000;
    let username = s.user["username"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let claims = Claims {
        sub: format!("user:{username}"),
        name: s.user["name"].as_str().unwrap_or_default().to_owned(),
        roles: serde_json::from_value(s.user["roles"].clone()).unwrap_or_default(),
        iat: now,
        exp: now + cfg.access_ttl_secs,
        nbf: None,
        iss: cfg.issuer.clone(),
        aud: cfg.audience.clone(),
        sid: Some(s.sid.clone()),
        generation: Some(s.generation),
    };
    let access = cfg.signing.sign(&claims);
    let mut out = Response::from_json(&serde_json::json!({
        "access_token": access,
        "token": access,
        "expires_at": claims.exp,
        "refresh_token": format!("{username}.{}.{}", s.sid, s.secret),
        "user": s.user,
    }))?
    .with_status(status);
    out.headers_mut().set("cache-control", "no-store")?;
    Ok(out)
}

macro_rules! try_resp {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(resp) => return resp,
        }
    };
}

/// `POST /api/auth/register {"username", "password", "email"?}`.
pub async fn register(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = try_resp!(limited_config(&req, env).await);
    #[derive(Deserialize)]
    struct Body {
        username: String,
        password: String,
        #[serde(default)]
        email: Option<String>,
    }
    let b: Body = try_resp!(json_body(&mut req).await);
    let key =
        match piano_core::account::check_registration(&b.username, &b.password, b.email.as_deref())
        {
            Ok(k) => k,
            Err((code, message)) => return json_error(400, code, &message),
        };
    let presented = req.headers().get("x-admin-bootstrap").ok().flatten();
    let admin = match piano_core::account::admin_on_register(
        &key,
        &cfg.admins,
        cfg.admin_bootstrap_secret.as_deref(),
        presented.as_deref(),
    ) {
        Ok(admin) => admin,
        Err((code, message)) => return json_error(403, code, message),
    };
    let resp = account_call(
        env,
        &key,
        Method::Post,
        "/register",
        Some(serde_json::json!({
            "username": b.username.trim(),
            "password": b.password,
            "email": b.email,
            "max_sessions": cfg.max_sessions,
            "admin": admin,
        })),
    )
    .await?;
    issue(&cfg, resp).await
}

/// `POST /api/auth/login {"username", "password"}`.
pub async fn login(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = try_resp!(limited_config(&req, env).await);
    #[derive(Deserialize)]
    struct Body {
        username: String,
        password: String,
    }
    let b: Body = try_resp!(json_body(&mut req).await);
    let Ok(key) = names::username(&b.username) else {
        return json_error(401, "invalid_credentials", "wrong username or password");
    };
    let resp = account_call(
        env,
        &key,
        Method::Post,
        "/login",
        Some(serde_json::json!({
            "key": key,
            "password": b.password,
            "max_sessions": cfg.max_sessions,
            "admin": piano_core::account::admin_on_login(&key, &cfg.admins),
        })),
    )
    .await?;
    issue(&cfg, resp).await
}

fn parse_refresh(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.splitn(3, '.');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// `POST /api/auth/refresh {"refresh_token"}`: new access and refresh tokens; the old ones stop
/// working.
pub async fn refresh(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = try_resp!(limited_config(&req, env).await);
    #[derive(Deserialize)]
    struct Body {
        refresh_token: String,
    }
    let b: Body = try_resp!(json_body(&mut req).await);
    let Some((user, sid, secret)) = parse_refresh(&b.refresh_token) else {
        return json_error(401, "invalid_session", "refresh token is not valid");
    };
    let resp = account_call(
        env,
        user,
        Method::Post,
        "/refresh",
        Some(serde_json::json!({ "sid": sid, "secret": secret })),
    )
    .await?;
    issue(&cfg, resp).await
}

/// `POST /api/auth/logout {"refresh_token"}` (or with just the access token as Bearer): ends
/// the session; its access and refresh tokens are refused from now on.
pub async fn logout(mut req: Request, env: &Env) -> Result<Response> {
    try_resp!(limited_config(&req, env).await);
    #[derive(Deserialize, Default)]
    struct Body {
        #[serde(default)]
        refresh_token: Option<String>,
    }
    let access = bearer(&req);
    let body = try_resp!(capped_body(&mut req).await);
    // An empty or unreadable body means "log out with the access token".
    let b: Body = serde_json::from_slice(&body).unwrap_or_default();
    let call = if let Some((user, sid, secret)) = b.refresh_token.as_deref().and_then(parse_refresh)
    {
        // The account checks the secret: a user name and session id alone end nothing.
        (
            user.to_owned(),
            serde_json::json!({ "sid": sid, "secret": secret }),
        )
    } else {
        // A live access token of the session (signature and session checked) is proof too.
        let claims = try_resp!(auth::verify_claims(env, access.as_deref()).await);
        match (claims.sub.strip_prefix("user:"), claims.sid) {
            (Some(user), Some(sid)) => (
                user.to_owned(),
                serde_json::json!({ "sid": sid, "by_access_token": true }),
            ),
            _ => return json_error(400, "not_a_member", "guest tokens have no session to end"),
        }
    };
    let resp = account_call(env, &call.0, Method::Post, "/logout", Some(call.1)).await?;
    if resp.status_code() >= 400 {
        return crate::relay_json(resp, None).await;
    }
    Ok(Response::empty()?.with_status(204))
}

/// `GET /api/users/me`: a member's stored profile, a guest's token identity.
pub async fn me(req: Request, env: &Env) -> Result<Response> {
    let claims = try_resp!(auth::verify_claims(env, bearer(&req).as_deref()).await);
    match claims.sub.strip_prefix("user:") {
        Some(user) => {
            crate::relay_json(
                account_call(env, user, Method::Get, "/profile", None).await?,
                Some("no-store"),
            )
            .await
        }
        None => auth::me(&req, env).await,
    }
}

/// `PUT /api/users/me {"name"?, "color"?, "status"?}` (members).
pub async fn update_me(mut req: Request, env: &Env) -> Result<Response> {
    let claims = try_resp!(auth::verify_claims(env, bearer(&req).as_deref()).await);
    let Some(user) = claims.sub.strip_prefix("user:") else {
        return json_error(403, "guests_have_no_profile", "register to keep a profile");
    };
    let body: serde_json::Value = try_resp!(json_body(&mut req).await);
    crate::relay_json(
        account_call(env, user, Method::Put, "/profile", Some(body)).await?,
        Some("no-store"),
    )
    .await
}

/// `GET /api/users/{id}`: a member's public profile.
pub async fn user(env: &Env, id: &str) -> Result<Response> {
    let id = names::percent_decode(id).unwrap_or_default();
    let Some(user) = id
        .strip_prefix("user:")
        .and_then(|u| names::username(u).ok())
    else {
        return json_error(404, "not_found", "no such user");
    };
    crate::relay_json(
        account_call(env, &user, Method::Get, "/profile", None).await?,
        Some("no-store"),
    )
    .await
}

/// `POST /api/admin/users/{id}/roles {"add": [...], "remove": [...]}` (admins only).
pub async fn set_roles(mut req: Request, env: &Env, id: &str) -> Result<Response> {
    let claims = try_resp!(auth::verify_claims(env, bearer(&req).as_deref()).await);
    if !claims.roles.iter().any(|r| r == "admin") {
        return json_error(403, "forbidden", "only admins may change roles");
    }
    let id = names::percent_decode(id).unwrap_or_default();
    let Some(user) = id
        .strip_prefix("user:")
        .and_then(|u| names::username(u).ok())
    else {
        return json_error(404, "not_found", "no such user");
    };
    let body: serde_json::Value = try_resp!(json_body(&mut req).await);
    crate::relay_json(
        account_call(env, &user, Method::Post, "/roles", Some(body)).await?,
        Some("no-store"),
    )
    .await
}
