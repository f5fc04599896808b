//! Who may do what (issue 13, items 8 and 9 on the fallback): `/metrics` behind its credential
//! or port, logout and refresh only with the refresh token's secret, `ADMIN_USERNAMES` only
//! with the bootstrap secret, security headers and CORS, the development key's file mode.

mod common;

use common::*;

async fn post(r: &Replica, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(r.http(path))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn me(r: &Replica, token: &str) -> u16 {
    reqwest::Client::new()
        .get(r.http("/api/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/users/me")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_their_token_or_their_port() {
    let dir = scratch_dir("metrics-token");
    let r = Replica::start("metrics-token", &[("DATA_DIR", dir.display().to_string())]);
    let get = |auth: Option<&'static str>| {
        let mut req = reqwest::Client::new().get(r.http("/metrics"));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        async move { req.send().await.expect("GET /metrics").status().as_u16() }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("wrong")).await, 401);
    assert_eq!(get(Some(METRICS_TOKEN)).await, 200);
    assert!(metrics(&r).await.contains("piano_connections "));
    drop(r);

    // On its own port: served there without a credential, not at all on the public one.
    let dir = scratch_dir("metrics-addr");
    let port = free_port();
    let r = Replica::start(
        "metrics-addr",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("METRICS_TOKEN", String::new()),
            ("METRICS_ADDR", format!("127.0.0.1:{port}")),
        ],
    );
    let public = reqwest::get(r.http("/metrics")).await.expect("GET");
    assert_eq!(public.status().as_u16(), 404);
    let private = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET metrics port");
    assert_eq!(private.status().as_u16(), 200);
    assert!(
        private
            .text()
            .await
            .unwrap_or_default()
            .contains("piano_rooms_awake ")
    );
    let other = reqwest::get(format!("http://127.0.0.1:{port}/api/rooms"))
        .await
        .expect("GET");
    assert_eq!(other.status().as_u16(), 404, "only /metrics on that port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_refresh_need_the_refresh_secret() {
    let dir = scratch_dir("secrets");
    let r = Replica::start("secrets", &[("DATA_DIR", dir.display().to_string())]);
    let (status, reg) = post(
        &r,
        "/api/auth/register",
        serde_json::json!({"username": "victim", "password": "long enough password"}),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let access = reg["access_token"].as_str().expect("access").to_owned();
    let refresh = reg["refresh_token"].as_str().expect("refresh").to_owned();
    // What anyone who saw the access token's payload knows: user and session id.
    let (user, rest) = refresh.split_once('.').expect("user.sid.secret");
    let (sid, _secret) = rest.split_once('.').expect("sid.secret");
    let forged = format!("{user}.{sid}.{}", "0".repeat(64));

    let (status, body) = post(
        &r,
        "/api/auth/refresh",
        serde_json::json!({ "refresh_token": forged }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_session"))
    );
    assert_eq!(
        me(&r, &access).await,
        200,
        "a made-up secret did not end the session"
    );
    let resp = reqwest::Client::new()
        .post(r.http("/api/auth/logout"))
        .json(&serde_json::json!({ "refresh_token": forged }))
        .send()
        .await
        .expect("logout");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(me(&r, &access).await, 200, "nor did a logout with it");

    // With the real secret: refresh works, and the rotated-away secret still counts as reuse.
    let (status, fresh) = post(
        &r,
        "/api/auth/refresh",
        serde_json::json!({ "refresh_token": refresh }),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    let access2 = fresh["access_token"].as_str().expect("access").to_owned();
    let refresh2 = fresh["refresh_token"].as_str().expect("refresh").to_owned();
    let resp = reqwest::Client::new()
        .post(r.http("/api/auth/logout"))
        .json(&serde_json::json!({ "refresh_token": refresh2 }))
        .send()
        .await
        .expect("logout");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(me(&r, &access2).await, 401, "logged out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_usernames_need_the_bootstrap_secret() {
    let dir = scratch_dir("bootstrap");
    let r = Replica::start(
        "bootstrap",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("ADMIN_USERNAMES", "boss".to_owned()),
            ("ADMIN_BOOTSTRAP_SECRET", "let me in".to_owned()),
        ],
    );
    let register = |secret: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(r.http("/api/auth/register"))
            .json(&serde_json::json!({"username": "Boss", "password": "long enough password"}));
        if let Some(s) = secret {
            req = req.header("x-admin-bootstrap", s);
        }
        async move {
            let resp = req.send().await.expect("register");
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = register(None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("reserved_username"))
    );
    let (status, _) = register(Some("guess")).await;
    assert_eq!(status, 403);
    let (status, body) = register(Some("let me in")).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["user"]["roles"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "admin")),
        "{body}"
    );
    // Names not listed register as before.
    let (status, _) = post(
        &r,
        "/api/auth/register",
        serde_json::json!({"username": "someone", "password": "long enough password"}),
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_everywhere_and_cors_only_for_listed_origins() {
    let dir = scratch_dir("headers");
    let r = Replica::start(
        "headers",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("CORS_ORIGINS", "https://piano.example".to_owned()),
        ],
    );
    let client = reqwest::Client::new();
    for path in ["/healthz", "/api/rooms", "/api/nope", "/index.html"] {
        let resp = client.get(r.http(path)).send().await.expect("GET");
        let h = resp.headers();
        let csp = h
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(
            h.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..])
        );
        assert_eq!(
            h.get("referrer-policy").map(|v| v.as_bytes()),
            Some(&b"no-referrer"[..])
        );
        assert_eq!(
            h.get("x-frame-options").map(|v| v.as_bytes()),
            Some(&b"DENY"[..])
        );
        assert!(
            h.get("access-control-allow-origin").is_none(),
            "no Origin, no CORS"
        );
    }
    let with_origin = |origin: &'static str| {
        client
            .get(r.http("/api/rooms"))
            .header("origin", origin)
            .send()
    };
    let ok = with_origin("https://piano.example").await.expect("GET");
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://piano.example"[..])
    );
    let evil = with_origin("https://evil.example").await.expect("GET");
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, r.http("/api/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://piano.example").await.expect("OPTIONS");
    assert_eq!(ok.status().as_u16(), 204);
    assert!(ok.headers().get("access-control-allow-methods").is_some());
    let evil = preflight("https://evil.example").await.expect("OPTIONS");
    assert_ne!(evil.status().as_u16(), 204);
    assert!(evil.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_key_is_private_and_the_old_proxy_switch_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("devkey");
    let r = Replica::start("devkey", &[("DATA_DIR", dir.display().to_string())]);
    let mode = std::fs::metadata(dir.join("dev-jwt-key.pem"))
        .expect("dev key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(r);

    // TRUST_X_FORWARDED_FOR trusted the client's own claim: a configuration still setting it
    // is refused at start, with the replacement named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_k8s-fallback"))
        .env_clear()
        .env("PORT", free_port().to_string())
        .env("DATA_DIR", dir.display().to_string())
        .env("TRUST_X_FORWARDED_FOR", "true")
        .env("LOG_FORMAT", "text")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TRUSTED_PROXIES"));
}
