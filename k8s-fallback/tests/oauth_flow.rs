//! Signing in through providers on the fallback, over HTTP against the built binary: a
//! stand-in Discord and a stand-in OpenID Connect provider (EdDSA ID tokens) served by this
//! test. Start, callback, cookies, replay, refusals, linking and unlinking, and the cookie
//! variants of refresh, login and logout.

mod common;

use base64::Engine;
use common::{Replica, scratch_dir};
use ed25519_dalek::Signer;
use piano_core::oauth::{cookies, query_param};
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stand-in providers: codes are `{subject}-{anything}`, good once.
struct Stand {
    base: String,
    used: Mutex<HashSet<String>>,
    /// The nonce each code's ID token carries (the test reads it from `start`).
    nonces: Mutex<HashMap<String, String>>,
    key: ed25519_dalek::SigningKey,
    /// A signature the ID tokens are given instead of theirs (a forgery).
    forge: Mutex<bool>,
    /// The `kid` the ID tokens name.
    kid: Mutex<&'static str>,
    /// Fetches of the discovery document and of the keys.
    discoveries: AtomicUsize,
    jwks: AtomicUsize,
}

fn form(body: &str, name: &str) -> String {
    query_param(body, name).unwrap_or_default()
}

async fn serve_stand() -> Arc<Stand> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stand = Arc::new(Stand {
        base: format!("http://127.0.0.1:{port}"),
        used: Mutex::default(),
        nonces: Mutex::default(),
        key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        forge: Mutex::new(false),
        kid: Mutex::new("k1"),
        discoveries: AtomicUsize::new(0),
        jwks: AtomicUsize::new(0),
    });
    let s = stand.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move { answer(&s, req).await }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    stand
}

async fn answer(s: &Stand, req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(req.into_body(), 1 << 16)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body).to_string();
    let issuer = format!("{}/oidc", s.base);
    let bad = |e: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": e })),
        )
    };
    let subject_of = |token: &str| {
        token
            .strip_prefix("Bearer at.")
            .and_then(|c| c.split('-').next())
            .map(str::to_owned)
    };
    match path.as_str() {
        "/api/oauth2/token" | "/oidc/token" => {
            let code = form(&body, "code");
            if form(&body, "code_verifier").len() < 43 || !auth.starts_with("Basic ") {
                return bad("invalid_request").into_response();
            }
            if !s.used.lock().unwrap().insert(code.clone()) {
                return bad("invalid_grant").into_response();
            }
            let mut answer =
                json!({ "access_token": format!("at.{code}"), "token_type": "Bearer" });
            if path == "/oidc/token" {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let sub = code.split('-').next().unwrap_or_default();
                let nonce = s.nonces.lock().unwrap().get(&code).cloned();
                let claims = json!({"iss": issuer, "aud": "piano", "sub": sub, "iat": now,
                    "exp": now + 300, "nonce": nonce, "preferred_username": "ada"});
                let header = json!({"alg": "EdDSA", "kid": *s.kid.lock().unwrap()});
                let input = format!(
                    "{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(claims.to_string().as_bytes())
                );
                let mut sig = s.key.sign(input.as_bytes()).to_bytes();
                if *s.forge.lock().unwrap() {
                    sig[0] ^= 1;
                }
                answer["id_token"] = format!("{input}.{}", b64(&sig)).into();
            }
            axum::Json(answer).into_response()
        }
        "/api/users/@me" => match subject_of(&auth) {
            Some(id) => axum::Json(json!({"id": id, "username": "nelly", "global_name": "Nelly"}))
                .into_response(),
            None => (axum::http::StatusCode::UNAUTHORIZED, "no").into_response(),
        },
        "/oidc/me" => match subject_of(&auth) {
            Some(sub) => axum::Json(json!({"sub": sub, "name": "Ada L"})).into_response(),
            None => (axum::http::StatusCode::UNAUTHORIZED, "no").into_response(),
        },
        "/oidc/.well-known/openid-configuration" => {
            s.discoveries.fetch_add(1, SeqCst);
            axum::Json(json!({
            "issuer": issuer, "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"), "jwks_uri": format!("{issuer}/jwks"),
            "userinfo_endpoint": format!("{issuer}/me"),
            }))
            .into_response()
        }
        "/oidc/jwks" => {
            s.jwks.fetch_add(1, SeqCst);
            axum::Json(
                json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": b64(s.key.verifying_key().as_bytes())}]}),
            )
            .into_response()
        }
        _ => (axum::http::StatusCode::NOT_FOUND, "no").into_response(),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of each `Set-Cookie`, by name (the attributes kept whole too).
