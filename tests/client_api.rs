//! The client crate's high-level API (`piano_client::Client` / `Room`) against the real hosts:
//! a guest name gets a token, join-or-create with settings, typed refusals (an HTTP error's
//! code, a JoinFailed, an Error notice), chat, settings, crown and moderation requests answered
//! by the room, the directory and the live room list, the clock, and a reconnect that resumes
//! the place and re-sends what was lost with the cut.

use e2e_tests::proto::{self, ErrorCode, JoinFailure, server_message::Msg};
use e2e_tests::*;
use piano_client::{
    Auth, Client as Api, ClientError, CloseReason, ConnectOptions, JoinOptions, Reentry, Room,
};
use std::time::Duration;

async fn guest(s: &Server, name: &str) -> Api {
    Api::connect(ConnectOptions {
        url: s.http(""),
        auth: Auth::Guest(name.into()),
    })
    .await
    .expect("a guest token")
}

/// Waits (reading `room`) for the first message `pick` accepts.
async fn until<T>(room: &mut Room, pick: impl Fn(&Msg) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match room.next(left).await {
            Ok(Some(m)) => {
                if let Some(t) = pick(&m) {
                    return t;
                }
            }
            Ok(None) => panic!("the expected message did not come within {RECV_TIMEOUT:?}"),
            Err(e) => panic!("the room ended: {e}"),
        }
    }
}

