//! The basics on every target: guest tokens and the JWKS, the WebSocket upgrade's checks,
//! join/relay/ping/leave, malformed frames, room isolation, hibernation (edge), and the browser
//! client in Chromium (playing together; resuming after a drop).

use crate::*;
use e2e_tests::proto::{ErrorCode, client_message, server_message};
use piano_core::identity::Verifier;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn json_of(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn guest_token_is_an_eddsa_jwt_verifiable_with_the_jwks(s: &Server) {
    let (status, body) = json_of(
        http()
            .post(s.http("/api/auth/guest"))
            .json(&serde_json::json!({"name": "  Ada 🎹 "}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["user"]["name"], "Ada 🎹", "name is trimmed");

    let (status, jwks) = json_of(
        http()
            .get(s.http("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (
            jwk["kty"].as_str(),
            jwk["crv"].as_str(),
            jwk["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );

    // Header: EdDSA with the kid the JWKS publishes.
    let header = jsonwebtoken_header(token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], jwk["kid"]);

    // Verify with nothing but the published key.
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap();
    let verifier = Verifier::new("pianorhythm", "pianorhythm").with_key(x.try_into().unwrap());
    let claims = verifier
        .verify(token, now_secs())
        .expect("token verifies with the JWKS key");
    assert!(claims.sub.starts_with("guest:"), "{}", claims.sub);
    assert_eq!(claims.roles, ["guest"]);
    assert_eq!(claims.name, "Ada 🎹");
    assert!(claims.iat <= now_secs() + 5 && claims.exp > claims.iat);
    assert_eq!(body["user"]["id"].as_str(), Some(claims.sub.as_str()));
}

fn jsonwebtoken_header(token: &str) -> serde_json::Value {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

pub async fn guest_token_refuses_bad_names(s: &Server) {
    let long = "x".repeat(41);
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (
            http()
                .post(s.http("/api/auth/guest"))
                .json(&serde_json::json!({"name": ""})),
            "invalid_name",
        ),
        (
            http()
                .post(s.http("/api/auth/guest"))
                .json(&serde_json::json!({"name": "   "})),
            "invalid_name",
        ),
        (
            http()
                .post(s.http("/api/auth/guest"))
                .json(&serde_json::json!({"name": long})),
            "invalid_name",
        ),
        (
            http()
                .post(s.http("/api/auth/guest"))
                .json(&serde_json::json!({"name": "bell\u{7}"})),
            "invalid_name",
        ),
        (
            http()
                .post(s.http("/api/auth/guest"))
                .json(&serde_json::json!({"name": "a\u{202E}b"})),
            "invalid_name",
        ),
        (
            http()
                .post(s.http("/api/auth/guest"))
                .json(&serde_json::json!({"nick": "Ada"})),
            "invalid_json",
        ),
        (
            http().post(s.http("/api/auth/guest")).body("{not json"),
            "invalid_json",
        ),
    ];
    for (req, code) in cases {
        let (status, body) = json_of(req.send().await.unwrap()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, body) = json_of(http().get(s.http("/api/auth/guest")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = json_of(http().get(s.http("/nope")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

pub async fn upgrade_refuses_missing_and_bad_tokens(s: &Server) {
    let url = s.ws_url(&unique("auth"));
    let mut expired = s.claims("guest:old", "Old");
    expired.iat -= 7200;
    expired.exp = now_secs() - 60;
    let other_key = piano_core::identity::SigningKey::from_pkcs8_pem(&random_key_pem()).unwrap();
    let good = s.sign(&s.claims("guest:ok", "Ok"));
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    let mut wrong_aud = s.claims("guest:aud", "Aud");
    wrong_aud.aud = "someone-else".into();

    let cases = [
        ("no token", String::new()),
        ("garbage", "not-a-jwt".to_owned()),
        ("expired", s.sign(&expired)),
        ("other key", other_key.sign(&s.claims("guest:x", "X"))),
        ("bad signature", tampered),
        ("wrong audience", s.sign(&wrong_aud)),
    ];
    for (what, token) in cases {
        let by_query = if token.is_empty() {
            url.clone()
        } else {
            format!("{url}?token={token}")
        };
        let refused = refused_upgrade(&by_query, &[]).await;
        assert_eq!(refused.status, 401, "{what} (query): {:?}", refused.body);
        assert_eq!(refused.body["error"]["code"], "unauthorized", "{what}");
        if !token.is_empty() {
            let proto = format!("pianorhythm.v1, bearer.{token}");
            let refused = refused_upgrade(&url, &[("sec-websocket-protocol", &proto)]).await;
            assert_eq!(
                refused.status, 401,
                "{what} (subprotocol): {:?}",
                refused.body
            );
        }
    }
    // The valid token gets in.
    Client::connect(&format!("{url}?token={good}"), &[])
        .await
        .expect("valid token connects");
}

pub async fn upgrade_refuses_bad_room_names_and_plain_requests(s: &Server) {
    let token = s.sign(&s.claims("guest:names", "Names"));
    let long = "r".repeat(65);
    for raw in [
        "%20lobby",
        "lobby%20",
        long.as_str(),
        "a%00b",
        "bad%ZZ",
        "%FF",
    ] {
        let url = format!(
            "{}/api/rooms/{raw}/ws?token={token}",
            s.http("").replace("http", "ws")
        );
        let refused = refused_upgrade(&url, &[]).await;
        assert_eq!(refused.status, 400, "{raw}: {:?}", refused.body);
        assert_eq!(refused.body["error"]["code"], "invalid_room_name");
    }
    // Unicode names are fine.
    Client::connect(&format!("{}?token={token}", s.ws_url("Jazz café ♪")), &[])
        .await
        .expect("unicode room");
    // The WebSocket endpoint without an upgrade.
    let (status, body) = json_of(
        http()
            .get(s.http("/api/rooms/lobby/ws"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (426, Some("upgrade_required"))
    );
}

pub async fn browser_subprotocol_token_is_accepted_and_echoed(s: &Server) {
    let token = s.guest_token("Browser").await;
    let url = s.ws_url(&unique("proto"));
    let proto = format!("pianorhythm.v1, bearer.{token}");
    let mut c = Client::connect(&url, &[("sec-websocket-protocol", &proto)])
        .await
        .expect("connects");
    assert_eq!(
        c.subprotocol.as_deref(),
        Some("pianorhythm.v1"),
        "the protocol is echoed, never the token"
    );
    assert_eq!(c.welcome.you.as_ref().unwrap().name, "Browser");
    c.join().await;
    // Offering only the token (no pianorhythm.v1) is a clear 400, not a failed handshake.
    let refused = refused_upgrade(
        &url,
        &[("sec-websocket-protocol", &format!("bearer.{token}"))],
    )
    .await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (400, Some("bad_subprotocol"))
    );
}

pub async fn client_identity_headers_are_ignored(s: &Server) {
    let token = s.sign(&s.claims("guest:honest", "Honest"));
    let forged = piano_core::identity::Identity {
        user_id: "admin:root".into(),
        name: "Admin".into(),
        roles: vec!["admin".into()],
        ..Default::default()
    }
    .to_header();
    let url = format!("{}?token={token}", s.ws_url(&unique("forge")));
    let c = Client::connect(
        &url,
        &[("x-piano-identity", &forged), ("x-piano-room", "elsewhere")],
    )
    .await
    .unwrap();
    let you = c.welcome.you.clone().unwrap();
    assert_eq!(
        (you.user_id.as_str(), you.name.as_str()),
        ("guest:honest", "Honest")
    );
    assert_eq!(you.roles, ["guest"]);
    assert!(
        c.welcome.room.starts_with("forge-"),
        "room from the path, not the header: {}",
        c.welcome.room
    );
}

pub async fn join_relay_ping_and_leave(s: &Server) {
    let room = unique("relay");
    let mut a = s.player(&room, "Alice").await;
    let w = &a.welcome;
    assert_eq!(
        (w.protocol_version, w.room.as_str()),
        (piano_core::limits::PROTOCOL_VERSION, room.as_str())
    );
    assert!(
        w.server_time.abs_diff(now_ms()) < 60_000,
        "server clock is sane"
    );
    assert_eq!(w.max_frame_bytes, 32 * 1024);
    let joined = a.join().await;
    assert_eq!(joined.participants.len(), 1);

    let mut b = s.player(&room, "Bob").await;
    let joined = b.join().await;
    let names: Vec<_> = joined
        .participants
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["Alice", "Bob"],
        "newcomer sees everyone present, in join order"
    );
    // Other traffic (presence, ownership) may come in between on some hosts: pick what counts.
    let pj = a
        .recv_matching(|m| match m {
            server_message::Msg::ParticipantJoined(p) => p.participant.clone(),
            _ => None,
        })
        .await;
    assert_eq!(pj.name, "Bob");

    a.send(note_on(60, 100)).await;
    let batch = b
        .recv_matching(|m| match m {
            server_message::Msg::Notes(n) => Some(n.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        batch.sender_id,
        a.id(),
        "stamped with the sender's participant id"
    );
    assert_eq!(batch.events.len(), 1);
    // The sender does not hear its own batch back: no Notes before its pong.
    let before = now_ms();
    a.send(client_message::Msg::Ping(e2e_tests::proto::Ping {
        client_time: 1234.5,
    }))
    .await;
    let pong = a
        .recv_matching(|m| match m {
            server_message::Msg::Pong(p) => Some(*p),
            server_message::Msg::Notes(n) => panic!("the sender heard its own notes: {n:?}"),
            _ => None,
        })
        .await;
    assert_eq!(pong.client_time, 1234.5);
    assert!(pong.server_time + 5_000 >= before && pong.server_time <= now_ms() + 5_000);

    let bob_id = b.id().to_owned();
    b.close().await;
    let left = a
        .recv_matching(|m| match m {
            server_message::Msg::ParticipantLeft(l) => Some(l.participant_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(left, bob_id);
}

fn error_code(msg: &server_message::Msg) -> Option<ErrorCode> {
    match msg {
        server_message::Msg::Error(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

pub async fn malformed_frames_get_typed_errors_and_oversized_frames_close(s: &Server) {
    let room = unique("bad");
    let mut a = s.player(&room, "Alice").await;
    a.send(note_on(60, 100)).await;
    assert_eq!(error_code(&a.recv().await), Some(ErrorCode::NotJoined));
    a.join().await;
    a.send_raw(Message::Binary(vec![0xff, 0xff, 0xff, 0xff].into()))
        .await;
    assert_eq!(error_code(&a.recv().await), Some(ErrorCode::MalformedFrame));
    a.send_raw(Message::Text("hello".into())).await;
    assert_eq!(error_code(&a.recv().await), Some(ErrorCode::TextFrame));
    a.send(note_on(200, 100)).await;
    let err = a.recv().await;
    assert_eq!(error_code(&err), Some(ErrorCode::InvalidNotes));
    // Still working after all that.
    a.send(client_message::Msg::Ping(e2e_tests::proto::Ping {
        client_time: 1.0,
    }))
    .await;
    assert!(matches!(a.recv().await, server_message::Msg::Pong(_)));

    a.send_raw(Message::Binary(vec![0u8; 40 * 1024].into()))
        .await;
    match a.next_event(RECV_TIMEOUT).await {
        Some(Event::Closed(Some(frame))) => assert_eq!(u16::from(frame.code), 1009, "{frame:?}"),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

pub async fn rooms_are_isolated(s: &Server) {
    let (r1, r2) = (unique("iso-one"), unique("iso-two"));
    let mut a = s.player(&r1, "A").await;
    a.join().await;
    let mut b = s.player(&r1, "B").await;
    b.join().await;
    let mut c = s.player(&r2, "C").await;
    let joined = c.join().await;
    assert_eq!(joined.participants.len(), 1, "room two only has C");
    let _ = a.recv().await; // B joined
    a.send(note_on(64, 80)).await;
    assert!(matches!(b.recv().await, server_message::Msg::Notes(_)));
    c.expect_silence(Duration::from_millis(700)).await;
}

pub async fn room_info(s: &Server, room: &str) -> serde_json::Value {
    let url = s.http(&format!(
        "/api/rooms/{}",
        piano_core::names::percent_encode(room)
    ));
    let (status, body) = json_of(http().get(url).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub async fn room_survives_hibernation(s: &Server) {
    let room = unique("hibernate");
    let mut a = s.player(&room, "Alice").await;
    a.join().await;
    let mut b = s.player(&room, "Bob").await;
    b.join().await;
    let _ = a.recv().await; // Bob joined
    let before = room_info(s, &room).await;
    assert_eq!(before["participants"], 2);

    // Idle: no frames at all, so workerd may evict the object (its sockets stay open).
    tokio::time::sleep(Duration::from_secs(15)).await;

    a.send(note_on(67, 90)).await;
    match b.recv().await {
        server_message::Msg::Notes(batch) => {
            assert_eq!(batch.sender_id, a.id(), "right sender after waking")
        }
        other => panic!("expected Notes after the wake, got {other:?}"),
    }
    let after = room_info(s, &room).await;
    assert!(
        after["instance_started_at"].as_u64() > before["instance_started_at"].as_u64(),
        "the object was evicted and rebuilt (before {before}, after {after})"
    );
    assert_eq!(after["participants"], 2, "still knows its participants");
    let mut c = s.player(&room, "Carol").await;
    let joined = c.join().await;
    let names: Vec<_> = joined
        .participants
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["Alice", "Bob", "Carol"]);
}

/// The browser client in Debian's Chromium (tests/web/two_players.mjs, playwright-core).
pub async fn browser_two_players_play_chat_and_see_the_room_list(s: &Server) {
    let shots = run_browser_script("two_players.mjs", s).await;
    for shot in ["room-desktop.png", "room-phone.png", "room-with-mpp.png"] {
        assert!(shots.join(shot).exists(), "{shot} was written");
    }
}

/// Runs `tests/web/<script> <base url> <screenshot dir>` in node (a Chromium driven by
/// playwright-core) against `s`; fails with its output unless it exits 0. Returns the
/// screenshot directory.
pub async fn run_browser_script(script: &str, s: &Server) -> std::path::PathBuf {
    run_browser_script_with(script, s, &[]).await
}

/// As [`run_browser_script`], with more arguments after the screenshot directory.
pub async fn run_browser_script_with(
    script: &str,
    s: &Server,
    args: &[String],
) -> std::path::PathBuf {
    let shots = repo_root()
        .join("tests/artifacts/screenshots")
        .join(format!("{:?}", s.host).to_lowercase());
    let base = s.http("");
    let path = repo_root().join("tests/web").join(script);
    let mut all = vec![base.as_ref(), shots.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    crate::sdk::run_node_script(&path, &all, Duration::from_secs(180)).await;
    shots
}

/// A dropped socket in the browser client resumes: nobody sees a leave or a join, the page
/// shows it is reconnecting and then not, and what was played and said meanwhile arrives once
/// each way (tests/web/resume.mjs).
pub async fn browser_resumes_after_a_dropped_connection(s: &Server) {
    let shots = run_browser_script("resume.mjs", s).await;
    for shot in ["reconnecting.png", "resumed.png"] {
        assert!(shots.join(shot).exists(), "{shot} was written");
    }
}
