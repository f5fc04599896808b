//! Member accounts on real processes, beyond the shared e2e trials (which `tests/e2e.rs` runs on the
//! standalone fallback and the cluster): accounts and sessions surviving a restart, the
//! session limit and the auth rate limit (standalone); concurrent registrations of one name on
//! two replicas, a member moving between replicas, and the edge's revocation list (Redis);
//! accounts shared with the edge through MongoDB (secantusdb).

mod common;

use common::*;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(url: String, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = client().post(url).json(&body).send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn me(r: &Replica, token: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .get(r.http("/api/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET me");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// 101 if a room socket opens with this token, else the refusal's status.
async fn ws_status(r: &Replica, token: &str) -> u16 {
    let room = format!("members-{}", e2e_tests::now_ms());
    match Player::connect(&r.ws_url(&room, token)).await {
        Ok(p) => {
            p.close().await;
            101
        }
        Err(e) if e.contains("401") => 401,
        Err(e) => panic!("unexpected refusal: {e}"),
    }
}

fn username(tag: &str) -> String {
    format!("{tag}-{}", e2e_tests::now_ms() % 1_000_000_000)
}

async fn register(r: &Replica, name: &str, password: &str) -> (u16, serde_json::Value) {
    post(
        r.http("/api/auth/register"),
        serde_json::json!({ "username": name, "password": password }),
    )
    .await
}

async fn login(r: &Replica, name: &str, password: &str) -> (u16, serde_json::Value) {
    post(
        r.http("/api/auth/login"),
        serde_json::json!({ "username": name, "password": password }),
    )
    .await
}

fn access(v: &serde_json::Value) -> String {
    v["access_token"].as_str().expect("access_token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_accounts_survive_a_restart_and_sessions_are_limited() {
    let dir = scratch_dir("members");
    let key = e2e_tests::random_key_pem();
    let env = vec![
        ("DATA_DIR", dir.display().to_string()),
        ("JWT_PRIVATE_KEY", key.clone()),
        ("MAX_SESSIONS_PER_ACCOUNT", "2".to_owned()),
    ];
    let mut a = Replica::start("members-a", &env);
    let name = username("keep");
    let (status, reg) = register(&a, &name, "restart me please").await;
    assert_eq!(status, 201, "{reg}");
    let refresh = reg["refresh_token"].as_str().unwrap().to_owned();
    let first = access(&reg);
    assert_eq!(ws_status(&a, &first).await, 101);

    // Two more sessions: the limit of 2 ends the oldest (the registration's).
    let (_, second) = login(&a, &name, "restart me please").await;
    assert_eq!(me(&a, &first).await.0, 200);
    let (_, third) = login(&a, &name, "restart me please").await;
    assert_eq!(me(&a, &first).await.0, 401, "the oldest session ended");
    assert_eq!(ws_status(&a, &first).await, 401);
    let (status, body) = post(
        a.http("/api/auth/refresh"),
        serde_json::json!({ "refresh_token": refresh }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_session"))
    );
    assert_eq!(me(&a, &access(&second)).await.0, 200);

    // A new process on the same data: the account, the live sessions and the ended ones.
    assert!(a.terminate().is_some_and(|s| s.success()));
    let b = Replica::start("members-b", &env);
    assert_eq!(me(&b, &access(&third)).await.0, 200, "sessions persist");
    assert_eq!(me(&b, &first).await.0, 401, "ended sessions stay ended");
    let (status, again) = login(&b, &name, "restart me please").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user"]["usertag"], reg["user"]["usertag"]);
    let (status, fresh) = post(
        b.http("/api/auth/refresh"),
        serde_json::json!({ "refresh_token": third["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(me(&b, &access(&third)).await.0, 401, "refreshed away");
    assert_eq!(ws_status(&b, &access(&fresh)).await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_endpoints_share_the_per_ip_rate_limit() {
    let dir = scratch_dir("members-rate");
    let r = Replica::start(
        "members-rate",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("AUTH_RATE_LIMIT_PER_MINUTE", "3".to_owned()),
        ],
    );
    let (status, _) = register(&r, &username("rate"), "rate limited").await;
    assert_eq!(status, 201);
    for _ in 0..2 {
        let (status, _) = login(&r, "nobody-here", "wrong password").await;
        assert_eq!(status, 401);
    }
    let resp = client()
        .post(r.http("/api/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": "a.b.c" }))
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
    assert!((1..=60).contains(&retry));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

fn cluster_env(
    redis: &Redis,
    key: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("REDIS_URL", redis.url()),
        ("JWT_PRIVATE_KEY", key.to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

async fn redis_conn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_accounts_and_sessions_through_redis() {
    let redis = Redis::start();
    let key = e2e_tests::random_key_pem();
    let a = Replica::start("acct-a", &cluster_env(&redis, &key, &[]));
    let b = Replica::start("acct-b", &cluster_env(&redis, &key, &[]));

    // One name, eight concurrent registrations over both replicas: exactly one wins.
    let name = username("race");
    let attempts = (0..8).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        let variant = if i % 4 < 2 {
            name.clone()
        } else {
            name.to_uppercase()
        };
        async move { register(replica, &variant, &format!("password {i}")).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let won: Vec<_> = results.iter().filter(|(s, _)| *s == 201).collect();
    let taken = results
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"]["code"] == "username_taken")
        .count();
    assert_eq!((won.len(), taken), (1, 7), "{results:?}");

    // Registered through one replica, logged in through the other, playing on the first.
    let member = username("roam");
    let (status, reg) = register(&a, &member, "roaming member").await;
    assert_eq!(status, 201, "{reg}");
    let (status, on_b) = login(&b, &member, "roaming member").await;
    assert_eq!(status, 200, "{on_b}");
    assert_eq!(on_b["user"]["usertag"], reg["user"]["usertag"]);
    let token = access(&on_b);
    let mut player = Player::connect(&a.ws_url(&format!("roam-{member}"), &token))
        .await
        .expect("member connects through the other replica");
    assert_eq!(
        player.welcome.you.as_ref().map(|y| y.user_id.clone()),
        Some(format!("user:{member}"))
    );
    player.join(None).await.expect("join");
    player.close().await;

    // Refreshed on A: B refuses the old access token at once, at REST and WebSocket.
    let (status, fresh) = post(
        a.http("/api/auth/refresh"),
        serde_json::json!({ "refresh_token": on_b["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(claims_of(&access(&fresh))["gen"], 2);
    assert_eq!(me(&b, &token).await.0, 401);
    assert_eq!(ws_status(&b, &token).await, 401);
    assert_eq!(me(&b, &access(&fresh)).await.0, 200);

    // Logged out on B: refused on A, and listed for the edge as `pr:revoked:<sid>`.
    let resp = client()
        .post(b.http("/api/auth/logout"))
        .bearer_auth(access(&fresh))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(me(&a, &access(&fresh)).await.0, 401);
    assert_eq!(ws_status(&a, &access(&fresh)).await, 401);
    let sid = claims_of(&token)["sid"].as_str().unwrap().to_owned();
    let mut conn = redis_conn(&redis).await;
    let (listed, ttl): (Option<String>, i64) = redis::pipe()
        .get(format!("pr:revoked:{sid}"))
        .ttl(format!("pr:revoked:{sid}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(listed, Some(format!("user:{member}")));
    assert!((1..=900).contains(&ttl), "{ttl}");

    // Reuse of a rotated-away refresh token (the registration's, after its refresh) on B
    // revokes that session everywhere, and lists it too.
    let (_, rotated) = post(
        a.http("/api/auth/refresh"),
        serde_json::json!({ "refresh_token": reg["refresh_token"] }),
    )
    .await;
    let (status, body) = post(
        b.http("/api/auth/refresh"),
        serde_json::json!({ "refresh_token": reg["refresh_token"] }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_session"))
    );
    assert_eq!(
        me(&a, &access(&rotated)).await.0,
        401,
        "reuse ends the session"
    );
    let reg_sid = claims_of(&access(&reg))["sid"].as_str().unwrap().to_owned();
    let listed: bool = redis::cmd("EXISTS")
        .arg(format!("pr:revoked:{reg_sid}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_holds_across_replicas() {
    let redis = Redis::start();
    let key = e2e_tests::random_key_pem();
    let env = cluster_env(&redis, &key, &[("MAX_SESSIONS_PER_ACCOUNT", "1")]);
    let a = Replica::start("limit-a", &env);
    let b = Replica::start("limit-b", &env);
    let name = username("one");
    let (_, reg) = register(&a, &name, "one at a time").await;
    assert_eq!(me(&b, &access(&reg)).await.0, 200);
    let (_, later) = login(&b, &name, "one at a time").await;
    assert_eq!(me(&a, &access(&later)).await.0, 200);
    assert_eq!(
        me(&a, &access(&reg)).await.0,
        401,
        "the older session ended"
    );
    let sid = claims_of(&access(&reg))["sid"].as_str().unwrap().to_owned();
    let mut conn = redis_conn(&redis).await;
    let listed: bool = redis::cmd("EXISTS")
        .arg(format!("pr:revoked:{sid}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(listed, "an evicted session is listed for the edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_shared_with_the_edge_through_mongodb() {
    use mongodb::bson::{Document, doc};
    let dir = scratch_dir("members-mongo");
    let mongo = MongoServer::start(&dir.join("db"));
    let database = format!("accounts{}", e2e_tests::now_ms());
    let client = mongodb::Client::with_uri_str(mongo.url())
        .await
        .expect("mongo client");
    let db = client.database(&database);

    // An account the edge registered: only in MongoDB, written as the edge's outbox writes it.
    let edge_name = username("Edgy");
    let key = edge_name.to_ascii_lowercase();
    let password = piano_core::password::PasswordHash::with_iterations(
        "registered at the edge",
        b"0123456789abcdef".to_vec(),
        piano_core::password::ACCOUNT_ITERATIONS,
    );
    let edge_doc = serde_json::json!({
        "username": edge_name, "tag": "a1b2c3", "email": null, "password": password,
        "roles": ["member", "pro"], "name": "Edge Player", "color": "#123456", "status": "hi",
        "created_at": 1_700_000_000_000u64, "usertag": format!("{edge_name}#a1b2c3"),
    });
    let op = piano_backends::layout::account(&format!("user:{key}"), edge_doc, e2e_tests::now_ms());
    let piano_backends::outbox::Op::Mongo { filter, update, .. } = op else {
        panic!("accounts go to MongoDB");
    };
    db.collection::<Document>("accounts")
        .update_one(
            mongodb::bson::to_document(&filter).unwrap(),
            mongodb::bson::to_document(&update).unwrap(),
        )
        .upsert(true)
        .await
        .expect("insert the edge's account");

    let env = |data: &str| {
        vec![
            ("DATA_DIR", dir.join(data).display().to_string()),
            ("MONGODB_URL", mongo.url()),
            ("MONGODB_DATABASE", database.clone()),
            ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
        ]
    };
    let first = Replica::start("accounts-mongo-1", &env("one"));
    let (status, body) = login(&first, &edge_name, "not the password").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (status, session) =
        login(&first, &edge_name.to_uppercase(), "registered at the edge").await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user"]["usertag"], format!("{edge_name}#a1b2c3"));
    assert_eq!(
        session["user"]["roles"],
        serde_json::json!(["member", "pro"])
    );
    assert_eq!(claims_of(&access(&session))["name"], "Edge Player");
    let (status, _) = register(&first, &edge_name, "taking the name").await;
    assert_eq!(status, 409, "a name registered at the edge is taken here");

    // Registered here: mirrored in the edge's shape, and a second deployment logs it in.
    let local_name = username("Falla");
    let (status, reg) = register(&first, &local_name, "registered on k8s").await;
    assert_eq!(status, 201, "{reg}");
    let id = format!("user:{}", local_name.to_ascii_lowercase());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let stored = loop {
        if let Some(d) = db
            .collection::<Document>("accounts")
            .find_one(doc! { "_id": &id })
            .await
            .expect("find account")
        {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "account not mirrored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored.get_str("username").ok(), Some(local_name.as_str()));
    assert_eq!(
        stored.get_str("usertag").ok(),
        reg["user"]["usertag"].as_str()
    );
    let pw = stored.get_document("password").expect("password record");
    assert_eq!(
        pw.get("iterations")
            .and_then(|i| i.as_i64().or(i.as_i32().map(i64::from))),
        Some(100_000)
    );
    assert!(stored.contains_key("updated_at") && stored.contains_key("created_at"));

    let second = Replica::start("accounts-mongo-2", &env("two"));
    let (status, there) = login(&second, &local_name, "registered on k8s").await;
    assert_eq!(status, 200, "{there}");
    assert_eq!(there["user"]["usertag"], reg["user"]["usertag"]);
    let profile: serde_json::Value = client_get(&second.http(&format!("/api/users/{id}"))).await;
    assert_eq!(profile["username"], local_name);
}

async fn client_get(url: &str) -> serde_json::Value {
    get_json(url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_auth_rate_limit_is_counted_across_replicas() {
    let redis = Redis::start();
    let key = e2e_tests::random_key_pem();
    let env = cluster_env(&redis, &key, &[("AUTH_RATE_LIMIT_PER_MINUTE", "3")]);
    let a = Replica::start("rate-a", &env);
    let b = Replica::start("rate-b", &env);
    // Fixed one-minute windows (as at the edge): start well inside one.
    let into_minute = e2e_tests::now_ms() % 60_000;
    if into_minute > 50_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - into_minute)).await;
    }
    let window = e2e_tests::now_ms() / 60_000;
    for r in [&a, &b, &a] {
        let (status, _) = login(r, "nobody-here", "wrong password").await;
        assert_eq!(status, 401);
    }
    let (status, body) = login(&b, "nobody-here", "wrong password").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let mut conn = redis_conn(&redis).await;
    let count: u64 = redis::cmd("GET")
        .arg(format!("pr:rate:auth:127.0.0.1:{window}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 4);
}
