//! Frames in and out: typed errors for bad input, oversized frames, pings before joining, one
//! encode per broadcast ([`super::super::wire`]).

use super::harness::*;

#[test]
fn ping_gets_pong_even_before_join() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    let fx = binary(
        &mut room,
        1,
        &client(client_message::Msg::Ping(proto::Ping { client_time: 12.5 })),
    );
    let msgs = sent(&fx);
    let [(_, server_message::Msg::Pong(p))] = &msgs[..] else {
        panic!()
    };
    assert_eq!((p.client_time, p.server_time), (12.5, NOW));
}

#[test]
fn bad_input_gets_typed_errors_and_the_connection_keeps_working() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    assert_eq!(
        error_code(&binary(&mut room, 1, &notes(NOW))),
        Some(ErrorCode::NotJoined)
    );
    assert_eq!(
        error_code(&binary(&mut room, 1, &[0xff, 0xff, 0xff])),
        Some(ErrorCode::MalformedFrame)
    );
    assert_eq!(
        error_code(&binary(&mut room, 1, &[])),
        Some(ErrorCode::EmptyMessage)
    );
    let fx = room.handle(
        Input::Frame {
            conn: 1,
            frame: Frame::Text("hi"),
        },
        NOW,
    );
    assert_eq!(error_code(&fx), Some(ErrorCode::TextFrame));
    binary(&mut room, 1, &join());
    assert_eq!(
        error_code(&binary(&mut room, 1, &join())),
        Some(ErrorCode::AlreadyJoined)
    );
    assert_eq!(
        error_code(&binary(&mut room, 1, &notes(NOW - 60_000))),
        Some(ErrorCode::InvalidNotes)
    );
    assert_eq!(room.participant_count(), 1);
}

#[test]
fn oversized_frame_closes_with_1009() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let big = vec![0u8; MAX_FRAME_BYTES + 1];
    let fx = binary(&mut room, 2, &big);
    assert!(fx.contains(&Effect::Close {
        conn: 2,
        code: 1009,
        reason: "frame too large"
    }));
    assert!(
        matches!(&sent(&fx)[..], [(to, server_message::Msg::ParticipantLeft(_))] if to == &[1])
    );
    assert_eq!(room.participant_count(), 1);
    // Exactly at the limit is fine (it is then judged on content).
    let fx = binary(&mut room, 1, &vec![0u8; MAX_FRAME_BYTES]);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Close { .. })));
}

/// Issue 9: encodes per broadcast do not grow with the room. For rooms of 2 to 200 players, one
/// note batch yields exactly one `Effect::Send` (one frame, encoded once) whose targets are every
/// other player, and a join yields one frame for the newcomer and one shared by everyone else.
#[test]
fn one_encode_per_broadcast_whatever_the_room_size() {
    for size in [2u64, 10, 50, 200] {
        let mut room = room_with(|s| s.settings.max_players = size as u32);
        for conn in 1..size {
            enter(&mut room, conn, &format!("user{conn}"));
        }
        let join_fx = enter(&mut room, size, &format!("user{size}"));
        let join_sends: Vec<&Targets> = join_fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        assert_eq!(
            join_sends.len(),
            2,
            "room of {size}: Joined to the newcomer, ParticipantJoined once to the others"
        );
        assert_eq!(join_sends[0].as_slice(), &[size]);
        assert_eq!(join_sends[1].as_slice().len() as u64, size - 1);

        let sender = 1 + size / 2;
        let fx = binary(&mut room, sender, &notes(NOW));
        let frames: Vec<(&Targets, &Bytes)> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, frame, .. } => Some((to, frame)),
                _ => None,
            })
            .collect();
        assert_eq!(
            frames.len(),
            1,
            "room of {size}: one note batch, one encoded frame"
        );
        assert_eq!(fx.len(), 1, "room of {size}: nothing but the broadcast");
        let (to, frame) = frames[0];
        let mut targets = to.as_slice().to_vec();
        targets.sort_unstable();
        let others: Vec<ConnId> = (1..=size).filter(|c| *c != sender).collect();
        assert_eq!(targets, others, "room of {size}: every other player, once");
        let Some(server_message::Msg::Notes(batch)) = ServerMessage::decode(frame.clone())
            .ok()
            .and_then(|m| m.msg)
        else {
            panic!("room of {size}: the frame is a note batch")
        };
        assert_eq!(batch.sender_id, participant_id(&format!("user{sender}")));
        // A host hands this same buffer to every target: cloning `Bytes` shares it.
        let shared = frame.clone();
        assert_eq!(shared.as_ptr(), frame.as_ptr());
    }
}

/// The notice a host queues for a listener that fell behind (`crate::backlog`), in each
/// protocol.
#[test]
fn fell_behind_notices_in_both_protocols() {
    let pb = fell_behind(Protocol::Protobuf, 7);
    assert_eq!(
        ServerMessage::decode(pb).ok().and_then(|m| m.msg),
        Some(server_message::Msg::FellBehind(proto::FellBehind {
            skipped: 7
        }))
    );
    let mpp: serde_json::Value =
        serde_json::from_slice(&fell_behind(Protocol::Mpp, 7)).expect("MPP JSON");
    assert_eq!(mpp[0]["m"], "notification");
    assert!(
        mpp[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("7 note batches")),
        "{mpp}"
    );
}
