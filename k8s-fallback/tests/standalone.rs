//! Standalone mode (no Redis, zero configuration beyond a data directory): rooms persist in
//! SQLite across a restart, SIGTERM drains with close code 1012 (reconnect), and the operations
//! endpoints answer. Real processes and real WebSocket clients.

mod common;

use common::*;
use piano_core::proto;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_survives_a_restart_and_sigterm_drains_with_1012() {
    let dir = scratch_dir("standalone");
    // No JWT_PRIVATE_KEY: the server makes a development key and keeps it in DATA_DIR, so
    // tokens stay valid across the restart too.
    let env = vec![("DATA_DIR", dir.display().to_string())];
    let mut server = Replica::start("solo", &env);
    let room = format!("solo-{}", e2e_tests::now_ms());
    let (owner_token, owner_user) = guest(&server, "Owner").await;
    let (guest_token, _) = guest(&server, "Guest").await;

    let mut owner = Player::connect(&server.ws_url(&room, &owner_token))
        .await
        .expect("connect");
    owner
        .join(Some(proto::UpdateSettings {
            max_players: Some(9),
            color: Some("#0a0b0c".into()),
            ..Default::default()
        }))
        .await
        .expect("create");
    let mut other = Player::connect(&server.ws_url(&room, &guest_token))
        .await
        .expect("connect");
    other.join(None).await.expect("join");
    owner.send(note(61)).await;
    hears(&mut other, &owner.id()).await;
    owner.send(chat("kept on disk")).await;
    sees_chat(&mut other, "kept on disk").await;

    // Operations endpoints.
    let metrics = metrics(&server).await;
    for line in [
        "piano_connections 2",
        "piano_rooms_awake 1",
        "piano_relay_latency_seconds_count",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    let jwks = get_json(&server.http("/.well-known/jwks.json")).await;
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let listed = get_json(&server.http("/api/rooms")).await;
    assert!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|r| r["name"] == room.as_str() && r["players"] == 2)),
        "the room is listed: {listed}"
    );
    // Logs are JSON lines.
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(
        log.lines()
            .filter(|l| !l.is_empty())
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "every log line is JSON:\n{log}"
    );

    // SIGTERM: both players are told to reconnect (1012), and the process exits cleanly.
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    assert_eq!(owner.closed(Duration::from_secs(10)).await, Some(1012));
    assert_eq!(other.closed(Duration::from_secs(10)).await, Some(1012));
    let (server, status) = exit.await.expect("terminate");
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit after drain: {status:?}"
    );
    drop(server);

    // A new process on the same data directory has the room as it was.
    let server = Replica::start("solo", &env);
    let mut owner = Player::connect(&server.ws_url(&room, &owner_token))
        .await
        .expect("reconnect");
    let joined = owner.join(None).await.expect("rejoin");
    let s = joined.settings.expect("settings");
    assert_eq!((s.max_players, s.color.as_str()), (9, "#0a0b0c"));
    let chat: Vec<&str> = joined
        .chat_history
        .iter()
        .map(|c| c.text.as_str())
        .collect();
    assert_eq!(chat, ["kept on disk"]);
    assert_eq!(
        joined.ownership.map(|o| o.owner_user_id),
        Some(owner_user),
        "the crown is back"
    );
    owner.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_json_with_the_edge_codes() {
    let dir = scratch_dir("refusals");
    let web = dir.join("web");
    std::fs::create_dir_all(&web).expect("web dir");
    std::fs::write(
        web.join("index.html"),
        "<!doctype html><title>piano</title>",
    )
    .expect("index");
    let server = Replica::start(
        "refusals",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("STATIC_DIR", web.display().to_string()),
        ],
    );
    // The browser client is served from STATIC_DIR; unknown files are JSON 404s.
    let index = reqwest::get(server.http("/")).await.expect("GET /");
    assert_eq!(index.status().as_u16(), 200);
    assert!(
        index
            .text()
            .await
            .unwrap_or_default()
            .contains("<title>piano</title>")
    );
    let missing = reqwest::get(server.http("/nope.js"))
        .await
        .expect("GET /nope.js");
    assert_eq!(missing.status().as_u16(), 404);
    let http = reqwest::Client::new();
    let cases: [(reqwest::RequestBuilder, u16, &str); 6] = [
        (
            http.get(server.http("/api/rooms/lobby/ws")),
            426,
            "upgrade_required",
        ),
        (
            http.get(server.http("/api/rooms/%FF/ws")),
            400,
            "invalid_room_name",
        ),
        (
            http.post(server.http("/api/auth/guest")).body("nope"),
            400,
            "invalid_json",
        ),
        (
            http.post(server.http("/api/auth/guest"))
                .body(vec![b' '; 5000]),
            413,
            "body_too_large",
        ),
        (
            http.delete(server.http("/api/rooms")),
            405,
            "method_not_allowed",
        ),
        (http.get(server.http("/api/nothing")), 404, "not_found"),
    ];
    for (req, status, code) in cases {
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), status);
        let body: serde_json::Value = resp.json().await.expect("JSON error body");
        assert_eq!(body["error"]["code"], code);
    }
    // Upgrades without a valid token, or without our subprotocol, are refused before the room.
    let upgrade = |url: String, protocol: Option<String>| {
        let mut req = http
            .get(url)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(p) = protocol {
            req = req.header("sec-websocket-protocol", p);
        }
        req.send()
    };
    let r = upgrade(server.http("/api/rooms/lobby/ws?token=garbage"), None)
        .await
        .expect("upgrade");
    assert_eq!(r.status().as_u16(), 401);
    let r = upgrade(
        server.http("/api/rooms/lobby/ws"),
        Some("bearer.x".to_owned()),
    )
    .await
    .expect("upgrade");
    assert_eq!(r.status().as_u16(), 400);
    // A browser's subprotocol token works and only pianorhythm.v1 is echoed.
    let (token, _) = guest(&server, "Browser").await;
    let r = upgrade(
        server.http("/api/rooms/lobby/ws"),
        Some(format!("pianorhythm.v1, bearer.{token}")),
    )
    .await
    .expect("upgrade");
    assert_eq!(r.status().as_u16(), 101);
    assert_eq!(
        r.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("pianorhythm.v1")
    );
}

