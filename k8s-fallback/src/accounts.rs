//! Member accounts over HTTP: register, log in, refresh, log out, profiles and roles — the same
//! paths, JSON shapes, codes, token claims and session rules as the edge, because the rules are
//! the core's (`piano_core::account`). This module is transport only: it reads the request,
//! asks the core, calls the store ([`store`], [`sessions`]) and answers; every refusal is an
//! [`ApiError`], turned into HTTP by [`crate::auth::api_error`].
//!
//! Layering (one way): `http` → `accounts` → `auth` (token checks; members' sessions through
//! [`crate::auth::Sessions`], which [`store::Accounts`] implements).

pub mod browser;
mod claims;
mod sessions;
pub mod store;

pub use browser::Browser;
pub use piano_core::account::{AccountData, ROLES, SESSION_TTL_MS};
pub use store::Accounts;

use crate::auth::{api_error, verify_claims};
use crate::config::Config;
use crate::json::{json, with_header};
use crate::reach::Reach;
use axum::http::HeaderMap;
use axum::response::Response;
use piano_core::account::lookup::{self, Lookup};
use piano_core::account::profile::{self, ProfileChange, ProfileRequest, RoleChange};
use piano_core::account::tokens::{Issuer, RefreshToken, session_body};
use piano_core::account::{ApiError, SessionRefusal};
use piano_core::identity::Identity;
use piano_core::names;
use piano_core::oauth::cookies;
use piano_core::password::{ACCOUNT_ITERATIONS, PasswordHash};
use serde::Deserialize;
use sessions::Refreshed;

type Answer = Result<Response, ApiError>;

/// Runs a handler and turns its refusal into the response (the one place).
fn answer(result: Answer) -> Response {
    result.unwrap_or_else(|e| api_error(&e))
}

fn unavailable(e: &str) -> ApiError {
    tracing::warn!(error = e, "account store failed");
    ApiError::Unavailable {
        retry_after_secs: None,
    }
}

fn no_store(resp: Response) -> Response {
    with_header(resp, "cache-control", "no-store")
}

/// The request body as `T` (400 `invalid_json` otherwise; the cap is the router's).
pub fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// Access and refresh tokens for a session (the body of a sign-in or refresh).
fn issue(
    cfg: &Config,
    a: &AccountData,
    sid: &str,
    secret: &str,
    generation: u64,
) -> serde_json::Value {
    let issuer = Issuer {
        issuer: &cfg.issuer,
        audience: &cfg.audience,
        ttl_secs: cfg.access_ttl_secs,
    };
    let public = a.public();
    let claims = issuer.member(&public, sid, generation, crate::now_ms() / 1000);
    let access = cfg.signing.sign(&claims);
    session_body(&access, &claims, public, sid, secret)
}

/// The session's answer: JSON with the refresh token, or for a browser ([`Browser`]) cookies.
fn session_answer(
    cfg: &Config,
    browser: Option<&Browser>,
    body: serde_json::Value,
    status: u16,
) -> Response {
    match browser {
        Some(b) => browser::cookie_session(cfg, b, body, status),
        None => no_store(json(status, &body)),
    }
}

async fn start_session(
    cfg: &Config,
    accounts: &Accounts,
    a: &AccountData,
    status: u16,
    browser: Option<&Browser>,
) -> Answer {
    let (sid, secret) = accounts
        .open_session(&a.user_id(), &a.key(), cfg.max_sessions, crate::now_ms())
        .await
        .map_err(|e| unavailable(&e))?;
    let body = issue(cfg, a, &sid, &secret, 1);
    Ok(session_answer(cfg, browser, body, status))
}

/// A cookie sign-in must come from our origin: no other site may sign a browser in to an
/// account of its choosing.
fn cookie_sign_in(wanted: bool, browser: &Browser) -> Result<Option<&Browser>, ApiError> {
    if !wanted {
        return Ok(None);
    }
    cookies::same_origin(&browser.site(), &browser.own_origin).map_err(ApiError::OAuth)?;
    Ok(Some(browser))
}

/// `ADMIN_USERNAMES` at sign-in: a listed member gains the admin role (stored).
async fn admin_at_login(
    cfg: &Config,
    accounts: &Accounts,
    key: &str,
    account: AccountData,
) -> Result<AccountData, ApiError> {
    if !(piano_core::account::admin_on_login(key, &cfg.admins) && account.clone().grant_admin()) {
        return Ok(account);
    }
    let updated = accounts.update(key, |a| {
        a.grant_admin();
    });
    updated
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or(ApiError::InvalidCredentials)
}

