//! Sessions reach open sockets on the fallback (issue 13, item 7), and the core's room rules as
//! this host wires them: logout, refresh-token reuse and session-limit eviction close the
//! member's sockets with 4001, a role change with 4002, a token's expiry with 4001 (the room's
//! deadline); across replicas through Redis. Also: the room's socket caps answered before the
//! upgrade (429), and a room nobody joined (or nobody configured) leaves no storage.

mod common;

use common::*;
use piano_core::identity::{Claims, SigningKey};
use piano_core::proto;
use std::time::Duration;

async fn post(
    r: &Replica,
    path: &str,
    headers: &[(&str, &str)],
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(r.http(path)).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn login(r: &Replica, user: &str) -> serde_json::Value {
    let (status, body) = post(
        r,
        "/api/auth/login",
        &[],
        serde_json::json!({"username": user, "password": "long enough password"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn register(r: &Replica, user: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let (status, body) = post(
        r,
        "/api/auth/register",
        headers,
        serde_json::json!({"username": user, "password": "long enough password"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn access(session: &serde_json::Value) -> String {
    session["access_token"]
        .as_str()
        .expect("access token")
        .to_owned()
}

async fn joined(r: &Replica, room: &str, token: &str) -> Player {
    let mut p = Player::connect(&r.ws_url(room, token))
        .await
        .expect("connect");
    p.join(None).await.expect("join");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_and_role_changes_close_open_sockets() {
    let dir = scratch_dir("reach");
    let r = Replica::start(
        "reach",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("MAX_SESSIONS_PER_ACCOUNT", "2".to_owned()),
            ("ADMIN_USERNAMES", "chief".to_owned()),
            ("ADMIN_BOOTSTRAP_SECRET", "bootstrap".to_owned()),
        ],
    );
    let room = format!("reach-{}", e2e_tests::now_ms());
    let first = register(&r, "member", &[]).await;
    let (guest_token, _) = guest(&r, "Watcher").await;
    let mut watcher = joined(&r, &room, &guest_token).await;

    // Logout (with the refresh secret): that session's socket closes with 4001.
    let mut p = joined(&r, &room, &access(&first)).await;
    let (status, _) = post(
        &r,
        "/api/auth/logout",
        &[],
        serde_json::json!({ "refresh_token": first["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        p.closed(Duration::from_secs(10)).await,
        Some(4001),
        "logout"
    );

    // Refresh-token reuse revokes the session: its socket closes with 4001.
    let second = login(&r, "member").await;
    let mut on_second = joined(&r, &room, &access(&second)).await;
    let (status, _) = post(
        &r,
        "/api/auth/refresh",
        &[],
        serde_json::json!({ "refresh_token": second["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, rotated) = post(
        &r,
        "/api/auth/refresh",
        &[],
        serde_json::json!({ "refresh_token": second["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 401, "{rotated}");
    assert_eq!(
        on_second.closed(Duration::from_secs(10)).await,
        Some(4001),
        "reuse"
    );
    let third = login(&r, "member").await;
    let mut on_third = joined(&r, &room, &access(&third)).await;

    // Session limit 2: two more logins evict the third session; its socket closes with 4001.
    let fourth = login(&r, "member").await;
    let mut on_fourth = joined(&r, &room, &access(&fourth)).await;
    let _fifth = login(&r, "member").await;
    assert_eq!(
        on_third.closed(Duration::from_secs(10)).await,
        Some(4001),
        "evicted"
    );

    // A role change closes every socket of the user with 4002.
    let chief = register(&r, "chief", &[("x-admin-bootstrap", "bootstrap")]).await;
    let resp = reqwest::Client::new()
        .post(r.http("/api/admin/users/user:member/roles"))
        .bearer_auth(access(&chief))
        .json(&serde_json::json!({ "add": ["pro"] }))
        .send()
        .await
        .expect("set roles");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        on_fourth.closed(Duration::from_secs(10)).await,
        Some(4002),
        "roles"
    );

    // Nobody else was touched.
    watcher.send(note(60)).await;
    assert_eq!(watcher.closed(Duration::from_millis(500)).await, None);
    let m = metrics(&r).await;
    let closes: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("piano_session_closes_total ")?.parse().ok())
        .unwrap_or(0);
    assert_eq!(closes, 4, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_ends_its_socket() {
    let dir = scratch_dir("expiry");
    let pem = e2e_tests::random_key_pem();
    let r = Replica::start(
        "expiry",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("JWT_PRIVATE_KEY", pem.clone()),
        ],
    );
    let now = e2e_tests::now_secs();
    let claims = Claims {
        sub: "guest:shortlived".into(),
        name: "Brief".into(),
        roles: vec!["guest".into()],
        iat: now,
        exp: now + 3,
        nbf: None,
        iss: "pianorhythm".into(),
        aud: "pianorhythm".into(),
        sid: None,
        generation: None,
    };
    let token = SigningKey::from_pkcs8_pem(&pem).expect("key").sign(&claims);
    let mut p = joined(&r, "expiry-room", &token).await;
    assert_eq!(p.closed(Duration::from_secs(15)).await, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_replica_closes_the_socket_on_another() {
    let redis = Redis::start();
    let key = e2e_tests::random_key_pem();
    let env = [("REDIS_URL", redis.url()), ("JWT_PRIVATE_KEY", key)];
    let a = Replica::start("reach-a", &env);
    let b = Replica::start("reach-b", &env);
    let room = format!("reach-x-{}", e2e_tests::now_ms());
    // The room runs on A (first player there); the member plays through B (a follower).
    let (guest_token, _) = guest(&a, "Host").await;
    let _host = joined(&a, &room, &guest_token).await;
    let s = register(&a, "roamer", &[]).await;
    let mut on_b = joined(&b, &room, &access(&s)).await;
    let mut on_a = joined(&a, &format!("{room}-2"), &access(&s)).await;
    let (status, _) = post(
        &b,
        "/api/auth/logout",
        &[],
        serde_json::json!({ "refresh_token": s["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(on_b.closed(Duration::from_secs(10)).await, Some(4001));
    assert_eq!(on_a.closed(Duration::from_secs(10)).await, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_socket_caps_answer_before_the_upgrade() {
    let dir = scratch_dir("room-caps");
    let r = Replica::start(
        "room-caps",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("ROOM_SOCKETS_PER_USER", "2".to_owned()),
        ],
    );
    let (token, _) = guest(&r, "Hydra").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(joined(&r, "caps-room", &token).await);
    }
    match tokio_tungstenite::connect_async(r.ws_url("caps-room", &token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                    .expect("JSON error");
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("the third socket is refused: {:?}", other.map(|_| ())),
    }
    // Another room is another count.
    let _elsewhere = joined(&r, "caps-other", &token).await;
}

/// Rows a room has in the standalone store.
fn sqlite_rows(dir: &std::path::Path, room: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("rooms.sqlite3")).expect("open rooms db");
    let count = |table: &str| -> i64 {
        conn.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE room = ?1"),
            [room],
            |r| r.get(0),
        )
        .expect("count")
    };
    count("room_meta") + count("chat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_nobody_joined_or_configured_leave_no_storage() {
    let dir = scratch_dir("no-storage");
    let r = Replica::start("no-storage", &[("DATA_DIR", dir.display().to_string())]);
    let (token, _) = guest(&r, "Prober").await;
    // 20 probes of new names without a Join, and a player who joins and leaves a fresh room.
    for i in 0..20 {
        let p = Player::connect(&r.ws_url(&format!("probe-{i}"), &token))
            .await
            .expect("connect");
        p.close().await;
    }
    let p = joined(&r, "visited", &token).await;
    p.close().await;
    // A room that was configured keeps its settings.
    let mut owner = Player::connect(&r.ws_url("configured", &token))
        .await
        .expect("connect");
    owner
        .join(Some(proto::UpdateSettings {
            color: Some("#102030".into()),
            ..Default::default()
        }))
        .await
        .expect("create");
    owner.close().await;
    // The rooms retire and write what they have: wait until the store settles.
    let probes: Vec<String> = (0..20)
        .map(|i| format!("probe-{i}"))
        .chain(["visited".into()])
        .collect();
    let settled =
        || sqlite_rows(&dir, "configured") > 0 && probes.iter().all(|p| sqlite_rows(&dir, p) == 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !settled() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sqlite_rows(&dir, "configured") > 0,
        "the configured room was saved"
    );
    for room in &probes {
        assert_eq!(sqlite_rows(&dir, room), 0, "{room} left rows behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_leave_no_keys_in_redis() {
    let redis = Redis::start();
    let r = Replica::start(
        "no-keys",
        &[
            ("REDIS_URL", redis.url()),
            ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
        ],
    );
    let (token, _) = guest(&r, "Prober").await;
    for i in 0..10 {
        let p = Player::connect(&r.ws_url(&format!("kprobe-{i}"), &token))
            .await
            .expect("connect");
        p.close().await;
    }
    let p = joined(&r, "kvisited", &token).await;
    p.close().await;
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*probe*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let visited: Vec<String> = redis::cmd("KEYS")
            .arg("*kvisited*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        // Leases go when the rooms retire; nothing else may stay.
        if keys.is_empty() && visited.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {keys:?} {visited:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
