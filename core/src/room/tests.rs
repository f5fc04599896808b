use super::*;
use crate::proto::{NoteEvent, NoteOn, note_event};
use proptest::prelude::*;

const NOW: Millis = 1_800_000_000_000;

fn ident(user: &str) -> Identity {
    Identity {
        user_id: user.into(),
        name: format!("name of {user}"),
        roles: vec!["guest".into()],
    }
}

fn client(msg: client_message::Msg) -> Vec<u8> {
    ClientMessage { msg: Some(msg) }.encode_to_vec()
}

fn join() -> Vec<u8> {
    client(client_message::Msg::Join(proto::Join::default()))
}

fn notes(time: Millis) -> Vec<u8> {
    client(client_message::Msg::Notes(proto::NoteBatch {
        time,
        events: vec![NoteEvent {
            delay: 0,
            kind: Some(note_event::Kind::NoteOn(NoteOn {
                note: 60,
                velocity: 90,
                channel: 0,
            })),
        }],
        sender_id: "forged".into(),
    }))
}

fn binary(room: &mut Room, conn: ConnId, bytes: &[u8]) -> Vec<Effect> {
    room.handle(
        Input::Frame {
            conn,
            frame: Frame::Binary(bytes),
        },
        NOW,
    )
}

fn connect(room: &mut Room, conn: ConnId, user: &str) -> Vec<Effect> {
    room.handle(
        Input::Connect {
            conn,
            identity: ident(user),
        },
        NOW,
    )
}

/// Connects and joins; returns the join effects.
fn enter(room: &mut Room, conn: ConnId, user: &str) -> Vec<Effect> {
    connect(room, conn, user);
    binary(room, conn, &join())
}

/// The (targets, decoded message) of every Send effect.
fn sent(effects: &[Effect]) -> Vec<(Vec<ConnId>, server_message::Msg)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, frame } => {
                let mut t = to.as_slice().to_vec();
                t.sort();
                Some((
                    t,
                    ServerMessage::decode(frame.clone()).unwrap().msg.unwrap(),
                ))
            }
            _ => None,
        })
        .collect()
}

fn error_code(effects: &[Effect]) -> Option<ErrorCode> {
    sent(effects).into_iter().find_map(|(_, m)| match m {
        server_message::Msg::Error(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    })
}

#[test]
fn welcome_on_connect() {
    let mut room = Room::new("r");
    let fx = connect(&mut room, 1, "alice");
    assert!(matches!(&fx[0], Effect::Remember(r) if r.conn == 1 && r.joined.is_none()));
    let msgs = sent(&fx);
    let [(to, server_message::Msg::Welcome(w))] = &msgs[..] else {
        panic!("{msgs:?}")
    };
    assert_eq!(to, &[1]);
    assert_eq!(w.server_time, NOW);
    assert_eq!(w.room, "r");
    assert_eq!(w.max_frame_bytes as usize, MAX_FRAME_BYTES);
    let you = w.you.as_ref().unwrap();
    assert_eq!(you.user_id, "alice");
    assert_eq!(you.id, participant_id("alice"));
    assert!(you.color.starts_with('#') && you.color.len() == 7);
    assert_eq!(
        room.participant_count(),
        0,
        "not a participant before joining"
    );
}

#[test]
fn join_tells_newcomer_and_others() {
    let mut room = Room::new("r");
    enter(&mut room, 1, "alice");
    let fx = enter(&mut room, 2, "bob");
    let msgs = sent(&fx);
    assert_eq!(msgs.len(), 2);
    let (to, server_message::Msg::Joined(j)) = &msgs[0] else {
        panic!()
    };
    assert_eq!(to, &[2]);
    let names: Vec<_> = j.participants.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(j.you.as_ref().unwrap().user_id, "bob");
    let (to, server_message::Msg::ParticipantJoined(pj)) = &msgs[1] else {
        panic!()
    };
    assert_eq!(to, &[1]);
    assert_eq!(pj.participant.as_ref().unwrap().user_id, "bob");
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Remember(r) if r.conn == 2 && r.joined.is_some()))
    );
}

#[test]
fn notes_reach_everyone_else_once_encoded_and_stamped() {
    let mut room = Room::new("r");
    for i in 0..50 {
        enter(&mut room, i, &format!("user{i}"));
    }
    let fx = binary(&mut room, 7, &notes(NOW));
    // One effect, one frame, 49 targets: the cost of encoding does not grow with the room.
    assert_eq!(fx.len(), 1);
    let msgs = sent(&fx);
    let (to, server_message::Msg::Notes(batch)) = &msgs[0] else {
        panic!()
    };
    assert_eq!(to.len(), 49);
    assert!(!to.contains(&7));
    assert_eq!(
        batch.sender_id,
        participant_id("user7"),
        "server stamps the sender, not the client"
    );
    assert_eq!(batch.events.len(), 1);
}