/// A browser session for a member signed in through a provider, opened as a password login's
/// (`ADMIN_USERNAMES` applied): its refresh token, for the session cookies.
pub async fn provider_session(
    cfg: &Config,
    accounts: &Accounts,
    key: &str,
) -> Result<String, ApiError> {
    let account = accounts
        .load(key)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or(ApiError::NotAMember)?;
    let account = admin_at_login(cfg, accounts, key, account).await?;
    let (sid, secret) = accounts
        .open_session(&account.user_id(), key, cfg.max_sessions, crate::now_ms())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(RefreshToken::format(key, &sid, &secret))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
    /// The web client's sign-in: the session in cookies ([`Browser`]).
    #[serde(default)]
    cookie: bool,
}

/// `POST /api/auth/register {"username", "password", "email"?, "cookie"?}`.
pub async fn register(
    cfg: &Config,
    accounts: &Accounts,
    browser: &Browser,
    bootstrap: Option<&str>,
    bytes: &[u8],
) -> Response {
    answer(register_inner(cfg, accounts, browser, bootstrap, bytes).await)
}

async fn register_inner(
    cfg: &Config,
    accounts: &Accounts,
    browser: &Browser,
    bootstrap: Option<&str>,
    bytes: &[u8],
) -> Answer {
    let b: Credentials = body(bytes)?;
    let browser = cookie_sign_in(b.cookie, browser)?;
    let key =
        piano_core::account::check_registration(&b.username, &b.password, b.email.as_deref())?;
    let admin = piano_core::account::admin_on_register(
        &key,
        &cfg.admins,
        cfg.admin_bootstrap_secret.as_deref(),
        bootstrap,
    )?;
    let found = accounts.find(&key).await.map_err(|e| unavailable(&e))?;
    lookup::may_register(&found)?;
    let password = b.password;
    let hash = tokio::task::spawn_blocking(move || {
        let salt = store::random_bytes::<16>().to_vec();
        PasswordHash::with_iterations(&password, salt, ACCOUNT_ITERATIONS)
    })
    .await
    .map_err(|_| unavailable("password hashing failed"))?;
    let account = AccountData::new(
        &b.username,
        b.email,
        hash,
        admin,
        store::random_bytes::<3>(),
        crate::now_ms(),
    );
    if !accounts
        .create(&key, &account)
        .await
        .map_err(|e| unavailable(&e))?
    {
        return Err(ApiError::UsernameTaken);
    }
    accounts.mirror(&account, true);
    tracing::info!(user = key, "member registered");
    start_session(cfg, accounts, &account, 201, browser).await
}

/// `POST /api/auth/login {"username", "password", "cookie"?}`.
pub async fn login(cfg: &Config, accounts: &Accounts, browser: &Browser, bytes: &[u8]) -> Response {
    answer(login_inner(cfg, accounts, browser, bytes).await)
}

async fn login_inner(cfg: &Config, accounts: &Accounts, browser: &Browser, bytes: &[u8]) -> Answer {
    let b: Credentials = body(bytes)?;
    let browser = cookie_sign_in(b.cookie, browser)?;
    let key = names::username(&b.username).map_err(|_| ApiError::InvalidCredentials)?;
    let found = accounts.find(&key).await.map_err(|e| unavailable(&e))?;
    let account = lookup::login_account(found)?;
    let stored = account.clone();
    let password = b.password;
    let ok = tokio::task::spawn_blocking(move || stored.check_password(&password))
        .await
        .unwrap_or(false);
    if !ok {
        return Err(ApiError::InvalidCredentials);
    }
    let account = admin_at_login(cfg, accounts, &key, account).await?;
    start_session(cfg, accounts, &account, 200, browser).await
}

#[derive(Deserialize, Default)]
struct RefreshBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// `POST /api/auth/refresh {"refresh_token"}`: new access and refresh tokens; the old ones stop
/// working. Without a refresh token in the body, a browser's session cookie (same origin and
/// CSRF token required): the cookies rotate.
pub async fn refresh(
    cfg: &Config,
    accounts: &Accounts,
    browser: &Browser,
    bytes: &[u8],
) -> Response {
    answer(refresh_inner(cfg, accounts, browser, bytes).await)
}

fn blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

