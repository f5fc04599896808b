//! Hibernation and restarts: a room rebuilt from its records and durable state looks the same
//! ([`Room::restore`]).

use super::harness::*;

#[test]
fn restore_after_hibernation_looks_the_same() {
    let mut host = Host::new("r");
    for (conn, user) in [(10, "carol"), (3, "alice"), (8, "dave")] {
        host.enter(conn, user);
        if conn == 3 {
            host.connect(5, ident("bob")); // connected, not joined
        }
    }
    let before: Vec<_> = host.room.participants().cloned().collect();
    assert_eq!(&host.stored, host.room.stored(), "storage lags the room");

    let fx = host.wake(true);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Persist(_))),
        "the owner is still connected: {fx:?}"
    );
    assert_eq!(
        host.room.participants().cloned().collect::<Vec<_>>(),
        before
    );
    assert_eq!(host.room.connection_count(), 4);
    for conn in [3, 5, 8, 10] {
        host.take(conn);
    }
    host.frame(3, &notes(NOW));
    for conn in [8, 10] {
        let got = host.take(conn);
        let [SM::Notes(b)] = got.as_slice() else {
            panic!("{conn}: {got:?}")
        };
        assert_eq!(b.sender_id, participant_id("alice"));
    }
    assert!(
        host.take(3).is_empty(),
        "not back to the sender's own connection"
    );
    assert!(
        host.take(5).is_empty(),
        "not to a connection that has not joined"
    );
    // Bob joins after the wake and is last in order.
    host.send(5, M::Join(proto::Join::default()));
    let got = host.take(5);
    let Some(SM::Joined(j)) = got.first() else {
        panic!("{got:?}")
    };
    let order: Vec<_> = j.participants.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(order, ["carol", "alice", "dave", "bob"]);
}

#[test]
fn a_restart_keeps_settings_bans_and_chat_and_drops_an_absent_owners_crown() {
    let mut host = Host::new("r");
    host.enter(1, "alice");
    host.enter(2, "bob");
    host.send(
        1,
        M::UpdateSettings(proto::UpdateSettings {
            max_players: Some(7),
            password: Some("pw".into()),
            ..Default::default()
        }),
    );
    host.send(1, chat("remember me"));
    host.send(
        1,
        M::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
    );
    assert_eq!(host.closed(2), Some(close::KICKED));
    assert_eq!(&host.stored, host.room.stored());

    // The host restarts: every socket is gone; only storage remains (and nothing kept for
    // resuming: tests/resume.rs covers a host that keeps sessions).
    host.advance(1000);
    host.kept = Kept::default();
    let fx = host.wake(false);
    let o = host.room.ownership_proto();
    assert_eq!(
        (o.owner_id.as_str(), o.previous_owner_user_id.as_str()),
        ("", "alice")
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Change::Crown(_))))
    );
    assert_eq!(host.room.settings_proto().max_players, 7);
    host.connect(3, ident("bob"));
    assert_eq!(
        join_failure(&host.send(3, M::Join(proto::Join::default()))).map(|f| f.0),
        Some(JoinFailure::Banned)
    );
    host.connect(4, ident("alice"));
    host.send(4, M::Join(proto::Join::default()));
    let got = host.take(4);
    let j = got
        .iter()
        .find_map(|m| match m {
            SM::Joined(j) => Some(j.clone()),
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
