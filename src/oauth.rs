//! Signing in through Discord and OpenID Connect providers (`docs/accounts-oauth.md`): the
//! routes, carried out with the core's rules (`piano_core::oauth`). The flow lives in a signed
//! cookie; [`crate::provider`] talks to the provider; the identity's claim and the account
//! are the Account namespace's objects (`piano_durable_objects::claims`, the Account object's
//! provider routes), driven by the core's `Linker`; the session is opened as a password login
//! opens one and given to the browser in cookies. Calls go one way: this module uses
//! [`crate::auth`] and [`crate::provider`].

use crate::auth::{self, account_call, api_response, bearer, limited_config};
use crate::config::Config;
use crate::provider;
use piano_core::Millis;
use piano_core::account::ApiError;
use piano_core::account::tokens::RefreshToken;
use piano_core::logging::event::OAUTH_FAILURE;
use piano_core::oauth::link::{self, Added, Claim, Linker, Want};
use piano_core::oauth::{self as core_oauth, OAuthError, Provider, config, cookies, flow};
use piano_durable_objects::{claims, log};
use serde::Deserialize;
use worker::*;

/// The configured providers; a bad `OAUTH_PROVIDERS` is logged and answers 503 `not_configured`.
fn providers(env: &Env, rid: &str) -> std::result::Result<Vec<Provider>, Result<Response>> {
    let raw = piano_durable_objects::setting(env, "OAUTH_PROVIDERS").unwrap_or_default();
    config::parse(&raw, |var| piano_durable_objects::setting(env, var)).map_err(|e| {
        log::error(OAUTH_FAILURE)
            .request_id(rid)
            .field("code", "not_configured")
            .msg(e.clone())
            .emit();
        api_response(&ApiError::NotConfigured(e))
    })
}

/// `GET /api/auth/providers`.
pub fn list(env: &Env, rid: &str) -> Result<Response> {
    let ps = match providers(env, rid) {
        Ok(ps) => ps,
        Err(resp) => return resp,
    };
    let mut resp = Response::from_json(&config::providers_body(&ps))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}

/// How a failed step answers: a page for the browser's navigations (unless it asked for JSON),
/// JSON for API calls; always logged (provider and code, never a token or a code).
struct Failure<'a> {
    provider: &'a str,
    /// The request's id (every line logged while serving a request carries it).
    rid: &'a str,
    page: bool,
    /// The flow cookie to clear (`Some(secure)`), for the flow's steps.
    clear_flow: Option<bool>,
}

impl Failure<'_> {
    fn answer(&self, e: &ApiError) -> Result<Response> {
        let detail = match e {
            ApiError::OAuth(o) => o.detail(),
            other => other.message(),
        };
        log::warn(OAUTH_FAILURE)
            .request_id(self.rid)
            .field(
                "provider",
                self.provider.chars().take(32).collect::<String>(),
            )
            .field("code", e.code())
            .msg(detail)
            .emit();
        let mut resp = if self.page {
            let page = core_oauth::error_page(e.code(), &e.message());
            let mut r = Response::from_html(page)?.with_status(e.status());
            for (name, value) in e.headers() {
                r.headers_mut().set(name, &value)?;
            }
            r
        } else {
            api_response(e)?
        };
        resp.headers_mut().set("cache-control", "no-store")?;
        if let Some(secure) = self.clear_flow {
            resp.headers_mut()
                .append("set-cookie", &flow::clear_flow_cookie(secure))?;
        }
        Ok(resp)
    }
}

fn now() -> Millis {
    Date::now().as_millis()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| Error::RustError(format!("no randomness: {e}")))?;
    Ok(b)
}

fn query(req: &Request) -> String {
    req.url()
        .ok()
        .and_then(|u| u.query().map(str::to_owned))
        .unwrap_or_default()
}

fn unavailable() -> ApiError {
    ApiError::Unavailable {
        retry_after_secs: None,
    }
}

