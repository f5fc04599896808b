//! Admission (issue 13): socket caps per user and per network, every socket passing admission,
//! bans by network, capacity, typed join failures, password guessing slowed per user and per
//! room, password checks off the room's thread ([`super::super::admission`]).

use super::harness::*;

/// The capacity invariant without the noise of capacity changes: joins never overfill a room.
#[test]
fn joins_never_exceed_the_limit() {
    let mut room = room_with(|s| s.settings.max_players = 3);
    for i in 0..10 {
        enter(&mut room, i, &format!("user{i}"));
        assert!(room.participant_count() <= 3);
    }
    assert_eq!(room.participant_count(), 3);
}

#[test]
fn join_failures_are_typed() {
    let mut room = room_with(|s| {
        s.settings.max_players = 2;
        s.settings.allow_guests = false;
        s.settings.allow_bots = false;
    });
    enter_as(&mut room, 1, "owner", &["member"]);
    assert_eq!(
        join_failure(&enter_as(&mut room, 2, "g", &["guest"])),
        Some((JoinFailure::GuestsNotAllowed, 0))
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 3, "b", &["bot"])),
        Some((JoinFailure::NotAllowed, 0))
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 4, "m", &["member"])),
        None
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 5, "m2", &["member"])),
        Some((JoinFailure::RoomFull, 0))
    );
    // Another connection of someone present is never refused; staff pass a full room.
    assert_eq!(
        join_failure(&enter_as(&mut room, 6, "m", &["member"])),
        None
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 7, "mod", &["moderator"])),
        None
    );
    assert_eq!(room.participant_count(), 3);
}

/// A room "r" owned by "owner" (conn 1) with the password "hunter2".
fn locked_room() -> Room {
    let mut room = room("r");
    enter_as(&mut room, 1, "owner", &["member"]);
    msg(
        &mut room,
        1,
        M::UpdateSettings(proto::UpdateSettings {
            password: Some("hunter2".into()),
            ..Default::default()
        }),
    );
    room
}

#[test]
fn sockets_per_user_and_per_network_are_capped() {
    let per_user = budget::MAX_CONNS_PER_USER;
    let per_net = budget::MAX_CONNS_PER_NETWORK;
    // (what, sockets already open, the newcomer, admitted)
    type Open = Vec<Identity>;
    #[rustfmt::skip]
    let table: Vec<(&str, Open, Identity, bool)> = vec![
        ("a user's first sockets", vec![ident("a"); per_user - 1], ident("a"), true),
        ("one socket too many for a user", vec![ident("a"); per_user], ident("a"), false),
        ("other users are not counted", vec![ident("b"); per_user], ident("a"), true),
        ("staff are capped per user too", vec![ident_with("m", &["moderator"]); per_user], ident_with("m", &["moderator"]), false),
        ("a network's sockets", (0..per_net - 1).map(|i| on_net(&format!("g{i}"), &["guest"], "n1")).collect(), on_net("x", &["guest"], "n1"), true),
        ("one socket too many for a network", (0..per_net).map(|i| on_net(&format!("g{i}"), &["guest"], "n1")).collect(), on_net("x", &["member"], "n1"), false),
        ("another network", (0..per_net).map(|i| on_net(&format!("g{i}"), &["guest"], "n1")).collect(), on_net("x", &["guest"], "n2"), true),
        ("no network known", (0..per_net).map(|i| on_net(&format!("g{i}"), &["guest"], "n1")).collect(), ident("x"), true),
        ("staff pass the network cap", (0..per_net).map(|i| on_net(&format!("g{i}"), &["guest"], "n1")).collect(), on_net("x", &["admin"], "n1"), true),
        ("staff do not fill it", (0..per_net + 4).map(|i| on_net(&format!("s{i}"), &["admin"], "n1")).collect(), on_net("x", &["guest"], "n1"), true),
    ];
    for (what, open, newcomer, admitted) in table {
        let mut room = room("r");
        for (conn, who) in open.into_iter().enumerate() {
            let fx = connect_as(&mut room, conn as ConnId, who);
            assert!(
                !fx.iter().any(|e| matches!(e, Effect::Close { .. })),
                "{what}: setup"
            );
        }
        let expected = if admitted {
            Ok(())
        } else {
            Err(ErrorCode::TooManyConnections)
        };
        assert_eq!(
            room.admit_connection(&newcomer),
            expected,
            "{what}: before the upgrade"
        );
        // Connect enforces the same.
        let fx = connect_as(&mut room, 999, newcomer);
        if admitted {
            assert!(
                find(&fx, |m| matches!(m, SM::Welcome(_)).then_some(())).is_some(),
                "{what}"
            );
        } else {
            assert_eq!(
                error_code(&fx),
                Some(ErrorCode::TooManyConnections),
                "{what}"
            );
            assert!(
                fx.contains(&Effect::Close {
                    conn: 999,
                    code: close::TOO_MANY_CONNECTIONS,
                    reason: "too many connections"
                }),
                "{what}"
            );
            assert!(
                !fx.iter().any(|e| matches!(e, Effect::Remember(_))),
                "{what}: nothing kept"
            );
            assert!(!room.conns.contains_key(&999), "{what}");
        }
    }
}

