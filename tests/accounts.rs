//! Member accounts on the real runtime: the whole session life cycle, uniqueness of usernames
//! under concurrency, profiles and roles, and the auth rate limit.

use crate::*;

fn client() -> reqwest::Client {
    crate::http()
}

async fn me(s: &Server, token: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .get(s.http("/api/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET me");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn ws_status(s: &Server, token: &str) -> u16 {
    let url = format!("{}?token={token}", s.ws_url(&unique("member-room")));
    match Client::connect(&url, &[]).await {
        Ok(_) => 101,
        Err(_) => refused_upgrade(&url, &[]).await.status,
    }
}

fn username() -> String {
    unique("m")
}

pub async fn register_login_connect_refresh_logout(s: &Server) {
    let name = username();
    let (status, reg) = s.post_json("/api/auth/register", serde_json::json!({"username": name, "password": "correct horse", "email": "m@example.org"})).await;
    assert_eq!(status, 201, "{reg}");
    let tag = reg["user"]["usertag"].as_str().unwrap();
    assert!(
        tag.starts_with(&format!("{name}#")) && tag.len() == name.len() + 7,
        "{tag}"
    );
    assert_eq!(reg["user"]["roles"], serde_json::json!(["member"]));
    let (status, body) = s
        .post_json(
            "/api/auth/register",
            serde_json::json!({"username": name.to_uppercase(), "password": "another one"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("username_taken")),
        "names are case-insensitive"
    );

    // Log in (a second session), connect with the access token.
    let (status, body) = s
        .post_json(
            "/api/auth/login",
            serde_json::json!({"username": name, "password": "wrong password"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (status, login) = s
        .post_json(
            "/api/auth/login",
            serde_json::json!({"username": name, "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let c = Client::connect(
        &format!("{}?token={access}", s.ws_url(&unique("member-room"))),
        &[],
    )
    .await
    .expect("member connects");
    let you = c.welcome.you.clone().unwrap();
    assert_eq!(
        (you.user_id.as_str(), you.roles.clone()),
        (format!("user:{name}").as_str(), vec!["member".to_owned()])
    );
    assert_eq!(me(s, &access).await.1["username"], name);

    // Refresh: new tokens work; the refreshed-away ones are refused at REST and WebSocket.
    let (status, fresh) = s
        .post_json(
            "/api/auth/refresh",
            serde_json::json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(status, 200, "{fresh}");
    let access2 = fresh["access_token"].as_str().unwrap().to_owned();
    let refresh2 = fresh["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh, refresh2);
    assert_eq!(me(s, &access2).await.0, 200);
    assert_eq!(ws_status(s, &access2).await, 101);
    assert_eq!(
        me(s, &access).await.0,
        401,
        "the refreshed-away access token"
    );
    assert_eq!(ws_status(s, &access).await, 401);

    // Log out: the session's tokens are all refused (a revoked session, at both entries).
    let resp = client()
        .post(s.http("/api/auth/logout"))
        .json(&serde_json::json!({"refresh_token": refresh2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(me(s, &access2).await.0, 401);
    assert_eq!(ws_status(s, &access2).await, 401);
    let (status, _) = s
        .post_json(
            "/api/auth/refresh",
            serde_json::json!({"refresh_token": refresh2}),
        )
        .await;
    assert_eq!(status, 401);
    // The registration's own session is untouched by all that.
    let first = reg["access_token"].as_str().unwrap();
    assert_eq!(me(s, first).await.0, 200);
    // Reusing a rotated-away refresh token revokes that session.
    let (_, again) = s
        .post_json(
            "/api/auth/refresh",
            serde_json::json!({"refresh_token": reg["refresh_token"]}),
        )
        .await;
    let (status, _) = s
        .post_json(
            "/api/auth/refresh",
            serde_json::json!({"refresh_token": reg["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 401, "a refresh token works once");
    assert_eq!(
        me(s, again["access_token"].as_str().unwrap()).await.0,
        401,
        "reuse ends the session"
    );

    // Bad input: clear errors, nothing about the password echoed.
    for (body, code) in [
        (
            serde_json::json!({"username": "x", "password": "long enough"}),
            "invalid_username",
        ),
        (
            serde_json::json!({"username": username(), "password": "short"}),
            "invalid_password",
        ),
        (
            serde_json::json!({"username": username(), "password": "long enough", "email": "nope"}),
            "invalid_email",
        ),
        (serde_json::json!({"user": "x"}), "invalid_json"),
    ] {
        let (status, resp) = s.post_json("/api/auth/register", body).await;
        assert_eq!(
            (status, resp["error"]["code"].as_str()),
            (400, Some(code)),
            "{resp}"
        );
        assert!(!resp.to_string().contains("long enough"));
    }
}

pub async fn concurrent_registrations_of_one_name_one_wins(s: &Server) {
    let name = username();
    let attempts = (0..8).map(|i| {
        let variant = if i % 2 == 0 {
            name.clone()
        } else {
            name.to_uppercase()
        };
        async move {
            s.post_json(
                "/api/auth/register",
                serde_json::json!({"username": variant, "password": format!("password {i}")}),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let won = results.iter().filter(|(st, _)| *st == 201).count();
    let taken = results
        .iter()
        .filter(|(st, b)| *st == 409 && b["error"]["code"] == "username_taken")
        .count();
    assert_eq!((won, taken), (1, 7), "{results:?}");
}

pub async fn profiles_and_admin_roles(s: &Server) {
    let name = username();
    let (_, reg) = s
        .post_json(
            "/api/auth/register",
            serde_json::json!({"username": name, "password": "profile pass"}),
        )
        .await;
    let token = reg["access_token"].as_str().unwrap().to_owned();
    let put = |body: serde_json::Value, token: String| async move {
        let resp = client()
            .put(s.http("/api/users/me"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (
            status,
            resp.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    let (status, p) = put(
        serde_json::json!({"name": "Maestro", "color": "#AA00FF", "status": "scales"}),
        token.clone(),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (
            p["name"].as_str(),
            p["color"].as_str(),
            p["status"].as_str()
        ),
        (Some("Maestro"), Some("#aa00ff"), Some("scales"))
    );
    assert_eq!(
        put(serde_json::json!({"color": "purple"}), token.clone())
            .await
            .0,
        400
    );
    let guest = s.guest_token("Guesty").await;
    assert_eq!(
        put(serde_json::json!({"name": "x"}), guest.clone()).await.0,
        403
    );
    let public: serde_json::Value = client()
        .get(s.http(&format!("/api/users/user:{name}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(public["name"], "Maestro");
    assert!(public.get("email").is_none() && public.get("password").is_none());
    assert_eq!(
        client()
            .get(s.http("/api/users/user:nobody-here"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Only admins grant roles; the grant shows in the next token.
    let roles_url = s.http(&format!("/api/admin/users/user:{name}/roles"));
    let roles = |token: String, body: serde_json::Value| {
        let url = roles_url.clone();
        async move {
            client()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        roles(token.clone(), serde_json::json!({"add": ["moderator"]}))
            .await
            .status(),
        403
    );
    // root-admin is in ADMIN_USERNAMES: registered with the bootstrap secret (or logged in,
    // if another trial registered it first), it is an admin.
    let admin_token = s.admin_token().await;
    assert_eq!(
        roles(admin_token.clone(), serde_json::json!({"add": ["wizard"]}))
            .await
            .status(),
        400
    );
    let resp = roles(
        admin_token.clone(),
        serde_json::json!({"add": ["moderator", "pro"]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (_, fresh) = s
        .post_json(
            "/api/auth/refresh",
            serde_json::json!({"refresh_token": reg["refresh_token"]}),
        )
        .await;
    let (_, me_now) = me(s, fresh["access_token"].as_str().unwrap()).await;
    assert_eq!(
        me_now["roles"],
        serde_json::json!(["member", "moderator", "pro"])
    );
    let resp = roles(admin_token, serde_json::json!({"remove": ["pro"]})).await;
    let after: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(after["roles"], serde_json::json!(["member", "moderator"]));
}

/// Runs alone (it restarts the server): with MAX_SESSIONS_PER_ACCOUNT=1 a new login ends the
/// older session; by default sessions accumulate.
pub async fn session_limit_ends_older_sessions(s: &Server) {
    s.set_env("MAX_SESSIONS_PER_ACCOUNT", Some("1"));
    s.restart();
    let name = username();
    let (_, reg) = s
        .post_json(
            "/api/auth/register",
            serde_json::json!({"username": name, "password": "one at a time"}),
        )
        .await;
    let first = reg["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me(s, &first).await.0, 200);
    let (_, login) = s
        .post_json(
            "/api/auth/login",
            serde_json::json!({"username": name, "password": "one at a time"}),
        )
        .await;
    assert_eq!(me(s, login["access_token"].as_str().unwrap()).await.0, 200);
    assert_eq!(me(s, &first).await.0, 401, "the older session ended");
    s.set_env("MAX_SESSIONS_PER_ACCOUNT", None);
    s.restart();
}

/// Runs alone (it restarts the server with the default limit of 10 per minute). Its requests
/// come from a network of their own (`CF-Connecting-IP` at the edge, `X-Forwarded-For` from the
/// fallback's trusted loopback proxy): a shared counter (the cluster's Redis) may still hold
/// other trials' requests of this minute from 127.0.0.1.
pub async fn auth_endpoints_are_rate_limited_per_ip(s: &Server) {
    s.set_env("AUTH_RATE_LIMIT_PER_MINUTE", None);
    s.restart();
    let ip = "203.0.113.10";
    let from_ip = |req: reqwest::RequestBuilder| {
        req.header("cf-connecting-ip", ip)
            .header("x-forwarded-for", ip)
    };
    for i in 0..10 {
        let resp = from_ip(client().post(s.http("/api/auth/guest")))
            .json(&serde_json::json!({"name": format!("R{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    let resp = from_ip(client().post(s.http("/api/auth/login")))
        .json(&serde_json::json!({"username": "someone", "password": "whatever1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Other endpoints are not limited.
    assert_eq!(
        from_ip(client().get(s.http("/api/rooms")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.set_env("AUTH_RATE_LIMIT_PER_MINUTE", Some("100000"));
    s.restart();
}
