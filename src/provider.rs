//! Talking to sign-in providers (`piano_core::oauth`'s requests, carried out): the runtime's
//! fetch with a timeout and a cap on every answer, OpenID Connect discovery and JWKS cached per
//! isolate with the core's refetch rules, ID token signatures through WebCrypto, and the
//! player's profile. Every rule is the core's; this module only does the I/O.

use piano_core::Millis;
use piano_core::oauth::config::Kind;
use piano_core::oauth::flow::{self, Flow, HttpRequest};
use piano_core::oauth::oidc::{self, Jwk};
use piano_core::oauth::{
    Endpoints, ExternalProfile, MAX_PROVIDER_BODY, OAuthError, Provider, discord,
};
use piano_durable_objects::webcrypto::jws;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use worker::*;

/// How long a provider may take to answer one request (and send its body).
const TIMEOUT: Duration = Duration::from_secs(10);

/// A provider's answer: status and (capped) body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

fn unusable(what: &str) -> impl Fn(Error) -> OAuthError + '_ {
    move |e| OAuthError::Provider(format!("{what}: {e}"))
}

/// Sends a request to a provider: `Provider` when it is unreachable, slower than [`TIMEOUT`],
/// or answers more than [`MAX_PROVIDER_BODY`] bytes (never read further).
pub async fn send(r: &HttpRequest, what: &str) -> std::result::Result<Answer, OAuthError> {
    use futures_util::StreamExt;
    use futures_util::future::{Either, select};
    let headers = Headers::new();
    for (k, v) in &r.headers {
        headers.set(k, v).map_err(unusable(what))?;
    }
    let method = if r.method == "POST" {
        Method::Post
    } else {
        Method::Get
    };
    let mut init = RequestInit::new();
    // A provider's endpoints answer directly; a redirect (to wherever) is not followed, and
    // its 3xx is an unusable answer, as on the fallback.
    init.with_method(method)
        .with_redirect(RequestRedirect::Manual)
        .with_headers(headers)
        .with_body(r.body.as_ref().map(|b| b.as_str().into()));
    let req = Request::new_with_init(&r.url, &init).map_err(unusable(what))?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let exchange = async {
        let mut resp = Fetch::Request(req)
            .send_with_signal(&signal)
            .await
            .map_err(unusable(what))?;
        let status = resp.status_code();
        let mut body = Vec::new();
        if let Ok(mut stream) = resp.stream() {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(unusable(what))?;
                if body.len() + chunk.len() > MAX_PROVIDER_BODY {
                    return Err(OAuthError::Provider(format!("{what}: answer too large")));
                }
                body.extend_from_slice(&chunk);
            }
        }
        Ok(Answer { status, body })
    };
    let timeout = Delay::from(TIMEOUT);
    match select(std::pin::pin!(exchange), std::pin::pin!(timeout)).await {
        Either::Left((answer, _)) => answer,
        Either::Right(((), _)) => {
            controller.abort();
            Err(OAuthError::Provider(format!("{what}: no answer in time")))
        }
    }
}

/// A provider's discovery and keys, as this isolate last fetched them.
struct Cached {
    /// The discovery document's address (a changed issuer is another provider).
    discovery: String,
    endpoints: Endpoints,
    fetched: Millis,
    jwks: Rc<Vec<Jwk>>,
    /// When the JWKS was fetched (0: not yet).
    jwks_fetched: Millis,
}

thread_local! {
    static CACHE: RefCell<HashMap<String, Cached>> = RefCell::new(HashMap::new());
}

/// The provider's endpoints: Discord's are fixed; an OpenID Connect provider's come from its
/// discovery document, kept [`oidc::DISCOVERY_TTL_MS`].
pub async fn endpoints(p: &Provider, now: Millis) -> std::result::Result<Endpoints, OAuthError> {
    if let Some(e) = p.static_endpoints() {
        return Ok(e);
    }
    let (Some(url), Kind::Oidc { issuer, .. }) = (p.discovery_url(), &p.kind) else {
        return Err(OAuthError::Provider("no endpoints".into()));
    };
    let hit = CACHE.with_borrow(|c| {
        c.get(&p.id)
            .filter(|c| c.discovery == url && now < c.fetched + oidc::DISCOVERY_TTL_MS)
            .map(|c| c.endpoints.clone())
    });
    if let Some(e) = hit {
        return Ok(e);
    }
    let answer = send(&get(&url), "discovery").await?;
    if !(200..300).contains(&answer.status) {
        return Err(OAuthError::Provider(format!(
            "discovery: {}",
            answer.status
        )));
    }
    let endpoints = oidc::parse_discovery(issuer, &answer.body)?;
    CACHE.with_borrow_mut(|c| {
        c.insert(
            p.id.clone(),
            Cached {
                discovery: url,
                endpoints: endpoints.clone(),
                fetched: now,
                jwks: Rc::new(Vec::new()),
                jwks_fetched: 0,
            },
        )
    });
    Ok(endpoints)
}

