//! Member accounts: register, log in, refresh, log out, profiles and roles.
//!
//! Each account is an Account Durable Object named by the normalized username (so uniqueness
//! holds under concurrency); the rules are the core's (`piano_core::account`). Logging in gives
//! a short-lived access token (EdDSA JWT with `sid` and `gen`) and a rotating refresh token
//! `<username>.<sid>.<secret>`. Auth endpoints are rate limited per client network
//! ([`crate::auth`] counts them). Calls go one way: this module uses [`crate::auth`].

use crate::auth::{self, Site, account_call, api_response, bearer, capped_body, limited_config};
use crate::config::Config;
use piano_core::account::profile;
use piano_core::account::tokens::{Issuer, RefreshToken, session_body};
use piano_core::account::{ApiError, SessionRefusal};
use piano_core::names;
use piano_core::oauth::cookies;
use serde::Deserialize;
use worker::*;

/// The WebSocket gate counts upgrades on the same Limiter objects.
pub use crate::auth::limiter_hit;

async fn json_body<T: for<'de> Deserialize<'de>>(
    req: &mut Request,
) -> std::result::Result<T, Result<Response>> {
    let body = capped_body(req).await?;
    serde_json::from_slice(&body).map_err(|e| api_response(&ApiError::InvalidJson(e.to_string())))
}

/// How a session reaches the client: in the JSON body (bots, API clients), or in the browser's
/// cookies (the web client: the body then has the CSRF token instead of the refresh token).
#[derive(Clone, Copy)]
pub(crate) enum Delivery {
    Body,
    Cookies { secure: bool },
}

/// Turns an Account object's session answer into tokens for the client.
pub(crate) async fn issue(
    cfg: &Config,
    mut resp: Response,
    delivery: Delivery,
) -> Result<Response> {
    let status = resp.status_code();
    if status >= 400 {
        // The object's error passes through unchanged (it is an `ApiError` already).
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
    let issuer = Issuer {
        issuer: &cfg.issuer,
        audience: &cfg.audience,
        ttl_secs: cfg.access_ttl_secs,
    };
    let claims = issuer.member(
        &s.user,
        &s.sid,
        s.generation,
        Date::now().as_millis() / 1000,
    );
    let access = match auth::keys_or_503(cfg).await {
        Ok(keys) => keys.sign(&claims).await.map_err(auth::signing_failed)?,
        Err(resp) => return resp,
    };
    let mut body = session_body(&access, &claims, s.user, &s.sid, &s.secret);
    let mut cookies = None;
    if let Delivery::Cookies { secure } = delivery
        && let Some(obj) = body.as_object_mut()
        && let Some(serde_json::Value::String(refresh)) = obj.remove("refresh_token")
    {
        obj.insert("csrf_token".into(), cookies::csrf_token(&refresh).into());
        cookies = Some(cookies::session_cookies(
            &refresh,
            cfg.session_ttl_secs,
            secure,
        ));
    }
    let mut out = Response::from_json(&body)?.with_status(status);
    out.headers_mut().set("cache-control", "no-store")?;
    if let Some(c) = &cookies {
        auth::set_cookies(&mut out, c)?;
    }
    Ok(out)
}

/// A cookie `register`/`login` must come from our origin (no other site signs a browser in to
/// an attacker's account): how the session is delivered, or the refusal.
fn delivery(
    req: &Request,
    env: &Env,
    cookie: bool,
) -> std::result::Result<Delivery, Result<Response>> {
    if !cookie {
        return Ok(Delivery::Body);
    }
    let own = auth::own_origin(req, env);
    cookies::same_origin(&Site::of(req).view(), &own)
        .map_err(|e| api_response(&ApiError::OAuth(e)))?;
    Ok(Delivery::Cookies {
        secure: cookies::secure(&own),
    })
}

macro_rules! try_resp {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(resp) => return resp,
        }
    };
}

/// `POST /api/auth/register {"username", "password", "email"?, "cookie"?}`.
pub async fn register(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = try_resp!(limited_config(&req, env).await);
    #[derive(Deserialize)]
    struct Body {
        username: String,
        password: String,
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        cookie: bool,
    }
    let b: Body = try_resp!(json_body(&mut req).await);
    let delivery = try_resp!(delivery(&req, env, b.cookie));
    let key =
        match piano_core::account::check_registration(&b.username, &b.password, b.email.as_deref())
        {
            Ok(k) => k,
            Err(e) => return api_response(&e),
        };
    let presented = req.headers().get("x-admin-bootstrap").ok().flatten();
    let admin = match piano_core::account::admin_on_register(
        &key,
        &cfg.admins,
        cfg.admin_bootstrap_secret.as_deref(),
        presented.as_deref(),
    ) {
        Ok(admin) => admin,
        Err(e) => return api_response(&e),
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
    issue(&cfg, resp, delivery).await
}

/// `POST /api/auth/login {"username", "password", "cookie"?}`.
pub async fn login(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = try_resp!(limited_config(&req, env).await);
    #[derive(Deserialize)]
    struct Body {
        username: String,
        password: String,
        #[serde(default)]
        cookie: bool,
    }
    let b: Body = try_resp!(json_body(&mut req).await);
    let delivery = try_resp!(delivery(&req, env, b.cookie));
    let Ok(key) = names::username(&b.username) else {
        return api_response(&ApiError::InvalidCredentials);
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
    issue(&cfg, resp, delivery).await
}

/// The refresh token of a body, parsed by the core (401 `invalid_session` if unusable).
fn refresh_token(token: Option<&str>) -> std::result::Result<RefreshToken<'_>, Result<Response>> {
    token
        .and_then(RefreshToken::parse)
        .ok_or_else(|| api_response(&ApiError::InvalidSession(SessionRefusal::NotValid)))
}

#[derive(Deserialize, Default)]
struct SessionBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// A refresh or logout body: may be empty (the cookie flow).
async fn session_body_of(req: &mut Request) -> std::result::Result<SessionBody, Result<Response>> {
    let body = capped_body(req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SessionBody::default());
    }
    serde_json::from_slice(&body).map_err(|e| api_response(&ApiError::InvalidJson(e.to_string())))
}

