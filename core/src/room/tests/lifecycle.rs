//! Sessions reaching open sockets, expiry, and rooms that leave no storage behind (issue 13)
//! ([`super::super::lifecycle`]).

use super::harness::*;

/// Conns 1, 2: alice on sessions s1, s2; conn 3: bob on s3; conn 4: alice connected, not
/// joined, on s1.
fn sessions_room() -> Room {
    let mut room = room("r");
    for (conn, user, session) in [(1, "alice", "s1"), (2, "alice", "s2"), (3, "bob", "s3")] {
        room.handle(
            Input::Connect {
                conn,
                identity: member(user, session, None),
            },
            NOW,
        );
        binary(&mut room, conn, &join());
    }
    room.handle(
        Input::Connect {
            conn: 4,
            identity: member("alice", "s1", None),
        },
        NOW,
    );
    room
}

/// The connections closed, with their codes.
type Closed = Vec<(ConnId, u16)>;

#[test]
fn ended_sessions_and_changed_roles_close_the_sockets_they_opened() {
    use close::{IDENTITY_CHANGED as CHANGED, SESSION_ENDED as ENDED};
    let s = |x: &str| Some(x.to_owned());
    #[rustfmt::skip]
    let table: Vec<(&str, Input<'static>, Closed)> = vec![
        ("one session", Input::SessionEnded { user_id: "alice".into(), session_id: s("s1") }, vec![(1, ENDED), (4, ENDED)]),
        ("every session of a user", Input::SessionEnded { user_id: "alice".into(), session_id: None }, vec![(1, ENDED), (2, ENDED), (4, ENDED)]),
        ("another user's session id", Input::SessionEnded { user_id: "bob".into(), session_id: s("s1") }, vec![]),
        ("an unknown user", Input::SessionEnded { user_id: "zed".into(), session_id: None }, vec![]),
        ("roles changed", Input::IdentityChanged { user_id: "alice".into() }, vec![(1, CHANGED), (2, CHANGED), (4, CHANGED)]),
        ("roles of someone absent", Input::IdentityChanged { user_id: "zed".into() }, vec![]),
    ];
    for (what, input, expected) in table {
        let mut room = sessions_room();
        let fx = room.handle(input, NOW);
        assert_eq!(closes(&fx), expected, "{what}");
        let alice_left = expected.iter().filter(|(c, _)| *c == 1 || *c == 2).count() == 2;
        let left = sent(&fx)
            .into_iter()
            .any(|(to, m)| matches!(m, SM::ParticipantLeft(_)) && to == [3]);
        assert_eq!(
            left, alice_left,
            "{what}: bob sees alice leave once all her sockets are gone"
        );
        for (c, _) in &expected {
            assert!(
                !room.conns.contains_key(c),
                "{what}: the room forgot conn {c}"
            );
        }
    }
}

#[test]
fn expiry_closes_at_the_deadline_the_room_announces() {
    let mut room = room("r");
    assert_eq!(room.next_deadline(), None);
    for (conn, user, exp) in [
        (1, "a", Some(NOW + 5000)),
        (2, "b", Some(NOW + 1000)),
        (3, "c", None),
    ] {
        room.handle(
            Input::Connect {
                conn,
                identity: member(user, "s", exp),
            },
            NOW,
        );
    }
    assert_eq!(room.next_deadline(), Some(NOW + 1000));
    assert!(room.handle(Input::Tick, NOW + 999).is_empty(), "not yet");
    let fx = room.handle(Input::Tick, NOW + 1000);
    assert_eq!(closes(&fx), vec![(2, close::SESSION_ENDED)]);
    assert_eq!(room.next_deadline(), Some(NOW + 5000));
    let fx = room.handle(Input::Tick, NOW + 60_000);
    assert_eq!(closes(&fx), vec![(1, close::SESSION_ENDED)]);
    assert_eq!(room.next_deadline(), None);
    assert_eq!(room.connection_count(), 1);
}

#[test]
fn a_guest_token_expires_with_its_exp() {
    let claims = crate::identity::Claims {
        sub: "guest:x".into(),
        name: "x".into(),
        roles: vec!["guest".into()],
        iat: 0,
        exp: NOW / 1000 + 10,
        nbf: None,
        iss: "i".into(),
        aud: "a".into(),
        sid: None,
        generation: None,
    };
    let mut room = room("r");
    room.handle(
        Input::Connect {
            conn: 1,
            identity: Identity::from(claims),
        },
        NOW,
    );
    assert_eq!(room.next_deadline(), Some(NOW + 10_000));
}