async fn refresh_inner(
    cfg: &Config,
    accounts: &Accounts,
    browser: &Browser,
    bytes: &[u8],
) -> Answer {
    let cookie = browser.refresh_cookie();
    let b: RefreshBody = if blank(bytes) && cookie.is_some() {
        RefreshBody::default()
    } else {
        body(bytes)?
    };
    let (token, cookie) = match (b.refresh_token, cookie) {
        (Some(t), _) => (t, None),
        (None, Some(c)) => (c.to_owned(), Some(browser)),
        (None, None) => return Err(ApiError::InvalidSession(SessionRefusal::NotValid)),
    };
    let Some(browser) = cookie else {
        return Ok(no_store(json(200, &rotate(cfg, accounts, &token).await?)));
    };
    cookies::check_cookie_request(&browser.site(), &browser.own_origin, &token)
        .map_err(ApiError::OAuth)?;
    match rotate(cfg, accounts, &token).await {
        Ok(body) => Ok(session_answer(cfg, Some(browser), body, 200)),
        Err(e) => Ok(ended_cookies(browser, api_error(&e))),
    }
}

/// The answer of a cookie refresh or logout: a refused or ended session's cookies go too
/// (`cookies::clears_session`); an unreachable store keeps them.
fn ended_cookies(browser: &Browser, resp: Response) -> Response {
    if !cookies::clears_session(resp.status().as_u16()) {
        return resp;
    }
    browser::with_cookies(resp, cookies::clear_session_cookies(browser.secure()))
}

/// The refresh itself: rotates the session's secret; the new session body.
async fn rotate(
    cfg: &Config,
    accounts: &Accounts,
    token: &str,
) -> Result<serde_json::Value, ApiError> {
    let not_valid = ApiError::InvalidSession(SessionRefusal::NotValid);
    let t = RefreshToken::parse(token).ok_or(not_valid.clone())?;
    let account = accounts
        .load(t.user)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or(not_valid)?;
    let new_secret = crate::config::random_hex(32);
    let outcome = accounts
        .refresh_session(t.user, t.sid, t.secret, &new_secret, crate::now_ms())
        .await
        .map_err(|e| unavailable(&e))?;
    match outcome {
        Refreshed::Refused(why) => Err(ApiError::InvalidSession(why)),
        Refreshed::Reused => {
            tracing::warn!(
                user = t.user,
                sid = t.sid,
                "refresh token reused: session revoked"
            );
            Err(ApiError::InvalidSession(SessionRefusal::Reused))
        }
        Refreshed::Rotated(generation) => Ok(issue(cfg, &account, t.sid, &new_secret, generation)),
    }
}

/// `POST /api/auth/logout {"refresh_token"}` (or with just the access token as Bearer, or a
/// browser's session cookie with the same origin and CSRF token): ends the session; its access
/// and refresh tokens are refused from now on.
pub async fn logout(
    cfg: &Config,
    accounts: &Accounts,
    browser: &Browser,
    bearer: Option<String>,
    bytes: &[u8],
) -> Response {
    answer(logout_inner(cfg, accounts, browser, bearer, bytes).await)
}

fn no_content() -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = axum::http::StatusCode::NO_CONTENT;
    resp
}

async fn logout_inner(
    cfg: &Config,
    accounts: &Accounts,
    browser: &Browser,
    bearer: Option<String>,
    bytes: &[u8],
) -> Answer {
    // An empty or unreadable body means "log out with the access token" (or the cookie).
    let b: RefreshBody = serde_json::from_slice(bytes).unwrap_or_default();
    let ended = if let Some(refresh) = b.refresh_token.as_deref() {
        end_with_refresh(accounts, refresh).await?
    } else if let Some(refresh) = browser.refresh_cookie() {
        cookies::check_cookie_request(&browser.site(), &browser.own_origin, refresh)
            .map_err(ApiError::OAuth)?;
        let resp = match end_with_refresh(accounts, refresh).await {
            Ok(true) => browser::with_cookies(
                no_content(),
                cookies::clear_session_cookies(browser.secure()),
            ),
            Ok(false) => api_error(&ApiError::InvalidSession(SessionRefusal::NotValid)),
            Err(e) => api_error(&e),
        };
        return Ok(ended_cookies(browser, resp));
    } else {
        // The session of a live, verified access token (the whole signed token is the proof).
        let claims = verify_claims(cfg, accounts, bearer.as_deref()).await?;
        let (Some(key), Some(sid)) = (claims.sub.strip_prefix("user:"), claims.sid.as_deref())
        else {
            return Err(ApiError::NotAMember);
        };
        accounts
            .revoke(key, sid)
            .await
            .map_err(|e| unavailable(&e))?;
        true
    };
    if !ended {
        return Err(ApiError::InvalidSession(SessionRefusal::NotValid));
    }
    Ok(no_content())
}

