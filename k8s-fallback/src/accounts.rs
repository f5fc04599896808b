//! Member accounts over HTTP: register, log in, refresh, log out, profiles and roles — the same
//! paths, JSON shapes, codes, token claims and session rules as the edge, because the rules are
//! the core's (`piano_core::account`). This module is transport only: it reads the request,
//! asks the core, calls the store ([`store`], [`sessions`]) and answers; every refusal is an
//! [`ApiError`], turned into HTTP by [`crate::auth::api_error`].
//!
//! Layering (one way): `http` → `accounts` → `auth` (token checks; members' sessions through
//! [`crate::auth::Sessions`], which [`store::Accounts`] implements).

mod sessions;
pub mod store;

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

/// Access and refresh tokens for a session.
fn issue(
    cfg: &Config,
    a: &AccountData,
    sid: &str,
    secret: &str,
    generation: u64,
    status: u16,
) -> Response {
    let issuer = Issuer {
        issuer: &cfg.issuer,
        audience: &cfg.audience,
        ttl_secs: cfg.access_ttl_secs,
    };
    let public = a.public();
    let claims = issuer.member(&public, sid, generation, crate::now_ms() / 1000);
    let access = cfg.signing.sign(&claims);
    no_store(json(
        status,
        &session_body(&access, &claims, public, sid, secret),
    ))
}

async fn start_session(cfg: &Config, accounts: &Accounts, a: &AccountData, status: u16) -> Answer {
    let (sid, secret) = accounts
        .open_session(&a.user_id(), &a.key(), cfg.max_sessions, crate::now_ms())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(issue(cfg, a, &sid, &secret, 1, status))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
}

/// `POST /api/auth/register {"username", "password", "email"?}`.
pub async fn register(
    cfg: &Config,
    accounts: &Accounts,
    bootstrap: Option<&str>,
    bytes: &[u8],
) -> Response {
    answer(register_inner(cfg, accounts, bootstrap, bytes).await)
}

async fn register_inner(
    cfg: &Config,
    accounts: &Accounts,
    bootstrap: Option<&str>,
    bytes: &[u8],
) -> Answer {
    let b: Credentials = body(bytes)?;
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
    start_session(cfg, accounts, &account, 201).await
}

/// `POST /api/auth/login {"username", "password"}`.
pub async fn login(cfg: &Config, accounts: &Accounts, bytes: &[u8]) -> Response {
    answer(login_inner(cfg, accounts, bytes).await)
}

async fn login_inner(cfg: &Config, accounts: &Accounts, bytes: &[u8]) -> Answer {
    let b: Credentials = body(bytes)?;
    let key = names::username(&b.username).map_err(|_| ApiError::InvalidCredentials)?;
    let found = accounts.find(&key).await.map_err(|e| unavailable(&e))?;
    let mut account = lookup::login_account(found)?;
    let stored = account.clone();
    let password = b.password;
    let ok = tokio::task::spawn_blocking(move || stored.check_password(&password))
        .await
        .unwrap_or(false);
    if !ok {
        return Err(ApiError::InvalidCredentials);
    }
    if piano_core::account::admin_on_login(&key, &cfg.admins) && account.clone().grant_admin() {
        let updated = accounts.update(&key, |a| {
            a.grant_admin();
        });
        let updated = updated.await;
        account = updated
            .map_err(|e| unavailable(&e))?
            .ok_or(ApiError::InvalidCredentials)?;
    }
    start_session(cfg, accounts, &account, 200).await
}

#[derive(Deserialize, Default)]
struct RefreshBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// `POST /api/auth/refresh {"refresh_token"}`: new access and refresh tokens; the old ones stop
/// working.
pub async fn refresh(cfg: &Config, accounts: &Accounts, bytes: &[u8]) -> Response {
    answer(refresh_inner(cfg, accounts, bytes).await)
}

async fn refresh_inner(cfg: &Config, accounts: &Accounts, bytes: &[u8]) -> Answer {
    let b: RefreshBody = body(bytes)?;
    let not_valid = ApiError::InvalidSession(SessionRefusal::NotValid);
    let t = b
        .refresh_token
        .as_deref()
        .and_then(RefreshToken::parse)
        .ok_or(not_valid.clone())?;
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
        Refreshed::Rotated(generation) => {
            Ok(issue(cfg, &account, t.sid, &new_secret, generation, 200))
        }
    }
}

/// `POST /api/auth/logout {"refresh_token"}` (or with just the access token as Bearer): ends
/// the session; its access and refresh tokens are refused from now on.
pub async fn logout(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    bytes: &[u8],
) -> Response {
    answer(logout_inner(cfg, accounts, bearer, bytes).await)
}

async fn logout_inner(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    bytes: &[u8],
) -> Answer {
    // An empty or unreadable body means "log out with the access token".
    let b: RefreshBody = serde_json::from_slice(bytes).unwrap_or_default();
    let ended = if let Some(refresh) = b.refresh_token.as_deref() {
        // The refresh token is the credential: its secret must be this session's (user and
        // session id alone are in every access token's readable payload).
        let t = RefreshToken::parse(refresh)
            .ok_or(ApiError::InvalidSession(SessionRefusal::NotValid))?;
        accounts
            .revoke_with_secret(t.user, t.sid, t.secret)
            .await
            .map_err(|e| unavailable(&e))?
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
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = axum::http::StatusCode::NO_CONTENT;
    Ok(resp)
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
