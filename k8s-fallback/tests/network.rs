//! The edge's cross-deployment keys, written by the fallback in cluster mode (a real
//! `redis-server`, two replicas): a player in a fallback room is in `pr:online:fallback` and
//! `pr:presence:fallback:<room>`, the room is in `pr:rooms:fallback` (deployment `fallback`), both read back by
//! `GET /api/network/online|rooms` with the edge's JSON, and both go when the players leave or
//! when the replica that ran the room dies and the room starts elsewhere.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn hash(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("HGETALL")
}

/// Polls `check` on the hash until it holds (10 s).
async fn until(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    what: &str,
    check: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = hash(conn, key).await;
        if check(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "{what}: {key} is {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_rooms_and_players_are_in_the_edges_shared_keys() {
    let redis = Redis::start();
    let key = e2e_tests::random_key_pem();
    // A player lost with a dead holder keeps her place for the resume grace period, then
    // leaves: a short one keeps the test's waits short.
    let env = vec![
        ("REDIS_URL", redis.url()),
        ("JWT_PRIVATE_KEY", key),
        ("RESUME_GRACE_MS", "1000".to_owned()),
    ];
    let mut a = Replica::start("net-a", &env);
    let b = Replica::start("net-b", &env);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    let room = format!("shared-{}", e2e_tests::now_ms());
    let (ta, alice) = guest(&a, "Alice").await;
    let (tb, bob) = guest(&b, "Bob").await;
    let mut pa = Player::connect(&a.ws_url(&room, &ta)).await.expect("Alice");
    pa.join(None).await.expect("Alice joins");
    let mut pb = Player::connect(&b.ws_url(&room, &tb)).await.expect("Bob");
    pb.join(None).await.expect("Bob joins");

    let online = until(&mut conn, "pr:online:fallback", "both online", |h| {
        h.contains_key(&format!("{alice} {room}")) && h.contains_key(&format!("{bob} {room}"))
    })
    .await;
    let entry: serde_json::Value =
        serde_json::from_str(&online[&format!("{alice} {room}")]).unwrap();
    assert_eq!(
        (
            entry["room"].as_str(),
            entry["name"].as_str(),
            entry["deployment"].as_str()
        ),
        (Some(room.as_str()), Some("Alice"), Some("fallback"))
    );
    let presence = hash(&mut conn, &format!("pr:presence:fallback:{room}")).await;
    assert!(
        presence.contains_key(&alice) && presence.contains_key(&bob),
        "{presence:?}"
    );
    let rooms = until(&mut conn, "pr:rooms:fallback", "room listed with 2", |h| {
        h.get(&room).is_some_and(|v| v.contains("\"players\":2"))
    })
    .await;
    let listed: serde_json::Value = serde_json::from_str(&rooms[&room]).unwrap();
    assert_eq!(listed["deployment"], "fallback");

    // The edge's endpoints, on either replica.
    for r in [&a, &b] {
        let body = get_json(&r.http("/api/network/online")).await;
        let users: Vec<&str> = body["online"]
            .as_array()
            .expect("online list")
            .iter()
            .filter(|u| u["room"] == room.as_str())
            .filter_map(|u| u["user_id"].as_str())
            .collect();
        assert!(
            users.contains(&alice.as_str()) && users.contains(&bob.as_str()),
            "{body}"
        );
        let body = get_json(&r.http("/api/network/rooms")).await;
        let here = body["rooms"]
            .as_array()
            .expect("rooms list")
            .iter()
            .find(|x| x["name"] == room.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (here["players"].as_u64(), here["deployment"].as_str()),
            (Some(2), Some("fallback")),
            "{body}"
        );
    }

    // Bob leaves: he is gone, the room shows one player.
    pb.close().await;
    until(&mut conn, "pr:online:fallback", "Bob gone", |h| {
        !h.contains_key(&format!("{bob} {room}")) && h.contains_key(&format!("{alice} {room}"))
    })
    .await;
    until(&mut conn, "pr:rooms:fallback", "room with 1", |h| {
        h.get(&room).is_some_and(|v| v.contains("\"players\":1"))
    })
    .await;

    // Alice leaves: the room and the presence go.
    pa.close().await;
    until(&mut conn, "pr:online:fallback", "Alice gone", |h| {
        !h.keys().any(|k| k.ends_with(&format!(" {room}")))
    })
    .await;
    until(&mut conn, "pr:rooms:fallback", "room unlisted", |h| {
        !h.contains_key(&room)
    })
    .await;
    let presence = hash(&mut conn, &format!("pr:presence:fallback:{room}")).await;
    assert!(presence.is_empty(), "{presence:?}");

    // The replica running a room dies without a goodbye: when the room starts on the other
    // one, what the dead one wrote is cleared (Alice, who does not resume, after the grace).
    let room2 = format!("orphan-{}", e2e_tests::now_ms());
    let mut pa = Player::connect(&a.ws_url(&room2, &ta))
        .await
        .expect("Alice");
    pa.join(None).await.expect("Alice joins");
    let mut pb = Player::connect(&b.ws_url(&room2, &tb)).await.expect("Bob");
    pb.join(None).await.expect("Bob joins");
    until(&mut conn, "pr:online:fallback", "both in room 2", |h| {
        h.contains_key(&format!("{alice} {room2}")) && h.contains_key(&format!("{bob} {room2}"))
    })
    .await;
    a.kill();
    assert_eq!(pb.closed(Duration::from_secs(10)).await, Some(1012));
    let mut pb = Player::connect(&b.ws_url(&room2, &tb))
        .await
        .expect("Bob again");
    pb.join(None).await.expect("Bob rejoins");
    until(&mut conn, "pr:online:fallback", "only Bob in room 2", |h| {
        !h.contains_key(&format!("{alice} {room2}")) && h.contains_key(&format!("{bob} {room2}"))
    })
    .await;
    pb.close().await;
    drop(pa);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_network_endpoints_say_not_configured() {
    let dir = scratch_dir("network");
    let r = Replica::start("net-solo", &[("DATA_DIR", dir.display().to_string())]);
    for path in ["/api/network/rooms", "/api/network/online"] {
        let resp = reqwest::get(r.http(path)).await.unwrap();
        assert_eq!(resp.status(), 503);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_configured");
    }
}