/// A flow's start (`linking`: for the signed-in member of the bearer token): the provider's
/// address and the flow cookie, or the answer that refuses it.
async fn begin(
    req: &Request,
    env: &Env,
    id: &str,
    rid: &str,
    linking: bool,
) -> std::result::Result<flow::Start, Result<Response>> {
    let own = auth::own_origin(req, env);
    let fail = Failure {
        provider: id,
        rid,
        // `start` is a browser navigation; `link` an API call.
        page: !linking
            && !core_oauth::wants_json(req.headers().get("accept").ok().flatten().as_deref()),
        clear_flow: Some(cookies::secure(&own)),
    };
    let cfg = limited_config(req, env).await?;
    let link = match linking {
        true => Some(member(req, env).await?),
        false => None,
    };
    let ps = providers(env, rid)?;
    let p = config::find(&ps, id).map_err(|e| fail.answer(&ApiError::OAuth(e)))?;
    let return_to = core_oauth::query_param(&query(req), "return_to");
    // Refused before anything is asked of the provider.
    flow::check_return_to(return_to.as_deref()).map_err(|e| fail.answer(&ApiError::OAuth(e)))?;
    let random = random::<{ flow::START_RANDOM }>().map_err(Err)?;
    let started = match provider::endpoints(p, now()).await {
        Ok(endpoints) => flow::start(
            p,
            &endpoints,
            &config::redirect_uri(&own, &p.id),
            return_to.as_deref(),
            link,
            &random,
            now(),
            &cfg.flow_key(),
            cookies::secure(&own),
        ),
        Err(e) => Err(e),
    };
    started.map_err(|e| fail.answer(&ApiError::OAuth(e)))
}

/// `GET /api/auth/oauth/{id}/start?return_to=`: 302 to the provider, with the flow cookie.
pub async fn start(req: Request, env: &Env, id: &str, rid: &str) -> Result<Response> {
    let s = match begin(&req, env, id, rid, false).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let mut resp = Response::empty()?.with_status(302);
    resp.headers_mut().set("location", &s.location)?;
    resp.headers_mut().set("cache-control", "no-store")?;
    resp.headers_mut().append("set-cookie", &s.set_cookie)?;
    Ok(resp)
}

/// `POST /api/auth/oauth/{id}/link?return_to=` (a member): `{"url"}` to open, and the flow
/// cookie naming the member.
pub async fn link(req: Request, env: &Env, id: &str, rid: &str) -> Result<Response> {
    let s = match begin(&req, env, id, rid, true).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let mut resp = Response::from_json(&serde_json::json!({ "url": s.location }))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    resp.headers_mut().append("set-cookie", &s.set_cookie)?;
    Ok(resp)
}

/// The signed-in member of a bearer request (an account key), or the refusal to answer.
async fn member(req: &Request, env: &Env) -> std::result::Result<String, Result<Response>> {
    let claims = auth::verify_claims(env, bearer(req).as_deref()).await?;
    match (claims.sub.strip_prefix("user:"), &claims.sid) {
        (Some(user), Some(_)) => Ok(user.to_owned()),
        _ => Err(api_response(&ApiError::NotAMember)),
    }
}

/// `GET /api/auth/oauth/{id}/callback?code&state`: the code exchange, the identity, the
/// account, the session in cookies, 303 to `return_to`. The flow cookie is cleared whatever
/// happens.
pub async fn callback(req: Request, env: &Env, id: &str, rid: &str) -> Result<Response> {
    let own = auth::own_origin(&req, env);
    let secure = cookies::secure(&own);
    let fail = Failure {
        provider: id,
        rid,
        page: !core_oauth::wants_json(req.headers().get("accept")?.as_deref()),
        clear_flow: Some(secure),
    };
    // Refused before the flow is read (rate limit, configuration): the flow ends here too.
    let ended = |resp: Result<Response>| -> Result<Response> {
        let mut resp = resp?;
        resp.headers_mut()
            .append("set-cookie", &flow::clear_flow_cookie(secure))?;
        Ok(resp)
    };
    let cfg = match limited_config(&req, env).await {
        Ok(c) => c,
        Err(resp) => return ended(resp),
    };
    let ps = match providers(env, rid) {
        Ok(ps) => ps,
        Err(resp) => return ended(resp),
    };
    match signed_in(&req, env, &cfg, &ps, (id, rid), &own).await {
        Ok((return_to, refresh)) => {
            let mut resp = Response::empty()?.with_status(303);
            resp.headers_mut().set("location", &return_to)?;
            resp.headers_mut().set("cache-control", "no-store")?;
            let session = cookies::session_cookies(&refresh, cfg.session_ttl_secs, secure);
            auth::set_cookies(&mut resp, &session)?;
            resp.headers_mut()
                .append("set-cookie", &flow::clear_flow_cookie(secure))?;
            Ok(resp)
        }
        Err(e) => fail.answer(&e),
    }
}