#[test]
fn a_closed_socket_frees_its_slot_and_limits_are_configurable() {
    let mut room = room("r");
    for conn in 0..4 {
        enter(&mut room, conn, "a");
    }
    assert!(room.admit_connection(&ident("a")).is_err());
    room.handle(Input::Disconnect { conn: 2 }, NOW);
    assert_eq!(room.admit_connection(&ident("a")), Ok(()));
    room.set_limits(Limits {
        conns_per_user: 2,
        ..Limits::default()
    });
    assert_eq!(room.limits().conns_per_user, 2);
    assert!(room.admit_connection(&ident("a")).is_err());
}

/// A user already present passes admission again on every socket (the 500-socket hole): the
/// password, bans and bots rules apply; only capacity does not (no new participant).
#[test]
fn every_socket_passes_admission_a_present_user_too() {
    let mut room = locked_room();
    connect(&mut room, 2, "bob");
    assert!(joined(&msg(&mut room, 2, join_with("hunter2"))));
    // Bob's second tab must know the password too.
    connect(&mut room, 3, "bob");
    assert_eq!(
        join_failure(&binary(&mut room, 3, &join())),
        Some((JoinFailure::WrongPassword, 0))
    );
    assert!(joined(&msg(&mut room, 3, join_with("hunter2"))));
    // A full room still takes a present user's next socket (it adds no participant).
    msg(
        &mut room,
        1,
        M::UpdateSettings(proto::UpdateSettings {
            max_players: Some(2),
            password: Some(String::new()),
            ..Default::default()
        }),
    );
    connect(&mut room, 4, "bob");
    assert!(joined(&binary(&mut room, 4, &join())));
    connect(&mut room, 5, "carol");
    assert_eq!(
        join_failure(&binary(&mut room, 5, &join())).map(|f| f.0),
        Some(JoinFailure::RoomFull)
    );
    assert_eq!(room.participant_count(), 2);
}

#[test]
fn a_ban_refuses_new_guests_from_the_banned_network_but_not_members() {
    let mut room = room("r");
    enter_as(&mut room, 1, "owner", &["member"]);
    connect_as(&mut room, 2, on_net("griefer", &["guest"], "n1"));
    binary(&mut room, 2, &join());
    let fx = msg(
        &mut room,
        1,
        M::Kick(proto::Kick {
            participant_id: pid("griefer"),
            ban_ms: 60_000,
        }),
    );
    let ban = fx.iter().find_map(|e| match e {
        Effect::Persist(stored::Change::Bans(b)) => b.first().cloned(),
        _ => None,
    });
    assert_eq!(
        ban.and_then(|b| b.network).as_deref(),
        Some("n1"),
        "the ban records the network"
    );
    #[rustfmt::skip]
    let table = [
        ("a new guest identity, same network", on_net("griefer2", &["guest"], "n1"), Some(JoinFailure::Banned)),
        ("a member on the same network (a shared NAT)", on_net("member", &["member"], "n1"), None),
        ("a guest from another network", on_net("guest", &["guest"], "n2"), None),
        ("a guest with no network known", ident("guest3"), None),
    ];
    for (i, (what, who, failure)) in table.into_iter().enumerate() {
        let conn = 10 + i as ConnId;
        connect_as(&mut room, conn, who);
        let fx = binary(&mut room, conn, &join());
        assert_eq!(join_failure(&fx).map(|f| f.0), failure, "{what}");
    }
    // The ban ends for the network too.
    connect_as(&mut room, 20, on_net("griefer4", &["guest"], "n1"));
    let fx = msg_at(&mut room, 20, M::Join(proto::Join::default()), NOW + 60_000);
    assert!(joined(&fx));
}

