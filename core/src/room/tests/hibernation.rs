//! Hibernation and restarts: a room rebuilt from its records and durable state looks the same
//! ([`Room::restore`]).

use super::harness::*;

#[test]
fn restore_after_hibernation_looks_the_same() {
    let mut room = room("r");
    let mut records = BTreeMap::new();
    for (conn, user) in [(10, "carol"), (3, "alice"), (8, "dave")] {
        keep_records(&mut records, &connect(&mut room, conn, user));
        keep_records(&mut records, &binary(&mut room, conn, &join()));
        if conn == 3 {
            keep_records(&mut records, &connect(&mut room, 5, "bob")); // connected, not joined
        }
    }
    let before: Vec<_> = room.participants().cloned().collect();

    let (mut woken, fx) = Room::restore(
        "r",
        Some(room.stored().clone()),
        records.into_values(),
        NOW,
        SEED,
    );
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Persist(_))),
        "the owner is still connected: {fx:?}"
    );
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

#[test]
fn a_restart_keeps_settings_bans_and_chat_and_drops_an_absent_owners_crown() {
    let mut room = room("r");
    let mut persisted = Stored::new(RoomKind::Normal);
    let mut run = |_: &mut Room, fx: Vec<Effect>| keep_stored(&mut persisted, &fx);
    let fx = enter(&mut room, 1, "alice");
    run(&mut room, fx);
    let fx = enter(&mut room, 2, "bob");
    run(&mut room, fx);
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            max_players: Some(7),
            password: Some("pw".into()),
            ..Default::default()
        }),
    );
    run(&mut room, fx);
    let fx = msg(&mut room, 1, chat("remember me"));
    run(&mut room, fx);
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
    );
    run(&mut room, fx);
    assert_eq!(&persisted, room.stored());

    // The host restarts: every socket is gone; only storage remains.
    let (mut room, fx) = Room::restore("r", Some(persisted.clone()), [], NOW + 1000, SEED);
    let o = room.ownership_proto();
    assert_eq!(
        (o.owner_id.as_str(), o.previous_owner_user_id.as_str()),
        ("", "alice")
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Change::Crown(_))))
    );
    assert_eq!(room.settings_proto().max_players, 7);
    connect(&mut room, 3, "bob");
    assert_eq!(
        join_failure(&binary(&mut room, 3, &join())).map(|f| f.0),
        Some(JoinFailure::Banned)
    );
    connect(&mut room, 4, "alice");
    let fx = binary(&mut room, 4, &join());
    let j = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => Some(j.clone()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        j.chat_history
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>(),
        ["remember me"]
    );
    assert_eq!(
        j.ownership.unwrap().owner_id,
        pid("alice"),
        "the owner comes back to her crown"
    );
}