#[test]
fn ping_gets_pong_even_before_join() {
    let mut room = Room::new("r");
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
fn disconnect_tells_the_others() {
    let mut room = Room::new("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let fx = room.handle(Input::Disconnect { conn: 1 }, NOW);
    let msgs = sent(&fx);
    let [(to, server_message::Msg::ParticipantLeft(l))] = &msgs[..] else {
        panic!()
    };
    assert_eq!(to, &[2]);
    assert_eq!(l.participant_id, participant_id("alice"));
    assert_eq!(room.participant_count(), 1);
    // A second disconnect of the same connection is harmless.
    assert!(room.handle(Input::Disconnect { conn: 1 }, NOW).is_empty());
}

#[test]
fn one_user_two_connections_is_one_participant() {
    let mut room = Room::new("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let fx = enter(&mut room, 3, "alice");
    assert_eq!(room.participant_count(), 2);
    assert!(
        sent(&fx)
            .iter()
            .all(|(_, m)| !matches!(m, server_message::Msg::ParticipantJoined(_)))
    );
    // Her notes from one tab reach her other tab and bob.
    let msgs = sent(&binary(&mut room, 1, &notes(NOW)));
    assert_eq!(msgs[0].0, vec![2, 3]);
    assert!(
        room.handle(Input::Disconnect { conn: 1 }, NOW).is_empty(),
        "still present via conn 3"
    );
    let msgs = sent(&room.handle(Input::Disconnect { conn: 3 }, NOW));
    assert!(matches!(
        &msgs[..],
        [(_, server_message::Msg::ParticipantLeft(_))]
    ));
}

#[test]
fn bad_input_gets_typed_errors_and_the_connection_keeps_working() {
    let mut room = Room::new("r");
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
    let mut room = Room::new("r");
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

/// What a host stores per socket: the last Remember; a closed socket's record goes with it.
fn keep_records(records: &mut BTreeMap<ConnId, ConnRecord>, fx: &[Effect]) {
    for e in fx {
        match e {
            Effect::Remember(r) => {
                records.insert(r.conn, r.clone());
            }
            Effect::Close { conn, .. } => {
                records.remove(conn);
            }
            Effect::Send { .. } => {}
        }
    }
}

#[test]
fn restore_after_hibernation_looks_the_same() {
    let mut room = Room::new("r");
    let mut records = BTreeMap::new();
    for (conn, user) in [(10, "carol"), (3, "alice"), (8, "dave")] {
        keep_records(&mut records, &connect(&mut room, conn, user));
        keep_records(&mut records, &binary(&mut room, conn, &join()));
        if conn == 3 {
            keep_records(&mut records, &connect(&mut room, 5, "bob")); // connected, not joined
        }
    }
    let before: Vec<_> = room.participants().cloned().collect();

    let mut woken = Room::restore("r", records.into_values());
    assert_eq!(woken.participants().cloned().collect::<Vec<_>>(), before);
    assert_eq!(woken.connection_count(), 4);
    let msgs = sent(&binary(&mut woken, 3, &notes(NOW)));
    let (to, server_message::Msg::Notes(b)) = &msgs[0] else {
        panic!()
    };
    assert_eq!(to, &[8, 10]);
    assert_eq!(b.sender_id, participant_id("alice"));
    // Bob joins after the wake and is last in order.
    let msgs = sent(&binary(&mut woken, 5, &join()));
    let (_, server_message::Msg::Joined(j)) = &msgs[0] else {
        panic!()
    };
    let order: Vec<_> = j.participants.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(order, ["carol", "alice", "dave", "bob"]);
}

#[derive(Debug, Clone)]
enum Op {
    Connect(u8, u8),
    Join(u8),
    Notes(u8, i64),
    Garbage(u8, Vec<u8>),
    Text(u8),
    Big(u8),
    Disconnect(u8),
    Hibernate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8u8, 0..4u8).prop_map(|(c, u)| Op::Connect(c, u)),
        (0..8u8).prop_map(Op::Join),
        (0..8u8, -20_000..20_000i64).prop_map(|(c, d)| Op::Notes(c, d)),
        (0..8u8, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(c, b)| Op::Garbage(c, b)),
        (0..8u8).prop_map(Op::Text),
        (0..8u8).prop_map(Op::Big),
        (0..8u8).prop_map(Op::Disconnect),
        Just(Op::Hibernate),
    ]
}

proptest! {
    /// Random sequences never panic, and the room's invariants hold after every step: each
    /// participant has at least one joined connection, no user appears twice, no frame is sent
    /// to a connection the room does not know, and hibernating changes nothing visible.
    #[test]
    fn random_inputs_keep_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut room = Room::new("prop");
        let mut records = BTreeMap::new();
        for op in ops {
            let conn = |c: u8| ConnId::from(c);
            let fx = match op {
                Op::Connect(c, u) => connect(&mut room, conn(c), &format!("u{u}")),
                Op::Join(c) => binary(&mut room, conn(c), &join()),
                Op::Notes(c, d) => binary(&mut room, conn(c), &notes(NOW.saturating_add_signed(d))),
                Op::Garbage(c, b) => binary(&mut room, conn(c), &b),
                Op::Text(c) => room.handle(Input::Frame { conn: conn(c), frame: Frame::Text("x") }, NOW),
                Op::Big(c) => binary(&mut room, conn(c), &vec![1u8; MAX_FRAME_BYTES + 1]),
                Op::Disconnect(c) => {
                    records.remove(&conn(c));
                    room.handle(Input::Disconnect { conn: conn(c) }, NOW)
                }
                Op::Hibernate => {
                    let before: Vec<_> = room.participants().cloned().collect();
                    room = Room::restore("prop", records.values().cloned());
                    prop_assert_eq!(room.participants().cloned().collect::<Vec<_>>(), before);
                    Vec::new()
                }
            };
            for e in &fx {
                if let Effect::Send { to, .. } = e {
                    for t in to.as_slice() {
                        prop_assert!(room.conns.contains_key(t), "sent to unknown conn {}", t);
                    }
                }
            }
            keep_records(&mut records, &fx);
            let mut users: Vec<_> = room.participants().map(|p| p.user_id.clone()).collect();
            users.sort();
            let n = users.len();
            users.dedup();
            prop_assert_eq!(users.len(), n, "a user appears twice");
            for m in &room.members {
                prop_assert!(!m.conns.is_empty());
                for c in &m.conns {
                    prop_assert!(room.conns.get(c).is_some_and(|c| c.joined.is_some()));
                }
            }
        }
    }
}