/// A player who stops reading fills only its own outbound queue and is closed (counted in
/// `piano_slow_consumer_closes_total`); the room and other players carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_who_stops_reading_is_closed_not_waited_for() {
    use futures_util::{SinkExt, StreamExt};
    use piano_core::proto::{ClientMessage, client_message};
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;

    let dir = scratch_dir("slow");
    let server = Replica::start(
        "slow",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("OUTBOUND_QUEUE_FRAMES", "16".to_owned()),
        ],
    );
    let room = format!("slow-{}", e2e_tests::now_ms());
    let (token, _) = guest(&server, "Sloth").await;
    // A small receive window, so the server's socket fills quickly once we stop reading.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket
        .connect(([127, 0, 0, 1], server.port).into())
        .await
        .expect("tcp connect");
    let (mut sloth, _) = tokio_tungstenite::client_async(server.ws_url(&room, &token), stream)
        .await
        .expect("websocket");
    let (other_token, _) = guest(&server, "Other").await;
    let mut other = Player::connect(&server.ws_url(&room, &other_token))
        .await
        .expect("connect");

    // Ask for Pongs (one per Ping) without ever reading them.
    let ping = ClientMessage {
        msg: Some(client_message::Msg::Ping(piano_core::proto::Ping {
            client_time: 1.0,
        })),
        ..Default::default()
    }
    .encode_to_vec();
    let closes = || async {
        let m = metrics(&server).await;
        m.lines()
            .find_map(|l| {
                l.strip_prefix("piano_slow_consumer_closes_total ")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let mut sent = 0;
    while closes().await == 0 {
        assert!(
            sent < 2_000_000,
            "the server never gave up on a reader that stopped reading"
        );
        for _ in 0..2000 {
            if sloth
                .feed(Message::Binary(ping.clone().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = sloth.flush().await;
        sent += 2000;
    }
    // The connection ends (after whatever was already in flight).
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(Ok(_)) = sloth.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the slow connection was closed");
    // The room did not wait for it: another player still gets answers at once.
    other
        .send(client_message::Msg::Ping(piano_core::proto::Ping {
            client_time: 7.0,
        }))
        .await;
    other
        .expect("pong", |m| match m {
            piano_core::proto::server_message::Msg::Pong(p) if p.client_time == 7.0 => Some(()),
            _ => None,
        })
        .await;
    eprintln!("slow consumer closed after about {sent} unread pongs");
}

/// A frame far over the limit is refused by the WebSocket layer before it is buffered: the
/// connection ends (close 1009, or a reset while the client is still sending) and the server
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_frame_ends_the_connection_and_nothing_else() {
    use futures_util::SinkExt;
    let dir = scratch_dir("huge");
    let server = Replica::start("huge", &[("DATA_DIR", dir.display().to_string())]);
    let (token, _) = guest(&server, "Big").await;
    let url = server.ws_url("huge", &token);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0u8; 4 << 20].into(),
        ))
        .await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                    return f.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the connection ends");
    assert!(matches!(ended, None | Some(1009)), "closed with {ended:?}");
    let mut p = Player::connect(&url)
        .await
        .expect("the server still serves");
    p.join(None).await.expect("join");
}