/// Wrong passwords make the same user wait 1 s, 2 s, 4 s … up to 60 s; a right one resets.
#[test]
fn wrong_passwords_make_the_user_wait_longer_each_time() {
    let mut room = locked_room();
    // A generous join budget, so only the password delay is measured.
    room.set_limits(Limits {
        join: budget::Rate::every(1, 1000),
        ..Limits::default()
    });
    connect(&mut room, 2, "bob");
    let mut now = NOW;
    let mut waits = Vec::new();
    for _ in 0..9 {
        let fx = msg_at(&mut room, 2, join_with("guess"), now);
        let (reason, wait) = join_failure(&fx).unwrap();
        assert_eq!(reason, JoinFailure::WrongPassword);
        waits.push(wait);
        if wait == 0 {
            // The first miss is free: nothing to wait for.
            continue;
        }
        // Too early: refused without a check.
        let early = room.handle(
            Input::Frame {
                conn: 2,
                frame: Frame::Binary(&client(join_with("hunter2"))),
            },
            now + wait - 1,
        );
        assert_eq!(join_failure(&early), Some((JoinFailure::RateLimited, 1)));
        assert!(
            verify_requests(&early).is_empty(),
            "no KDF for a guess that must wait"
        );
        now += wait;
    }
    assert_eq!(
        waits,
        [0, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]
    );
    // Another user is not held up by bob's guesses.
    connect(&mut room, 3, "carol");
    assert!(joined(&msg_at(&mut room, 3, join_with("hunter2"), now - 1)));
    // The right password resets bob's delay.
    assert!(joined(&msg_at(&mut room, 2, join_with("hunter2"), now)));
    room.handle(Input::Disconnect { conn: 2 }, now);
    connect(&mut room, 4, "bob");
    let fx = msg_at(&mut room, 4, join_with("nope"), now + 1);
    assert_eq!(join_failure(&fx), Some((JoinFailure::WrongPassword, 0)));
}

/// New guest identities do not reset the delay: a guest's wrong guess slows its network's
/// guests too (not members behind the same address, nor other networks).
#[test]
fn a_guests_wrong_guesses_slow_its_network_down() {
    let mut room = locked_room();
    connect_as(&mut room, 2, on_net("g1", &["guest"], "n1"));
    let fx = msg(&mut room, 2, join_with("guess"));
    assert_eq!(join_failure(&fx), Some((JoinFailure::WrongPassword, 0)));
    let fx = msg(&mut room, 2, join_with("guess"));
    assert_eq!(join_failure(&fx), Some((JoinFailure::WrongPassword, 1000)));
    #[rustfmt::skip]
    let table = [
        ("a new guest on the same network", on_net("g2", &["guest"], "n1"), Some(JoinFailure::RateLimited)),
        ("a member on the same network", on_net("m", &["member"], "n1"), None),
        ("a guest on another network", on_net("g3", &["guest"], "n2"), None),
    ];
    for (i, (what, who, failure)) in table.into_iter().enumerate() {
        let conn = 10 + i as ConnId;
        connect_as(&mut room, conn, who);
        let fx = msg_at(&mut room, conn, join_with("hunter2"), NOW + 500);
        assert_eq!(join_failure(&fx).map(|f| f.0), failure, "{what}");
    }
    // The network's next wrong guess doubles its delay, whoever makes it.
    connect_as(&mut room, 20, on_net("g4", &["guest"], "n1"));
    let fx = msg_at(&mut room, 20, join_with("guess"), NOW + 1000);
    assert_eq!(join_failure(&fx), Some((JoinFailure::WrongPassword, 2000)));
}

#[test]
fn a_room_checks_few_passwords_per_second_whoever_asks() {
    let mut room = locked_room();
    let rate = budget::PASSWORD_CHECKS;
    let mut requested = 0;
    // Fresh guests each guess once (a per-user delay alone would not stop them).
    for i in 0..rate.burst + 5 {
        let conn = 100 + ConnId::from(i);
        connect(&mut room, conn, &format!("g{i}"));
        let fx = room.handle(
            Input::Frame {
                conn,
                frame: Frame::Binary(&client(join_with("guess"))),
            },
            NOW,
        );
        if verify_requests(&fx).is_empty() {
            assert_eq!(
                join_failure(&fx),
                Some((JoinFailure::RateLimited, u64::from(rate.every_ms))),
                "guess {i}"
            );
        } else {
            requested += 1;
        }
    }
    assert_eq!(requested, rate.burst);
    // The owner and staff never need a check.
    enter_as(&mut room, 200, "mod", &["moderator"]);
    assert_eq!(room.participant_count(), 2);
}