fn set_cookies(h: &HeaderMap) -> HashMap<String, (String, String)> {
    h.get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| {
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), (v.to_owned(), c.to_owned())))
        })
        .collect()
}

struct Flow {
    location: String,
    cookie: String,
    state: String,
    nonce: Option<String>,
}

fn flow_of(location: &str, headers: &HeaderMap) -> Flow {
    let cookie = set_cookies(headers)["piano_oauth"].0.clone();
    let q = location.split_once('?').unwrap().1;
    Flow {
        location: location.to_owned(),
        cookie: format!("piano_oauth={cookie}"),
        state: query_param(q, "state").unwrap(),
        nonce: query_param(q, "nonce"),
    }
}

async fn start(r: &Replica, provider: &str, return_to: &str) -> Flow {
    let resp = client()
        .get(r.http(&format!(
            "/api/auth/oauth/{provider}/start?return_to={return_to}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    flow_of(&location, resp.headers())
}

async fn callback(r: &Replica, provider: &str, query: &str, cookie: &str) -> reqwest::Response {
    client()
        .get(r.http(&format!("/api/auth/oauth/{provider}/callback?{query}")))
        .header("cookie", cookie)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

async fn code_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"].as_str().unwrap_or_default().into(),
    )
}

/// A browser session from a callback's cookies: (refresh cookie, csrf).
fn session_of(h: &HeaderMap) -> (String, String) {
    let c = set_cookies(h);
    let (refresh, attrs) = c["piano_refresh"].clone();
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("Path=/api/auth"),
        "{attrs}"
    );
    assert!(
        c["piano_oauth"].1.contains("Max-Age=0"),
        "the flow cookie is cleared"
    );
    (refresh, c["piano_csrf"].0.clone())
}

/// A cookie refresh from our origin: the access token, and the rotated session.
async fn cookie_refresh(r: &Replica, refresh: &str, csrf: &str) -> reqwest::Response {
    client()
        .post(r.http("/api/auth/refresh"))
        .header("cookie", format!("piano_refresh={refresh}"))
        .header("origin", r.http(""))
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap()
}

async fn access(r: &Replica, refresh: &str, csrf: &str) -> (String, Value) {
    let resp = cookie_refresh(r, refresh, csrf).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("refresh_token").is_none() && body["csrf_token"].is_string());
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["user"].clone(),
    )
}

async fn signed_in(r: &Replica, stand: &Stand, provider: &str, code: &str) -> (String, Value) {
    let f = start(r, provider, "/").await;
    if let Some(n) = &f.nonce {
        stand.nonces.lock().unwrap().insert(code.into(), n.clone());
    }
    let resp = callback(
        r,
        provider,
        &format!("code={code}&state={}", f.state),
        &f.cookie,
    )
    .await;
    assert_eq!(resp.status(), 303, "{:?}", code_of(resp).await);
    let (refresh, csrf) = session_of(resp.headers());
    access(r, &refresh, &csrf).await
}

/// A sign-in through the OpenID Connect stand-in whose ID token carries `nonce` (default: the
/// flow's).
async fn oidc_attempt(
    r: &Replica,
    stand: &Stand,
    code: &str,
    nonce: Option<&str>,
) -> reqwest::Response {
    let f = start(r, "local", "/").await;
    let nonce = nonce.map(str::to_owned).or(f.nonce.clone()).unwrap();
    stand.nonces.lock().unwrap().insert(code.into(), nonce);
    let q = format!("code={code}&state={}", f.state);
    callback(r, "local", &q, &f.cookie).await
}

