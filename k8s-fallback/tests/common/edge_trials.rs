//! Trials of the edge suite that live in `tests/edge.rs` itself (the edge suite's entry point,
//! which cannot be included here), restated for the fallback with the same assertions.

use crate::*;
use e2e_tests::proto::{self, ErrorCode, client_message, server_message};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn error_code(m: &server_message::Msg) -> Option<ErrorCode> {
    match m {
        server_message::Msg::Error(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

pub async fn malformed_frames_get_typed_errors_and_oversized_frames_close() {
    let s = server();
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
    assert_eq!(error_code(&a.recv().await), Some(ErrorCode::InvalidNotes));
    a.send(client_message::Msg::Ping(proto::Ping { client_time: 1.0 }))
        .await;
    assert!(matches!(a.recv().await, server_message::Msg::Pong(_)));
    a.send_raw(Message::Binary(vec![0u8; 40 * 1024].into()))
        .await;
    match a.next_event(RECV_TIMEOUT).await {
        Some(Event::Closed(Some(frame))) => assert_eq!(u16::from(frame.code), 1009, "{frame:?}"),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

pub async fn join_relay_ping_and_leave() {
    let s = server();
    let room = unique("relay");
    let mut a = s.player(&room, "Alice").await;
    let joined = a.join().await;
    assert_eq!(joined.participants.len(), 1);
    let mut b = s.player(&room, "Bob").await;
    let joined = b.join().await;
    assert_eq!(joined.participants.len(), 2, "Bob sees Alice and himself");
    let b_id = b.id().to_owned();
    let pj = a
        .recv_matching(|m| match m {
            server_message::Msg::ParticipantJoined(p) => p.participant.clone(),
            _ => None,
        })
        .await;
    assert_eq!(pj.id, b_id);
    a.send(note_on(60, 100)).await;
    let batch = b
        .recv_matching(|m| match m {
            server_message::Msg::Notes(n) => Some(n.clone()),
            _ => None,
        })
        .await;
    assert_eq!(batch.sender_id, a.id());
    b.send(client_message::Msg::Ping(proto::Ping { client_time: 42.0 }))
        .await;
    let pong = b
        .recv_matching(|m| match m {
            server_message::Msg::Pong(p) => Some(*p),
            _ => None,
        })
        .await;
    assert_eq!(pong.client_time, 42.0);
    b.close().await;
    let left = a
        .recv_matching(|m| match m {
            server_message::Msg::ParticipantLeft(l) => Some(l.participant_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(left, b_id);
    a.expect_silence(Duration::from_millis(300)).await;
}