/// The callback's steps: where to go and the session's refresh token.
async fn signed_in(
    req: &Request,
    env: &Env,
    cfg: &Config,
    ps: &[Provider],
    (id, rid): (&str, &str),
    own: &str,
) -> std::result::Result<(String, String), ApiError> {
    let p = config::find(ps, id).map_err(ApiError::OAuth)?;
    let cookie = req.headers().get("cookie").ok().flatten();
    let (flow, code) = flow::callback(id, &query(req), cookie.as_deref(), &cfg.flow_key(), now())
        .map_err(ApiError::OAuth)?;
    let endpoints = provider::endpoints(p, now())
        .await
        .map_err(ApiError::OAuth)?;
    let redirect = config::redirect_uri(own, id);
    let profile = provider::profile(p, &endpoints, &flow, &code, &redirect, now())
        .await
        .map_err(ApiError::OAuth)?;
    let random = random::<{ link::SIGN_IN_RANDOM }>().map_err(|_| unavailable())?;
    let linker = match &flow.l {
        Some(m) => Linker::link(profile, m, &random, now()),
        None => Linker::sign_in(profile, &random, &cfg.admins, now()),
    };
    let key = settle(env, linker).await.map_err(|e| {
        log::error(OAUTH_FAILURE)
            .request_id(rid)
            .field("provider", id)
            .error(&e)
            .msg("account store call failed")
            .emit();
        unavailable()
    })??;
    let refresh = open_session(env, cfg, &key).await.map_err(|e| {
        log::error(OAUTH_FAILURE)
            .request_id(rid)
            .field("provider", id)
            .error(&e)
            .msg("session could not be opened")
            .emit();
        unavailable()
    })??;
    Ok((flow.r, refresh))
}