async fn identities(r: &Replica, token: &str) -> Value {
    client()
        .get(r.http("/api/auth/identities"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn unlink(r: &Replica, token: &str, provider: &str) -> (u16, String) {
    let resp = client()
        .delete(r.http(&format!("/api/auth/identities/{provider}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    code_of(resp).await
}

fn providers_env(stand: &Stand) -> Vec<(&'static str, String)> {
    let providers = json!([
        {"id": "discord", "kind": "discord", "client_id": "123", "base_url": stand.base, "cdn_url": stand.base},
        {"id": "local", "kind": "oidc", "client_id": "piano", "issuer": format!("{}/oidc", stand.base)}
    ]);
    vec![
        ("OAUTH_PROVIDERS", providers.to_string()),
        ("OAUTH_CLIENT_SECRET_DISCORD", "s3cret".into()),
        ("OAUTH_CLIENT_SECRET_LOCAL", "s3cret".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_sign_in_link_unlink_and_cookie_sessions() {
    let stand = serve_stand().await;
    let mut env = providers_env(&stand);
    env.push(("DATA_DIR", scratch_dir("oauth-flow").display().to_string()));
    let r = Replica::start("oauth-flow", &env);
    scenario(&r, &stand).await;
}

/// The same on Redis, and a flow started on one replica finished on another (the flow cookie
/// is signed with the deployment's key; nothing was stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sign_in_link_unlink_and_cookie_sessions() {
    let stand = serve_stand().await;
    let redis = common::Redis::start();
    let mut env = providers_env(&stand);
    env.push((
        "DATA_DIR",
        scratch_dir("oauth-cluster").display().to_string(),
    ));
    env.push(("REDIS_URL", redis.url()));
    env.push(("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()));
    let (a, b) = (
        Replica::start("oauth-a", &env),
        Replica::start("oauth-b", &env),
    );
    scenario(&a, &stand).await;
    let f = start(&a, "discord", "/").await;
    let q = format!("code=333-a&state={}", f.state);
    let resp = callback(&b, "discord", &q, &f.cookie).await;
    assert_eq!(resp.status(), 303);
    let (refresh, csrf) = session_of(resp.headers());
    let (_, user) = access(&a, &refresh, &csrf).await;
    assert_eq!(user["name"], "Nelly");
}

async fn scenario(r: &Replica, stand: &Stand) {
    let listed: Value = common::get_json(&r.http("/api/auth/providers")).await;
    assert_eq!(listed["providers"][0]["id"], "discord");
    assert_eq!(listed["providers"][1]["kind"], "oidc");

    // A first sign-in through Discord: 303 to return_to, a session in cookies, no password.
    let f = start(r, "discord", "/rooms%3Fa%3D1").await;
    assert!(
        f.location
            .starts_with(&format!("{}/oauth2/authorize?", stand.base))
    );
    let ok = format!("code=111-a&state={}", f.state);
    let resp = callback(r, "discord", &ok, &f.cookie).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/rooms?a=1");
    let (refresh, csrf) = session_of(resp.headers());
    assert_eq!(csrf, cookies::csrf_token(&refresh));
    // The same callback again (the cookie kept by an attacker): the provider refuses the code.
    let replay = callback(r, "discord", &ok, &f.cookie).await;
    assert_eq!(code_of(replay).await, (400, "oauth_code".into()));
    // Another state, consent refused, no cookie, an unknown provider.
    let f2 = start(r, "discord", "/").await;
    let cases = [
        (
            "code=111-b&state=zzz".to_owned(),
            f2.cookie.clone(),
            400,
            "oauth_flow",
        ),
        (
            format!("error=access_denied&state={}", f2.state),
            f2.cookie.clone(),
            403,
            "oauth_denied",
        ),
        (
            format!("code=111-c&state={}", f2.state),
            String::new(),
            400,
            "oauth_flow",
        ),
    ];
    for (q, cookie, status, code) in cases {
        assert_eq!(
            code_of(callback(r, "discord", &q, &cookie).await).await,
            (status, code.into())
        );
    }
    let page = client()
        .get(r.http("/api/auth/oauth/nope/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    assert!(
        page.text().await.unwrap().contains("unknown_provider"),
        "an HTML page"
    );
    let evil = client()
        .get(r.http("/api/auth/oauth/discord/start?return_to=//evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 400);

    // Cookie refresh: our origin and the CSRF token, or 403 cross_site.
    let no_csrf = client()
        .post(r.http("/api/auth/refresh"))
        .header("cookie", format!("piano_refresh={refresh}"))
        .header("origin", r.http(""))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(no_csrf).await, (403, "cross_site".into()));
    let elsewhere = client()
        .post(r.http("/api/auth/refresh"))
        .header("cookie", format!("piano_refresh={refresh}"))
        .header("origin", "https://evil.example")
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(elsewhere).await, (403, "cross_site".into()));
    let rotated = cookie_refresh(r, &refresh, &csrf).await;
    assert_eq!(rotated.status(), 200);
    let (refresh2, csrf2) = {
        let c = set_cookies(rotated.headers());
        (c["piano_refresh"].0.clone(), c["piano_csrf"].0.clone())
    };
    assert_ne!(refresh2, refresh);
    let body: Value = rotated.json().await.unwrap();
    assert_eq!(body["csrf_token"], csrf2.as_str());
    let nelly = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(body["user"]["name"], "Nelly");
    let ids = identities(r, &nelly).await;
    assert_eq!(ids["has_password"], false);
    assert_eq!(ids["identities"][0]["subject"], "111");
    // Its only way in.
    assert_eq!(
        unlink(r, &nelly, "discord").await,
        (409, "last_way_in".into())
    );
    assert_eq!(unlink(r, &nelly, "local").await, (404, "not_linked".into()));
    // Signing in again finds the same account.
    let (_, again) = signed_in(r, stand, "discord", "111-d").await;
    assert_eq!(again["id"], body["user"]["id"]);

    // A password member links the OpenID Connect identity, then signs in through it.
    let login = client()
        .post(r.http("/api/auth/register"))
        .json(&json!({"username": "alice", "password": "password1", "cookie": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(login).await,
        (403, "cross_site".into()),
        "no Origin"
    );
    let reg: Value = client()
        .post(r.http("/api/auth/register"))
        .json(&json!({"username": "alice", "password": "password1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alice = reg["access_token"].as_str().unwrap().to_owned();
    let link = client()
        .post(r.http("/api/auth/oauth/local/link?return_to=/account"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(link.status(), 200);
    let h = link.headers().clone();
    let url: Value = link.json().await.unwrap();
    let f = flow_of(url["url"].as_str().unwrap(), &h);
    stand
        .nonces
        .lock()
        .unwrap()
        .insert("ada1-a".into(), f.nonce.clone().unwrap());
    let q = format!("code=ada1-a&state={}", f.state);
    let resp = callback(r, "local", &q, &f.cookie).await;
    assert_eq!(resp.status(), 303, "{:?}", code_of(resp).await);
    assert_eq!(resp.headers()["location"], "/account");
    let ids = identities(r, &alice).await;
    assert_eq!(ids["has_password"], true);
    assert_eq!(ids["identities"][0]["provider"], "local");
    // A forged ID token signature is refused.
    *stand.forge.lock().unwrap() = true;
    let forged = oidc_attempt(r, stand, "ada1-b", None).await;
    assert_eq!(code_of(forged).await, (401, "oauth_token".into()));
    *stand.forge.lock().unwrap() = false;
    // A nonce other than the flow's is refused.
    let wrong = oidc_attempt(r, stand, "ada1-c", Some("other")).await;
    assert_eq!(code_of(wrong).await, (401, "oauth_token".into()));
    // A key the provider does not list: the keys are fetched again once, not at every try.
    *stand.kid.lock().unwrap() = "k9";
    let before = stand.jwks.load(SeqCst);
    for code in ["ada1-e", "ada1-f"] {
        let unknown = oidc_attempt(r, stand, code, None).await;
        assert_eq!(code_of(unknown).await, (401, "oauth_token".into()));
    }
    assert!(
        stand.jwks.load(SeqCst) <= before + 1,
        "at most one refetch a minute"
    );
    *stand.kid.lock().unwrap() = "k1";
    // Signing in through the linked identity is alice.
    let resp = oidc_attempt(r, stand, "ada1-d", None).await;
    assert_eq!(resp.status(), 303);
    let (refresh, csrf) = session_of(resp.headers());
    let (_, user) = access(r, &refresh, &csrf).await;
    assert_eq!(user["username"], "alice");
    // The discovery document was fetched once for all those sign-ins (cached for an hour).
    assert_eq!(stand.discoveries.load(SeqCst), 1);
    // Nelly's Discord identity is not alice's to link.
    let link = client()
        .post(r.http("/api/auth/oauth/discord/link"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let h = link.headers().clone();
    let url: Value = link.json().await.unwrap();
    let f = flow_of(url["url"].as_str().unwrap(), &h);
    let q = format!("code=111-e&state={}", f.state);
    let taken = callback(r, "discord", &q, &f.cookie).await;
    assert_eq!(
        code_of(taken).await,
        (409, "identity_linked_elsewhere".into())
    );
    // Linking needs a member's token.
    let anonymous = client()
        .post(r.http("/api/auth/oauth/discord/link"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // alice has a password: unlinking is fine.
    assert_eq!(unlink(r, &alice, "local").await.0, 204);
    assert_eq!(identities(r, &alice).await["identities"], json!([]));

    // Cookie login and logout.
    let login = client()
        .post(r.http("/api/auth/login"))
        .header("origin", r.http(""))
        .json(&json!({"username": "alice", "password": "password1", "cookie": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let c = set_cookies(login.headers());
    let (refresh, csrf) = (c["piano_refresh"].0.clone(), c["piano_csrf"].0.clone());
    let body: Value = login.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    assert_eq!(body["csrf_token"], csrf.as_str());
    let out = client()
        .post(r.http("/api/auth/logout"))
        .header("cookie", format!("piano_refresh={refresh}"))
        .header("origin", r.http(""))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(
        set_cookies(out.headers())["piano_refresh"]
            .1
            .contains("Max-Age=0")
    );
    let after = cookie_refresh(r, &refresh, &csrf).await;
    let cleared = set_cookies(after.headers())["piano_refresh"].1.clone();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(code_of(after).await, (401, "invalid_session".into()));
}