/// The check leaves the room's thread: the room keeps relaying meanwhile, and decides when
/// the answer comes back, as things are then.
#[test]
fn password_checks_are_asynchronous_and_admission_runs_again() {
    let join_at = |room: &mut Room, conn: ConnId, pw: &str| {
        room.handle(
            Input::Frame {
                conn,
                frame: Frame::Binary(&client(join_with(pw))),
            },
            NOW,
        )
    };
    let checked = |room: &mut Room, conn: ConnId, ok: bool| {
        room.handle(Input::PasswordChecked { conn, ok }, NOW)
    };

    // The happy path: a request, nothing else, then the answer completes the join.
    let mut room = locked_room();
    connect(&mut room, 5, "listener");
    assert!(joined(&msg(&mut room, 5, join_with("hunter2"))));
    connect(&mut room, 2, "bob");
    let fx = join_at(&mut room, 2, "hunter2");
    assert_eq!(verify_requests(&fx), vec![(2, "hunter2".to_owned())]);
    assert!(sent(&fx).is_empty(), "no answer before the check");
    let relay = binary(&mut room, 1, &notes(NOW));
    assert!(find(&relay, |m| matches!(m, SM::Notes(_)).then_some(())).is_some());
    // A second Join while the first is checked.
    let fx = join_at(&mut room, 2, "hunter2");
    assert_eq!(
        join_failure(&fx).map(|f| f.0),
        Some(JoinFailure::RateLimited)
    );
    assert!(verify_requests(&fx).is_empty());
    assert!(joined(&checked(&mut room, 2, true)));
    assert!(
        checked(&mut room, 2, true).is_empty(),
        "a stray answer does nothing"
    );

    // The connection left meanwhile: the answer is dropped.
    connect(&mut room, 3, "carol");
    join_at(&mut room, 3, "hunter2");
    room.handle(Input::Disconnect { conn: 3 }, NOW);
    assert!(checked(&mut room, 3, true).is_empty());

    // The room filled meanwhile.
    let mut room = locked_room();
    msg(
        &mut room,
        1,
        M::UpdateSettings(proto::UpdateSettings {
            max_players: Some(2),
            ..Default::default()
        }),
    );
    connect(&mut room, 2, "bob");
    join_at(&mut room, 2, "hunter2");
    enter_as(&mut room, 3, "mod", &["moderator"]);
    assert_eq!(
        join_failure(&checked(&mut room, 2, true)).map(|f| f.0),
        Some(JoinFailure::RoomFull)
    );

    // Banned meanwhile (kicked with a ban on another socket).
    let mut room = locked_room();
    connect(&mut room, 2, "bob");
    assert!(joined(&msg(&mut room, 2, join_with("hunter2"))));
    connect(&mut room, 3, "bob");
    join_at(&mut room, 3, "hunter2");
    msg(
        &mut room,
        1,
        M::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 1000,
        }),
    );
    assert_eq!(
        join_failure(&checked(&mut room, 3, true)).map(|f| f.0),
        Some(JoinFailure::Banned)
    );

    // The password changed meanwhile: the answer was about the old one.
    let mut room = locked_room();
    connect(&mut room, 2, "bob");
    join_at(&mut room, 2, "hunter2");
    msg(
        &mut room,
        1,
        M::UpdateSettings(proto::UpdateSettings {
            password: Some("new one".into()),
            ..Default::default()
        }),
    );
    let fx = checked(&mut room, 2, true);
    assert_eq!(join_failure(&fx), Some((JoinFailure::WrongPassword, 0)));
    // Removed meanwhile: a wrong guess no longer matters.
    join_at(&mut room, 2, "hunter2");
    msg(
        &mut room,
        1,
        M::UpdateSettings(proto::UpdateSettings {
            password: Some(String::new()),
            ..Default::default()
        }),
    );
    assert!(joined(&checked(&mut room, 2, false)));
}

#[test]
fn the_password_goes_only_to_the_check() {
    let mut room = locked_room();
    connect(&mut room, 2, "bob");
    let fx = binary(&mut room, 2, &client(join_with("hunter3")));
    let frames = sent_bytes(&fx);
    assert!(!frames.windows(7).any(|w| w == b"hunter3"));
    assert_eq!(verify_requests(&fx), vec![(2, "hunter3".to_owned())]);
}