/// The last participant leaving a room nobody configured asks the host to delete its storage;
/// anything worth keeping keeps it.
#[test]
fn an_unconfigured_room_leaves_no_storage() {
    type Setup = fn(&mut Room);
    #[rustfmt::skip]
    let table: [(&str, &str, Setup, bool); 8] = [
        ("a fresh room", "r", |_| {}, true),
        ("a fresh lobby", "lobby", |_| {}, true),
        ("played in", "r", |room| { binary(room, 1, &notes(NOW)); }, true),
        ("settings changed", "r", |room| { msg(room, 1, M::UpdateSettings(proto::UpdateSettings { visible: Some(false), ..Default::default() })); }, false),
        ("settings changed back", "r", |room| {
            msg(room, 1, M::UpdateSettings(proto::UpdateSettings { visible: Some(false), ..Default::default() }));
            msg(room, 1, M::UpdateSettings(proto::UpdateSettings { visible: Some(true), ..Default::default() }));
        }, true),
        ("a password", "r", |room| { msg(room, 1, M::UpdateSettings(proto::UpdateSettings { password: Some("pw".into()), ..Default::default() })); }, false),
        ("chat", "r", |room| { msg(room, 1, chat("hello")); }, false),
        ("a ban", "r", |room| {
            enter(room, 3, "griefer");
            msg(room, 1, M::Kick(proto::Kick { participant_id: pid("griefer"), ban_ms: 1000 }));
        }, false),
    ];
    for (what, name, setup, discarded) in table {
        let mut room = Room::new(name, SEED);
        enter(&mut room, 1, "alice");
        enter(&mut room, 2, "bob");
        setup(&mut room);
        let fx = room.handle(Input::Disconnect { conn: 1 }, NOW);
        assert_eq!(discards(&fx), 0, "{what}: someone is still there");
        let fx = room.handle(Input::Disconnect { conn: 2 }, NOW);
        assert_eq!(discards(&fx), usize::from(discarded), "{what}");
        if discarded {
            assert!(matches!(
                fx.last(),
                Some(Effect::Persist(stored::Change::Discard)) | Some(Effect::Directory(_))
            ));
            assert_eq!(room.stored(), &stored::Stored::new(room.kind()), "{what}");
            // A host's storage model agrees: what remains is a fresh room's.
            let mut model = room.stored().clone();
            model.apply(stored::Change::Discard);
            assert_eq!(&model, room.stored());
            // The next player creates the room afresh and gets the crown.
            let fx = enter(&mut room, 5, "carol");
            if name == "r" {
                assert!(
                    find(&fx, |m| match m {
                        SM::Joined(j) => Some(j.ownership.clone()?.owner_user_id == "carol"),
                        _ => None,
                    })
                    .unwrap_or(false),
                    "{what}"
                );
            }
        }
    }
}

/// Anonymous probes (connect, ping, subscribe, garbage, messages before joining) make the room
/// write nothing durable: storage starts with the first successful Join.
#[test]
fn probes_that_never_join_write_nothing() {
    let mut room = room("probe");
    let mut fx = connect(&mut room, 1, "prober");
    for m in [
        M::Ping(proto::Ping { client_time: 1.0 }),
        M::SubscribeRooms(proto::SubscribeRooms {}),
        M::Typing(proto::SetTyping { typing: true }),
        chat("hello"),
        M::UpdateSettings(proto::UpdateSettings {
            visible: Some(false),
            ..Default::default()
        }),
        M::UnsubscribeRooms(proto::UnsubscribeRooms {}),
    ] {
        fx.extend(msg(&mut room, 1, m));
    }
    fx.extend(binary(&mut room, 1, b"\x01\x02garbage"));
    fx.extend(room.handle(Input::Disconnect { conn: 1 }, NOW));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Persist(_))),
        "{fx:?}"
    );
    // The first Join writes (the creator's crown).
    let fx = enter(&mut room, 2, "player");
    assert!(fx.iter().any(|e| matches!(e, Effect::Persist(_))));
}