fn get(url: &str) -> HttpRequest {
    HttpRequest {
        method: "GET",
        url: url.to_owned(),
        headers: vec![("accept", "application/json".to_owned())],
        body: None,
    }
}

/// The provider's keys: cached, unless `refetch` (an unknown `kid`: at most once per
/// [`oidc::JWKS_REFETCH_MIN_MS`]) or never fetched, or older than the discovery's lifetime.
async fn jwks(
    p: &Provider,
    e: &Endpoints,
    now: Millis,
    refetch: bool,
) -> std::result::Result<Option<Rc<Vec<Jwk>>>, OAuthError> {
    let cached = CACHE.with_borrow(|c| c.get(&p.id).map(|c| (c.jwks.clone(), c.jwks_fetched)));
    let (keys, fetched) = cached.unwrap_or_default();
    let stale = fetched == 0 || now >= fetched + oidc::DISCOVERY_TTL_MS;
    if !stale && !refetch {
        return Ok(Some(keys));
    }
    if !stale && now < fetched + oidc::JWKS_REFETCH_MIN_MS {
        // Asked again too soon: a storm of made-up `kid`s is not a storm of fetches.
        return Ok(None);
    }
    let url = e
        .jwks
        .as_deref()
        .ok_or_else(|| OAuthError::Provider("no jwks_uri".into()))?;
    let answer = send(&get(url), "jwks").await?;
    if !(200..300).contains(&answer.status) {
        return Err(OAuthError::Provider(format!("jwks: {}", answer.status)));
    }
    let keys = Rc::new(oidc::parse_jwks(&answer.body)?);
    CACHE.with_borrow_mut(|c| {
        if let Some(c) = c.get_mut(&p.id) {
            c.jwks = keys.clone();
            c.jwks_fetched = now;
        }
    });
    Ok(Some(keys))
}

/// Checks an ID token: its key from the JWKS (refetched once for an unknown `kid`), the
/// signature through WebCrypto, then the core's claim checks.
async fn id_token(
    p: &Provider,
    e: &Endpoints,
    token: &str,
    nonce: Option<&str>,
    now: Millis,
) -> std::result::Result<oidc::IdClaims, OAuthError> {
    let Kind::Oidc { issuer, .. } = &p.kind else {
        return Err(OAuthError::Token("not oidc"));
    };
    let unchecked = oidc::inspect(token)?;
    let mut keys = jwks(p, e, now, false).await?;
    let mut key = keys.as_ref().and_then(|k| unchecked.key(k).cloned());
    if key.is_none() {
        keys = jwks(p, e, now, true).await?;
        key = keys.as_ref().and_then(|k| unchecked.key(k).cloned());
    }
    let key = key.ok_or(OAuthError::Token("kid"))?;
    // Err: WebCrypto refused the provider's key (malformed) or the signature's form.
    let valid = jws::verify(
        unchecked.alg,
        &key,
        unchecked.signing_input.as_bytes(),
        &unchecked.signature,
    )
    .await
    .unwrap_or_default();
    unchecked.accept(valid, p, issuer, nonce, now)
}

/// The code exchange and the player's profile: Discord's `users/@me`, or an OpenID Connect
/// provider's checked ID token and its userinfo.
pub async fn profile(
    p: &Provider,
    e: &Endpoints,
    flow: &Flow,
    code: &str,
    redirect_uri: &str,
    now: Millis,
) -> std::result::Result<ExternalProfile, OAuthError> {
    let answer = send(
        &flow::token_request(p, e, flow, code, redirect_uri),
        "token",
    )
    .await?;
    let tokens = flow::token_response(answer.status, &answer.body)?;
    if !p.is_oidc() {
        let me = discord::me_request(e, &tokens.access_token)
            .ok_or_else(|| OAuthError::Provider("no users/@me".into()))?;
        let answer = send(&me, "users/@me").await?;
        return discord::profile(p, answer.status, &answer.body);
    }
    let token = tokens
        .id_token
        .as_deref()
        .ok_or(OAuthError::Token("no id_token"))?;
    let mut claims = id_token(p, e, token, flow.n.as_deref(), now).await?;
    if let Some(url) = &e.userinfo {
        let mut req = get(url);
        req.headers
            .push(("authorization", format!("Bearer {}", tokens.access_token)));
        let answer = send(&req, "userinfo").await?;
        claims = oidc::userinfo(claims, answer.status, &answer.body)?;
    }
    Ok(claims.profile(&p.id))
}
