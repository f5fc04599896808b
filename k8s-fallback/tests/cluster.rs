//! The must-show, with real processes on loopback: a real `redis-server` and three
//! `k8s-fallback` replicas. Players of one room spread over the three replicas hear each other;
//! then the lease holder is killed with SIGKILL mid-session and every player is back in the
//! same room within 5 s, with its settings, owner (crown) and chat history.

mod common;

use common::*;
use piano_core::proto::{self, client_message as cm, server_message::Msg};
use std::time::{Duration, Instant};

/// The recovery deadline the issue sets.
const RECOVERY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_room_and_survive_kill_9_of_the_lease_holder() {
    let redis = Redis::start();
    let env = vec![
        ("REDIS_URL", redis.url()),
        ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
        ("DATA_DIR", scratch_dir("cluster").display().to_string()),
    ];
    let mut replicas = vec![
        Replica::start("a", &env),
        Replica::start("b", &env),
        Replica::start("c", &env),
    ];
    let room = format!("jam-{}", e2e_tests::now_ms());

    // Tokens from different replicas: all replicas share the key, so any token works anywhere.
    let (owner_token, owner_user) = guest(&replicas[0], "Owner").await;
    let (bea_token, _) = guest(&replicas[1], "Bea").await;
    let (cy_token, _) = guest(&replicas[2], "Cy").await;
    let tokens = [&owner_token, &bea_token, &cy_token];

    // The owner creates the room on replica a (which takes the lease), Bea joins through b,
    // Cy through c.
    let mut players = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut p = Player::connect(&replicas[i].ws_url(&room, token))
            .await
            .expect("connect");
        let create = (i == 0).then(|| proto::UpdateSettings {
            max_players: Some(7),
            color: Some("#123456".into()),
            ..Default::default()
        });
        let joined = p.join(create).await.expect("join");
        if i == 0 {
            let own = joined.ownership.expect("ownership");
            assert_eq!(own.owner_user_id, owner_user, "the creator holds the crown");
        }
        players.push(p);
    }

    // Everyone hears everyone, whichever replica each is on.
    for sender in 0..3 {
        let id = players[sender].id();
        players[sender].send(note(60 + sender as u32)).await;
        for listener in (0..3).filter(|l| *l != sender) {
            let batch = hears(&mut players[listener], &id).await;
            assert_eq!(batch.events.len(), 1);
        }
    }
    // Chat from two replicas and a settings change by the owner, seen by all.
    players[0].send(chat("before the crash")).await;
    for p in players.iter_mut() {
        sees_chat(p, "before the crash").await;
    }
    players[2].send(chat("me too")).await;
    for p in players.iter_mut() {
        sees_chat(p, "me too").await;
    }
    players[0]
        .send(cm::Msg::UpdateSettings(proto::UpdateSettings {
            color: Some("#abcdef".into()),
            ..Default::default()
        }))
        .await;
    for p in players.iter_mut() {
        p.expect("settings", |m| match m {
            Msg::SettingsChanged(s) => s
                .settings
                .as_ref()
                .filter(|s| s.color == "#abcdef")
                .map(|_| ()),
            _ => None,
        })
        .await;
    }

    // A second room on the same replica, whose only player will not come back.
    let lonely = format!("lonely-{}", e2e_tests::now_ms());
    let (lonely_token, _) = guest(&replicas[0], "Lonely").await;
    let mut loner = Player::connect(&replicas[0].ws_url(&lonely, &lonely_token))
        .await
        .expect("connect");
    loner.join(None).await.expect("join");

    // Who runs the room? Any replica can say.
    let info = get_json(&replicas[2].http(&format!("/api/rooms/{room}"))).await;
    let holder_id = info["served_by"].as_str().expect("served_by").to_owned();
    let holder = replicas
        .iter()
        .position(|r| r.id == holder_id)
        .expect("holder is one of ours");
    assert_eq!(
        holder, 0,
        "the replica where the room was created holds its lease"
    );

    // Room state is written to Redis asynchronously: wait until this session's writes landed,
    // as they would have on a server that had been running for more than a moment.
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (chat, state): (Vec<String>, Option<String>) = redis::pipe()
            .lrange(format!("piano:room:{room}:chat"), 0, -1)
            .get(format!("piano:room:{room}:state"))
            .query_async(&mut conn)
            .await
            .expect("redis read");
        if chat.len() == 2 && state.is_some_and(|s| s.contains("#abcdef")) {
            break;
        }
        assert!(Instant::now() < deadline, "room state never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Relay latency so far, as the replicas measured it (printed for the record only).
    for r in &replicas {
        let metrics = metrics(r).await;
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (sum, count) = (
            value("piano_relay_latency_seconds_sum "),
            value("piano_relay_latency_seconds_count "),
        );
        eprintln!(
            "relay latency on {}: {count} broadcasts, mean {:.3} ms",
            r.name,
            if count > 0.0 {
                sum / count * 1000.0
            } else {
                0.0
            }
        );
    }

    // kill -9 the lease holder, mid-session.
    replicas[holder].kill();
    let killed_at = Instant::now();

    // Every player notices (its socket ends, or its replica tells it to reconnect: 1012) and
    // reconnects with the same token: players of the dead replica through the next one.
    let ports: Vec<String> = (0..3)
        .map(|i| {
            let target = if i == holder { (i + 1) % 3 } else { i };
            replicas[target].ws_url(&room, tokens[i])
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, mut p) in players.into_iter().enumerate() {
        let url = ports[i].clone();
        tasks.push(tokio::spawn(async move {
            let code = p.closed(Duration::from_secs(10)).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                assert!(
                    Instant::now() < deadline,
                    "player {i} could not get back in"
                );
                match Player::connect(&url).await {
                    Ok(mut p) => match p.join(None).await {
                        Ok(joined) => return (i, code, killed_at.elapsed(), p, joined),
                        Err(e) => eprintln!("player {i}: {e}; retrying"),
                    },
                    Err(e) => eprintln!("player {i}: {e}; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.expect("player task"));
    }
    back.sort_by_key(|b| b.0);
    let slowest = back.iter().map(|b| b.2).max().unwrap_or_default();
    for (i, code, took, _, _) in &back {
        eprintln!(
            "failover: player {i} saw close {code:?} and was back in the room after {took:?}"
        );
    }
    eprintln!("failover: all players back in {slowest:?} (deadline {RECOVERY:?})");
    for (i, code, ..) in &back {
        if *i != holder {
            assert_eq!(
                *code,
                Some(1012),
                "player {i} on a surviving replica is told to reconnect"
            );
        }
    }
    assert!(
        slowest < RECOVERY,
        "players took {slowest:?} to get back (limit {RECOVERY:?})"
    );

    // Same room: settings (creation and later change), chat history, and the owner's crown.
    for (i, _, _, _, joined) in &back {
        let s = joined.settings.as_ref().expect("settings");
        assert_eq!(s.max_players, 7, "player {i}: capacity set at creation");
        assert_eq!(s.color, "#abcdef", "player {i}: color changed mid-session");
        let chat: Vec<&str> = joined
            .chat_history
            .iter()
            .map(|c| c.text.as_str())
            .collect();
        assert_eq!(
            chat,
            ["before the crash", "me too"],
            "player {i}: chat history"
        );
    }
    let owner_joined = &back[0].4;
    assert_eq!(
        owner_joined
            .ownership
            .as_ref()
            .map(|o| o.owner_user_id.as_str()),
        Some(owner_user.as_str()),
        "the owner is owner again after the failover"
    );

    // And they still hear each other, across the two remaining replicas.
    let mut players: Vec<Player> = back.into_iter().map(|b| b.3).collect();
    let owner_id = players[0].id();
    players[0].send(note(72)).await;
    for p in players.iter_mut().skip(1) {
        hears(p, &owner_id).await;
    }

    // The room whose holder died and whose player never came back leaves the list (the
    // survivors sweep entries of rooms nobody holds a lease for); the live room stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = get_json(&replicas[1].http("/api/rooms")).await;
        let names: Vec<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        if !names.contains(&lonely.as_str()) {
            assert!(
                names.contains(&room.as_str()),
                "the live room is still listed: {names:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lonely} is still listed: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(loner);
    for p in players {
        p.close().await;
    }
    drop(replicas);
}

/// SIGTERM (a rolling update, a scale-in) of the replica running a room: players are told to
/// reconnect (1012), the room is saved and its lease released, and another replica runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_lease_holder_hands_the_room_over() {
    let redis = Redis::start();
    let env = vec![
        ("REDIS_URL", redis.url()),
        ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
        // A long lease: the handover must come from the drain releasing it, not from expiry.
        ("LEASE_TTL_MS", "30000".to_owned()),
    ];
    let mut a = Replica::start("drain-a", &env);
    let b = Replica::start("drain-b", &env);
    let room = format!("handover-{}", e2e_tests::now_ms());
    let (owner_token, owner_user) = guest(&a, "Owner").await;
    let (guest_token, _) = guest(&b, "Guest").await;

    let mut owner = Player::connect(&a.ws_url(&room, &owner_token))
        .await
        .expect("connect");
    owner.join(None).await.expect("join");
    let mut other = Player::connect(&b.ws_url(&room, &guest_token))
        .await
        .expect("connect");
    other.join(None).await.expect("join");
    owner.send(chat("saved on the way out")).await;
    sees_chat(&mut other, "saved on the way out").await;

    let term = tokio::task::spawn_blocking(move || {
        let status = a.terminate();
        (a, status)
    });
    assert_eq!(owner.closed(Duration::from_secs(10)).await, Some(1012));
    assert_eq!(other.closed(Duration::from_secs(10)).await, Some(1012));
    let (_a, status) = term.await.expect("terminate");
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );

    // Both come back through b, which takes the released lease (well before its 30 s TTL).
    let started = Instant::now();
    let mut owner = Player::connect(&b.ws_url(&room, &owner_token))
        .await
        .expect("reconnect");
    let joined = owner.join(None).await.expect("rejoin");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the lease was released, not left to expire"
    );
    let chat: Vec<&str> = joined
        .chat_history
        .iter()
        .map(|c| c.text.as_str())
        .collect();
    assert_eq!(chat, ["saved on the way out"]);
    assert_eq!(joined.ownership.map(|o| o.owner_user_id), Some(owner_user));
    let info = get_json(&b.http(&format!("/api/rooms/{room}"))).await;
    assert_eq!(info["served_by"].as_str(), Some(b.id.as_str()));
    owner.close().await;
}

/// Members' sessions that the edge ended (logout) are marked in the shared Redis
/// (`pr:revoked:<sid>`, `piano_backends::layout`): the fallback refuses their tokens too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_sessions_ended_at_the_edge_are_refused() {
    use piano_core::identity::{Claims, SigningKey};
    let redis = Redis::start();
    let pem = e2e_tests::random_key_pem();
    let replica = Replica::start(
        "sessions",
        &[("REDIS_URL", redis.url()), ("JWT_PRIVATE_KEY", pem.clone())],
    );
    let now = e2e_tests::now_secs();
    let sid = format!("s{}", e2e_tests::now_ms());
    let claims = Claims {
        sub: "user:ada".into(),
        name: "Ada".into(),
        roles: vec!["member".into()],
        iat: now,
        exp: now + 900,
        nbf: None,
        iss: "pianorhythm".into(),
        aud: "pianorhythm".into(),
        sid: Some(sid.clone()),
        generation: Some(1),
    };
    let token = SigningKey::from_pkcs8_pem(&pem).expect("key").sign(&claims);
    let me = || async {
        reqwest::Client::new()
            .get(replica.http("/api/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /api/users/me")
            .status()
            .as_u16()
    };
    assert_eq!(me().await, 200, "a live member session is accepted");
    let url = replica.ws_url("members", &token);
    Player::connect(&url)
        .await
        .expect("a live session connects")
        .close()
        .await;

    // The edge's logout writes this key (through its outbox) into the shared Redis.
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("SET")
        .arg(format!("pr:revoked:{sid}"))
        .arg("user:ada")
        .arg("EX")
        .arg(900)
        .query_async::<()>(&mut conn)
        .await
        .expect("SET revoked");
    assert_eq!(
        me().await,
        401,
        "an ended session's token is refused at REST"
    );
    let refused = Player::connect(&url).await;
    assert!(refused.is_err(), "and at the WebSocket upgrade");
}

/// Redis goes away mid-session and comes back (with its append-only file): the replica stops
/// serving the room rather than run it unleased (players get 1012), is not ready meanwhile, and
/// players who reconnect once Redis is back find the room as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_interrupts_rooms_and_they_come_back() {
    let dir = scratch_dir("redis-restart");
    let port = free_port();
    let redis = Redis::start_on(port, Some(&dir));
    let env = vec![
        ("REDIS_URL", redis.url()),
        ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
    ];
    let replica = Replica::start("outage", &env);
    let room = format!("outage-{}", e2e_tests::now_ms());
    let (token, user) = guest(&replica, "Owner").await;
    let url = replica.ws_url(&room, &token);
    let mut owner = Player::connect(&url).await.expect("connect");
    owner
        .join(Some(proto::UpdateSettings {
            color: Some("#0f0f0f".into()),
            ..Default::default()
        }))
        .await
        .expect("create");
    owner.send(chat("before the outage")).await;
    sees_chat(&mut owner, "before the outage").await;
    // Give the room's writer a moment to reach Redis (appendfsync always keeps it from then on).
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop(redis);
    assert_eq!(
        owner.closed(Duration::from_secs(10)).await,
        Some(1012),
        "without Redis the room cannot keep its lease: players are told to reconnect"
    );
    let ready = get_json(&replica.http("/readyz")).await;
    assert_eq!(ready["error"]["code"], "not_ready", "{ready}");

    let _redis = Redis::start_on(port, Some(&dir));
    let deadline = Instant::now() + Duration::from_secs(20);
    let joined = loop {
        assert!(
            Instant::now() < deadline,
            "could not get back in after Redis returned"
        );
        if let Ok(mut p) = Player::connect(&url).await
            && let Ok(j) = p.join(None).await
        {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(joined.settings.map(|s| s.color), Some("#0f0f0f".into()));
    let chat: Vec<&str> = joined
        .chat_history
        .iter()
        .map(|c| c.text.as_str())
        .collect();
    assert_eq!(chat, ["before the outage"]);
    assert_eq!(joined.ownership.map(|o| o.owner_user_id), Some(user));
}