/// Ends the session a refresh token names, if the token's secret is (or was) the session's:
/// user and session id alone are in every access token's readable payload.
async fn end_with_refresh(accounts: &Accounts, refresh: &str) -> Result<bool, ApiError> {
    let t =
        RefreshToken::parse(refresh).ok_or(ApiError::InvalidSession(SessionRefusal::NotValid))?;
    accounts
        .revoke_with_secret(t.user, t.sid, t.secret)
        .await
        .map_err(|e| unavailable(&e))
}

/// `GET /api/users/me`: a member's stored profile; a guest's token identity (and a member's,
/// when this deployment cannot find the account: the edge's, without a shared MongoDB).
pub async fn me(cfg: &Config, accounts: &Accounts, headers: &HeaderMap) -> Response {
    answer(me_inner(cfg, accounts, headers).await)
}

async fn me_inner(cfg: &Config, accounts: &Accounts, headers: &HeaderMap) -> Answer {
    let claims = verify_claims(cfg, accounts, crate::auth::bearer(headers).as_deref()).await?;
    if let Some(key) = claims.sub.strip_prefix("user:")
        && let Lookup::Found(a) = accounts.find(key).await.map_err(|e| unavailable(&e))?
    {
        return Ok(no_store(json(200, &a.public())));
    }
    let identity = Identity::from(claims);
    let guest = identity.roles.iter().any(|r| r == "guest");
    Ok(no_store(json(
        200,
        &serde_json::json!({
            "id": identity.user_id, "name": identity.name, "roles": identity.roles,
            "kind": if guest { "guest" } else { "member" },
        }),
    )))
}

/// `PUT /api/users/me {"name"?, "color"?, "status"?}` (members).
pub async fn update_me(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    bytes: &[u8],
) -> Response {
    answer(update_me_inner(cfg, accounts, bearer, bytes).await)
}

async fn update_me_inner(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    bytes: &[u8],
) -> Answer {
    let claims = verify_claims(cfg, accounts, bearer.as_deref()).await?;
    let key = claims
        .sub
        .strip_prefix("user:")
        .ok_or(ApiError::GuestsHaveNoProfile)?;
    let change = ProfileChange::check(body::<ProfileRequest>(bytes)?)?;
    // An account registered elsewhere is imported first (as at login).
    accounts.find(key).await.map_err(|e| unavailable(&e))?;
    let updated = accounts.update(key, move |a| change.apply(a)).await;
    let a = updated
        .map_err(|e| unavailable(&e))?
        .ok_or(ApiError::NotFound)?;
    Ok(no_store(json(200, &a.public())))
}

/// `GET /api/users/{id}`: a member's public profile.
pub async fn user(accounts: &Accounts, raw_id: &str) -> Response {
    answer(
        async {
            let key = profile::user_key(raw_id)?;
            // Local accounts only, as at the edge: an anonymous read must not cost a lookup.
            let a = accounts.load(&key).await.map_err(|e| unavailable(&e))?;
            Ok(no_store(json(200, &a.ok_or(ApiError::NotFound)?.public())))
        }
        .await,
    )
}

/// `POST /api/admin/users/{id}/roles {"add": [...], "remove": [...]}` (admins only).
pub async fn set_roles(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    raw_id: &str,
    bytes: &[u8],
) -> Response {
    answer(set_roles_inner(cfg, accounts, bearer, raw_id, bytes).await)
}

async fn set_roles_inner(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    raw_id: &str,
    bytes: &[u8],
) -> Answer {
    let claims = verify_claims(cfg, accounts, bearer.as_deref()).await?;
    profile::may_change_roles(&claims.roles)?;
    let key = profile::user_key(raw_id)?;
    let change = body::<RoleChange>(bytes)?.check()?;
    accounts.find(&key).await.map_err(|e| unavailable(&e))?;
    let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = changed.clone();
    let updated = accounts
        .update(&key, move |a| {
            // The last attempt of a compare-and-set loop is the one stored.
            flag.store(change.apply(a), std::sync::atomic::Ordering::Relaxed);
        })
        .await;
    let a = updated
        .map_err(|e| unavailable(&e))?
        .ok_or(ApiError::NotFound)?;
    if changed.load(std::sync::atomic::Ordering::Relaxed) {
        // Open sockets carry the old roles: they close (4002) and reconnect with new ones.
        accounts
            .reach(Reach::IdentityChanged {
                user_id: a.user_id(),
            })
            .await;
    }
    Ok(no_store(json(200, &a.public())))
}