/// Calls the claim object of an identity.
async fn claim_call(
    env: &Env,
    identity: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<Response> {
    account_call(
        env,
        &format!("{}{identity}", claims::PREFIX),
        Method::Post,
        path,
        Some(body),
    )
    .await
}

/// Carries out the linker's steps until it is done: the account to sign in to, or the refusal.
async fn settle(env: &Env, mut linker: Linker) -> Result<std::result::Result<String, ApiError>> {
    // The linker ends in a few steps (a claim, a load, up to four creations); a bound anyway.
    for _ in 0..32 {
        match linker.want() {
            Want::Claim { identity, claim } => {
                #[derive(Deserialize)]
                struct Held {
                    claim: Claim,
                }
                let mut resp = claim_call(
                    env,
                    &identity,
                    "/claim",
                    serde_json::json!({ "claim": claim }),
                )
                .await?;
                linker.claimed(resp.json::<Held>().await?.claim);
            }
            Want::Load { key } => {
                #[derive(Deserialize)]
                struct Data {
                    account: piano_core::account::AccountData,
                }
                let mut resp = account_call(env, &key, Method::Get, "/data", None).await?;
                let account = match resp.status_code() {
                    200 => Some(resp.json::<Data>().await?.account),
                    404 => None,
                    s => return Err(Error::RustError(format!("account data: {s}"))),
                };
                linker.loaded(account.as_ref());
            }
            Want::Replace { identity, from, to } => {
                #[derive(Deserialize)]
                struct Done {
                    done: bool,
                }
                let body = serde_json::json!({ "from": from, "to": to });
                let mut resp = claim_call(env, &identity, "/claim/replace", body).await?;
                linker.replaced(resp.json::<Done>().await?.done);
            }
            Want::Create { account } => {
                #[derive(Deserialize)]
                struct Created {
                    created: bool,
                }
                let body = serde_json::json!({ "account": account });
                let mut resp = account_call(
                    env,
                    &account.username,
                    Method::Post,
                    "/create-external",
                    Some(body),
                )
                .await?;
                if resp.status_code() != 200 {
                    // MongoDB unreachable: the name may be another deployment's. The claim
                    // goes stale and a later sign-in takes it over.
                    return Ok(Err(unavailable()));
                }
                linker.created(resp.json::<Created>().await?.created);
            }
            Want::Add { key, identity } => {
                #[derive(Deserialize)]
                struct Outcome {
                    outcome: String,
                }
                let body = serde_json::json!({ "identity": identity });
                let mut resp =
                    account_call(env, &key, Method::Post, "/add-identity", Some(body)).await?;
                let added = match resp.status_code() {
                    200 => match resp.json::<Outcome>().await?.outcome.as_str() {
                        "done" => Added::Done,
                        _ => Added::NoAccount,
                    },
                    409 => Added::Refused(OAuthError::AlreadyLinked),
                    s => return Err(Error::RustError(format!("add identity: {s}"))),
                };
                linker.added(added);
            }
            Want::Release { identity, account } => {
                let body = serde_json::json!({ "account": account });
                claim_call(env, &identity, "/claim/release", body).await?;
                linker.released();
            }
            Want::Done { key, .. } => return Ok(Ok(key)),
            Want::Failed(e) => return Ok(Err(e)),
        }
    }
    Ok(Err(unavailable()))
}

/// Opens a session for the member `key` as a password login does (admin names get the role);
/// its refresh token.
async fn open_session(
    env: &Env,
    cfg: &Config,
    key: &str,
) -> Result<std::result::Result<String, ApiError>> {
    let body = serde_json::json!({
        "max_sessions": cfg.max_sessions,
        "admin": piano_core::account::admin_on_login(key, &cfg.admins),
    });
    let mut resp = account_call(env, key, Method::Post, "/session", Some(body)).await?;
    if resp.status_code() != 200 {
        return Ok(Err(unavailable()));
    }
    #[derive(Deserialize)]
    struct Session {
        sid: String,
        secret: String,
    }
    let s: Session = resp.json().await?;
    Ok(Ok(RefreshToken::format(key, &s.sid, &s.secret)))
}

/// `GET /api/auth/identities` (a member): the linked identities and whether a password is set.
pub async fn identities(req: Request, env: &Env) -> Result<Response> {
    let key = match member(&req, env).await {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    crate::relay_json(
        account_call(env, &key, Method::Get, "/identities", None).await?,
        Some("no-store"),
    )
    .await
}

/// `DELETE /api/auth/identities/{id}` (a member): removes the identity from the account, then
/// releases its claim (a new sign-in through it makes a new account).
pub async fn unlink(req: Request, env: &Env, id: &str, rid: &str) -> Result<Response> {
    let key = match member(&req, env).await {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let fail = Failure {
        provider: id,
        rid,
        page: false,
        clear_flow: None,
    };
    let body = serde_json::json!({ "provider": id });
    let mut resp = account_call(env, &key, Method::Post, "/unlink", Some(body)).await?;
    if resp.status_code() != 200 {
        #[derive(Deserialize)]
        struct Error {
            code: String,
        }
        #[derive(Deserialize)]
        struct Body {
            error: Error,
        }
        let code = resp
            .json::<Body>()
            .await
            .map(|b| b.error.code)
            .unwrap_or_default();
        let e = match code.as_str() {
            "last_way_in" => ApiError::OAuth(OAuthError::LastWayIn),
            "not_linked" => ApiError::OAuth(OAuthError::NotLinked),
            "not_a_member" => ApiError::NotAMember,
            _ => unavailable(),
        };
        return fail.answer(&e);
    }
    #[derive(Deserialize)]
    struct Removed {
        identity: piano_core::oauth::LinkedIdentity,
    }
    let removed = resp.json::<Removed>().await?.identity;
    let identity = link::identity_key(&removed.provider, &removed.subject);
    let release = claim_call(
        env,
        &identity,
        "/claim/release",
        serde_json::json!({ "account": key }),
    );
    if let Err(e) = release.await {
        // The account no longer lists it: the claim is invalid and goes stale on its own.
        log::warn(OAUTH_FAILURE)
            .request_id(rid)
            .field("provider", id)
            .error(&e)
            .msg("claim not released")
            .emit();
    }
    Ok(Response::empty()?.with_status(204))
}