pub async fn client_crate_requests_get_typed_answers(s: &Server) {
    let name = unique("api");
    // HTTP refusals carry the JSON error's code.
    let bad = Api::connect(ConnectOptions {
        url: s.http(""),
        auth: Auth::Guest(String::new()),
    })
    .await
    .expect_err("an empty name");
    assert!(
        matches!(&bad, ClientError::Http { status: 400, code, .. } if code == "invalid_name"),
        "{bad:?}"
    );

    let owner_api = guest(s, "Owner").await;
    let settings = proto::UpdateSettings {
        password: Some("sesame".into()),
        visible: Some(true),
        ..Default::default()
    };
    let mut owner = owner_api
        .join(
            &name,
            JoinOptions {
                password: String::new(),
                settings: Some(settings),
            },
        )
        .await
        .expect("join-or-create");
    let joined = owner.joined.clone().expect("joined");
    assert_eq!(
        joined.ownership.as_ref().map(|o| o.owner_id.as_str()),
        Some(owner.id())
    );

    // A JoinFailed is typed.
    let bob_api = guest(s, "Bob").await;
    let refused = bob_api
        .join(&name, JoinOptions::default())
        .await
        .err()
        .expect("no password");
    assert!(
        matches!(
            refused,
            ClientError::JoinFailed {
                reason: JoinFailure::WrongPassword,
                ..
            }
        ),
        "{refused:?}"
    );
    let mut bob = bob_api
        .join(
            &name,
            JoinOptions {
                password: "sesame".into(),
                settings: None,
            },
        )
        .await
        .expect("the right password");
    let bob_id = bob.id().to_owned();

    // An Error notice answers a request the room refuses.
    let kick = bob
        .kick(owner.id(), 0)
        .await
        .expect_err("bob holds no crown");
    assert!(
        matches!(
            kick,
            ClientError::Server {
                code: ErrorCode::NotAllowed,
                ..
            }
        ),
        "{kick:?}"
    );
    // An unban is confirmed by nothing: the fence is its own Pong, not an earlier ping's.
    bob.send(proto::client_message::Msg::Ping(proto::Ping {
        client_time: now_ms() as f64,
    }))
    .await
    .expect("ping");
    let unban = bob
        .unban("user:nobody")
        .await
        .expect_err("bob holds no crown");
    assert!(
        matches!(
            unban,
            ClientError::Server {
                code: ErrorCode::NotAllowed,
                ..
            }
        ),
        "{unban:?}"
    );

    // Chat, settings, mute, the crown: each answered by the room.
    let said = bob.chat("hello from the crate").await.expect("chat");
    assert_eq!(said.participant_id, bob_id);
    let heard = until(&mut owner, |m| match m {
        Msg::Chat(c) if c.participant_id == bob_id => Some(c.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(heard, "hello from the crate");
    let st = owner
        .update_settings(proto::UpdateSettings {
            password: Some(String::new()),
            ..Default::default()
        })
        .await
        .expect("settings");
    assert!(!st.has_password);
    let bad_colour = owner
        .update_settings(proto::UpdateSettings {
            color: Some("nope".into()),
            ..Default::default()
        })
        .await
        .expect_err("a bad colour");
    assert!(
        matches!(
            bad_colour,
            ClientError::Server {
                code: ErrorCode::InvalidValue,
                ..
            }
        ),
        "{bad_colour:?}"
    );
    let muted = owner.mute(&bob_id, true, false).await.expect("mute");
    assert!(muted.muted_notes && !muted.muted_chat);
    owner.mute(&bob_id, false, false).await.expect("unmute");
    let crown = owner.transfer_crown(&bob_id).await.expect("transfer");
    assert_eq!(crown.owner_id, bob_id);

    // The clock synced meanwhile (a Pong answered the first ping).
    owner.idle(Duration::from_millis(600)).await.expect("idle");
    assert!(owner.clock.synced());
    let skew = (owner.server_now() - now_ms() as f64).abs();
    assert!(
        skew < 5_000.0,
        "one machine: the server's clock is ours ({skew} ms apart)"
    );

    // The directory lists the room (visible, with players); so does the live list.
    let listed = eventually(
        "the room in GET /api/rooms",
        Duration::from_secs(20),
        || {
            let api = owner_api.clone();
            let name = name.clone();
            async move { api.rooms().await.ok()?.into_iter().find(|r| r.name == name) }
        },
    )
    .await;
    assert_eq!(listed.players, 2);
    let list = owner.subscribe_rooms().await.expect("room list");
    assert!(list.rooms.iter().any(|r| r.name == name), "{list:?}");
    owner.unsubscribe_rooms().await.expect("unsubscribe");

    // Bob now holds the crown: he kicks the owner, whose socket closes with 4003.
    bob.kick(owner.id(), 0).await.expect("kick");
    let closed = loop {
        match owner.next(RECV_TIMEOUT).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no close after the kick"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        closed.close_reason(),
        Some(CloseReason::Kicked),
        "{closed:?}"
    );
    assert!(!piano_client::room::may_reconnect(&closed));
    bob.close().await;
}

pub async fn client_crate_reconnects_and_resends_what_the_cut_lost(s: &Server) {
    let name = unique("apiresume");
    let mut ada = guest(s, "Ada")
        .await
        .join(&name, JoinOptions::default())
        .await
        .expect("join");
    let mut eve = guest(s, "Eve")
        .await
        .join(&name, JoinOptions::default())
        .await
        .expect("join");
    let ada_id = ada.id().to_owned();
    // The network drops Ada's connection; what she says meanwhile is kept, numbered.
    ada.conn.cut();
    ada.send_kept(proto::client_message::Msg::Chat(proto::SendChat {
        text: "said while cut".into(),
    }))
    .await
    .expect("kept");
    match ada.reconnect(5).await.expect("back") {
        Reentry::Resumed(r) => assert_eq!(r.you.map(|p| p.id), Some(ada_id.clone())),
        Reentry::Rejoined(j) => panic!("the place was kept, yet a fresh join: {j:?}"),
    }
    let heard = until(&mut eve, |m| match m {
        Msg::Chat(c) if c.participant_id == ada_id => Some(c.text.clone()),
        Msg::ParticipantLeft(l) if l.participant_id == ada_id => panic!("Ada was seen leaving"),
        _ => None,
    })
    .await;
    assert_eq!(heard, "said while cut");
    // Acknowledged by a Pong (Ada's pings run while she reads): nothing left to re-send.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ada.conn.resume.unacked.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never acknowledged");
        ada.idle(Duration::from_millis(300)).await.expect("idle");
    }
    ada.close().await;
    eve.close().await;
}