/// The cookie flow of refresh and logout: the `piano_refresh` cookie, from our origin with the
/// session's CSRF token (else 403 `cross_site`). `Ok(None)`: the request has no session cookie.
fn cookie_session(
    req: &Request,
    env: &Env,
) -> std::result::Result<Option<(String, bool)>, Result<Response>> {
    let header = req
        .headers()
        .get("cookie")
        .ok()
        .flatten()
        .unwrap_or_default();
    let Some(token) = cookies::get(&header, cookies::REFRESH_COOKIE).filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    let own = auth::own_origin(req, env);
    cookies::check_cookie_request(&Site::of(req).view(), &own, token)
        .map_err(|e| api_response(&ApiError::OAuth(e)))?;
    Ok(Some((token.to_owned(), cookies::secure(&own))))
}

/// A refused or ended session on the cookie flow also clears the cookies
/// (`cookies::clears_session`); an unreachable store keeps them.
async fn cleared(resp: Result<Response>, secure: bool) -> Result<Response> {
    let mut resp = resp?;
    if cookies::clears_session(resp.status_code()) {
        resp = crate::relay_json(resp, None).await?;
        auth::set_cookies(&mut resp, &cookies::clear_session_cookies(secure))?;
    }
    Ok(resp)
}

/// `POST /api/auth/refresh {"refresh_token"}`: new access and refresh tokens; the old ones stop
/// working. Without a `refresh_token` in the body: the cookie flow (rotates both cookies).
pub async fn refresh(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = try_resp!(limited_config(&req, env).await);
    let b = try_resp!(session_body_of(&mut req).await);
    let (token, delivery) = match b.refresh_token {
        Some(t) => (t, Delivery::Body),
        None => match try_resp!(cookie_session(&req, env)) {
            Some((t, secure)) => (t, Delivery::Cookies { secure }),
            None => return api_response(&ApiError::InvalidSession(SessionRefusal::NotValid)),
        },
    };
    let resp = match refresh_token(Some(&token)) {
        Ok(t) => {
            let resp = account_call(
                env,
                t.user,
                Method::Post,
                "/refresh",
                Some(serde_json::json!({ "sid": t.sid, "secret": t.secret })),
            )
            .await?;
            issue(&cfg, resp, delivery).await
        }
        Err(refused) => refused,
    };
    match delivery {
        Delivery::Cookies { secure } => cleared(resp, secure).await,
        Delivery::Body => resp,
    }
}

/// `POST /api/auth/logout {"refresh_token"}` (or the session cookie, or just the access token
/// as Bearer): ends the session; its access and refresh tokens are refused from now on.
pub async fn logout(mut req: Request, env: &Env) -> Result<Response> {
    try_resp!(limited_config(&req, env).await);
    let access = bearer(&req);
    let body = try_resp!(capped_body(&mut req).await);
    // An empty or unreadable body means "log out with the cookie or the access token".
    let b: SessionBody = serde_json::from_slice(&body).unwrap_or_default();
    let mut from_cookie = None;
    let call = if let Some(token) = b.refresh_token.as_deref() {
        // The account checks the secret: a user name and session id alone end nothing. A
        // token that does not parse is refused as such (not taken for "no token").
        let t = try_resp!(refresh_token(Some(token)));
        (
            t.user.to_owned(),
            serde_json::json!({ "sid": t.sid, "secret": t.secret }),
        )
    } else if let Some((token, secure)) = try_resp!(cookie_session(&req, env)) {
        from_cookie = Some(secure);
        let Some(t) = RefreshToken::parse(&token) else {
            return cleared(
                api_response(&ApiError::InvalidSession(SessionRefusal::NotValid)),
                secure,
            )
            .await;
        };
        (
            t.user.to_owned(),
            serde_json::json!({ "sid": t.sid, "secret": t.secret }),
        )
    } else {
        // A live access token of the session (signature and session checked) is proof too.
        let claims = try_resp!(auth::verify_claims(env, access.as_deref()).await);
        match (claims.sub.strip_prefix("user:"), claims.sid) {
            (Some(user), Some(sid)) => (
                user.to_owned(),
                serde_json::json!({ "sid": sid, "by_access_token": true }),
            ),
            _ => return api_response(&ApiError::NotAMember),
        }
    };
    let resp = account_call(env, &call.0, Method::Post, "/logout", Some(call.1)).await?;
    if let Some(secure) = from_cookie {
        // Ended or refused: the browser's cookies go; a store that could not be reached
        // keeps them (the session is still alive).
        if resp.status_code() >= 400 {
            return cleared(crate::relay_json(resp, None).await, secure).await;
        }
        let mut out = Response::empty()?.with_status(204);
        auth::set_cookies(&mut out, &cookies::clear_session_cookies(secure))?;
        return Ok(out);
    }
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
        return api_response(&ApiError::GuestsHaveNoProfile);
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
    let user = match profile::user_key(id) {
        Ok(u) => u,
        Err(e) => return api_response(&e),
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
    let user = match profile::may_change_roles(&claims.roles).and_then(|()| profile::user_key(id)) {
        Ok(u) => u,
        Err(e) => return api_response(&e),
    };
    let body: serde_json::Value = try_resp!(json_body(&mut req).await);
    crate::relay_json(
        account_call(env, &user, Method::Post, "/roles", Some(body)).await?,
        Some("no-store"),
    )
    .await
}
