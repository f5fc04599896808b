//! Signing in through Discord and OpenID Connect providers (`docs/accounts-oauth.md`). Every
//! rule is the core's (`piano_core::oauth`): this module fetches (through [`provider`]), checks
//! ID-token signatures with `ring` (the core's `jws`), stores through the account store
//! ([`crate::accounts`]: claims, accounts, sessions) and answers.
//!
//! Failures are logged as `oauth_failure` with the provider and the code (never a token or a
//! code value); `start` and the callback are browser navigations, answered with a page unless
//! the request asks for JSON.

pub mod provider;

use crate::accounts::browser::with_cookies;
use crate::accounts::{self, Accounts, Browser};
use crate::auth::{api_error, verify_claims};
use crate::config::Config;
use crate::json::{json, with_header};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use piano_core::account::ApiError;
use piano_core::logging::event;
use piano_core::oauth::config::{self, Kind, Provider};
use piano_core::oauth::flow::{self, START_RANDOM};
use piano_core::oauth::link::{self, Linker, SIGN_IN_RANDOM};
use piano_core::oauth::{
    ExternalProfile, OAuthError, cookies, discord, error_page, jws, oidc, query_param, wants_json,
};
pub use provider::Providers;

fn oauth(e: OAuthError) -> ApiError {
    ApiError::OAuth(e)
}

/// Logs a failure and answers it: the page for a browser's navigation (`page`), else JSON.
fn failure(providers: &Providers, id: &str, e: &ApiError, page: Option<&Browser>) -> Response {
    // The id in the path is the client's: logged only when it names a provider.
    let provider = if providers.list.iter().any(|p| p.id == id) {
        id
    } else {
        "unknown"
    };
    let detail = match e {
        ApiError::OAuth(o) => o.detail(),
        _ => String::new(),
    };
    tracing::warn!(
        event = event::OAUTH_FAILURE,
        provider,
        code = e.code(),
        detail,
        "sign-in through a provider failed"
    );
    let resp = match page {
        Some(b) if !wants_json(b.accept.as_deref()) => {
            let mut resp = Response::new(error_page(e.code(), &e.message()).into());
            *resp.status_mut() =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            for (name, value) in e.headers() {
                resp = with_header(resp, name, &value);
            }
            resp
        }
        _ => api_error(e),
    };
    with_header(resp, "cache-control", "no-store")
}

/// `GET /api/auth/providers`.
pub fn providers(providers: &Providers) -> Response {
    with_header(
        json(200, &config::providers_body(&providers.list)),
        "cache-control",
        "public, max-age=60",
    )
}

fn random<const N: usize>() -> [u8; N] {
    crate::accounts::store::random_bytes::<N>()
}

/// The flow's beginning, for `start` and `link`: the provider's address and the flow cookie.
async fn begin(
    cfg: &Config,
    providers: &Providers,
    browser: &Browser,
    id: &str,
    query: &str,
    member: Option<String>,
) -> Result<flow::Start, ApiError> {
    let p = config::find(&providers.list, id).map_err(oauth)?;
    let return_to = query_param(query, "return_to");
    // Checked before the provider is asked anything.
    flow::check_return_to(return_to.as_deref()).map_err(oauth)?;
    let now = crate::now_ms();
    let endpoints = providers.endpoints(p, now).await.map_err(oauth)?;
    let redirect_uri = config::redirect_uri(&browser.own_origin, id);
    flow::start(
        p,
        &endpoints,
        &redirect_uri,
        return_to.as_deref(),
        member,
        &random::<START_RANDOM>(),
        now,
        &cfg.flow_key,
        browser.secure(),
    )
    .map_err(oauth)
}

/// `GET /api/auth/oauth/{id}/start?return_to=/path`: 302 to the provider, with the flow cookie.
pub async fn start(
    cfg: &Config,
    providers: &Providers,
    browser: &Browser,
    id: &str,
    query: &str,
) -> Response {
    match begin(cfg, providers, browser, id, query, None).await {
        Ok(s) => {
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::FOUND;
            let resp = with_header(resp, "location", &s.location);
            with_header(
                with_cookies(resp, [s.set_cookie]),
                "cache-control",
                "no-store",
            )
        }
        Err(e) => failure(providers, id, &e, Some(browser)),
    }
}

/// The member a bearer access token names (a live session, as `/api/users/me` checks it).
async fn member(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<&str>,
) -> Result<String, ApiError> {
    let claims = verify_claims(cfg, accounts, bearer).await?;
    // A member's token of a session (as the edge and logout ask): a `user:` token without a
    // `sid` proves no session to link to.
    match (claims.sub.strip_prefix("user:"), claims.sid) {
        (Some(key), Some(_)) => Ok(key.to_owned()),
        _ => Err(ApiError::NotAMember),
    }
}

/// `POST /api/auth/oauth/{id}/link?return_to=/path` (a member): `{"url"}` to open, and the
/// flow cookie naming the member.
pub async fn link(
    cfg: &Config,
    accounts: &Accounts,
    providers: &Providers,
    browser: &Browser,
    bearer: Option<&str>,
    id: &str,
    query: &str,
) -> Response {
    let begun = async {
        let key = member(cfg, accounts, bearer).await?;
        begin(cfg, providers, browser, id, query, Some(key)).await
    };
    match begun.await {
        Ok(s) => {
            let resp = json(200, &serde_json::json!({ "url": s.location }));
            with_header(
                with_cookies(resp, [s.set_cookie]),
                "cache-control",
                "no-store",
            )
        }
        Err(e) => failure(providers, id, &e, None),
    }
}

/// `GET /api/auth/oauth/{id}/callback?code&state`: the code exchanged, the identity checked,
/// the account found, created or linked, the session in cookies, 303 to `return_to`. The flow
/// cookie is cleared whatever happens.
pub async fn callback(
    cfg: &Config,
    accounts: &Accounts,
    providers: &Providers,
    browser: &Browser,
    id: &str,
    query: &str,
) -> Response {
    let resp = match finish(cfg, accounts, providers, browser, id, query).await {
        Ok((return_to, refresh)) => {
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::SEE_OTHER;
            let resp = with_header(resp, "location", &return_to);
            let cookies =
                cookies::session_cookies(&refresh, cfg.session_ttl_secs, browser.secure());
            with_header(with_cookies(resp, cookies), "cache-control", "no-store")
        }
        Err(e) => failure(providers, id, &e, Some(browser)),
    };
    with_cookies(resp, [flow::clear_flow_cookie(browser.secure())])
}

/// The callback's work: `return_to` and the new session's refresh token.
async fn finish(
    cfg: &Config,
    accounts: &Accounts,
    providers: &Providers,
    browser: &Browser,
    id: &str,
    query: &str,
) -> Result<(String, String), ApiError> {
    let p = config::find(&providers.list, id).map_err(oauth)?;
    let now = crate::now_ms();
    let (flow, code) =
        flow::callback(id, query, browser.cookie.as_deref(), &cfg.flow_key, now).map_err(oauth)?;
    let endpoints = providers.endpoints(p, now).await.map_err(oauth)?;
    let redirect_uri = config::redirect_uri(&browser.own_origin, id);
    let exchange = flow::token_request(p, &endpoints, &flow, &code, &redirect_uri);
    let (status, body) = providers
        .fetch("token endpoint", &exchange)
        .await
        .map_err(oauth)?;
    let tokens = flow::token_response(status, &body).map_err(oauth)?;
    let profile = identify(providers, p, &endpoints, &flow, &tokens, now)
        .await
        .map_err(oauth)?;
    let random = random::<SIGN_IN_RANDOM>();
    let linker = match &flow.l {
        Some(member) => Linker::link(profile, member, &random, now),
        None => Linker::sign_in(profile, &random, &cfg.admins, now),
    };
    let (key, created) = accounts.settle(linker).await?;
    tracing::info!(
        user = key,
        provider = id,
        created,
        "signed in through a provider"
    );
    let refresh = accounts::provider_session(cfg, accounts, &key).await?;
    Ok((flow.r, refresh))
}

/// Who the player is at the provider: Discord's `users/@me`, or the checked ID token (and
/// userinfo) of an OpenID Connect provider.
async fn identify(
    providers: &Providers,
    p: &Provider,
    endpoints: &config::Endpoints,
    flow: &flow::Flow,
    tokens: &flow::Tokens,
    now: u64,
) -> Result<ExternalProfile, OAuthError> {
    let issuer = match &p.kind {
        Kind::Discord { .. } => {
            let me = discord::me_request(endpoints, &tokens.access_token)
                .ok_or_else(|| OAuthError::Provider("no profile endpoint".into()))?;
            let (status, body) = providers.fetch("users/@me", &me).await?;
            return discord::profile(p, status, &body);
        }
        Kind::Oidc { issuer, .. } => issuer,
    };
    let id_token = tokens
        .id_token
        .as_deref()
        .ok_or(OAuthError::Token("no id_token"))?;
    let token = oidc::inspect(id_token)?;
    let key = providers.key(p, &token, now).await?;
    let valid = jws::verify(
        token.alg,
        &key,
        token.signing_input.as_bytes(),
        &token.signature,
    );
    let mut claims = token.accept(valid, p, issuer, flow.n.as_deref(), now)?;
    if let Some(url) = &endpoints.userinfo {
        let req = flow::HttpRequest {
            method: "GET",
            url: url.clone(),
            headers: vec![
                ("authorization", format!("Bearer {}", tokens.access_token)),
                ("accept", "application/json".to_owned()),
            ],
            body: None,
        };
        let (status, body) = providers.fetch("userinfo", &req).await?;
        claims = oidc::userinfo(claims, status, &body)?;
    }
    Ok(claims.profile(&p.id))
}

/// `GET /api/auth/identities` (a member): the linked identities and whether there is a
/// password.
pub async fn identities(cfg: &Config, accounts: &Accounts, bearer: Option<&str>) -> Response {
    let listed = async {
        let key = member(cfg, accounts, bearer).await?;
        let found = accounts.find(&key).await.map_err(|e| {
            tracing::warn!(error = e, "account store failed");
            piano_core::account::lookup::unavailable()
        })?;
        match found {
            piano_core::account::lookup::Lookup::Found(a) => Ok(link::identities_body(&a)),
            piano_core::account::lookup::Lookup::Absent => Err(ApiError::NotFound),
            piano_core::account::lookup::Lookup::Unavailable => {
                Err(piano_core::account::lookup::unavailable())
            }
        }
    };
    match listed.await {
        Ok(body) => with_header(json(200, &body), "cache-control", "no-store"),
        Err(e) => api_error(&e),
    }
}

/// `DELETE /api/auth/identities/{id}` (a member): 204, or 409 `last_way_in`, 404 `not_linked`.
pub async fn unlink(
    cfg: &Config,
    accounts: &Accounts,
    providers: &Providers,
    bearer: Option<&str>,
    id: &str,
) -> Response {
    let done = async {
        let key = member(cfg, accounts, bearer).await?;
        accounts.unlink(&key, id).await
    };
    match done.await {
        Ok(()) => {
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Err(e) => failure(providers, id, &e, None),
    }
}
