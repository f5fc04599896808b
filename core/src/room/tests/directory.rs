//! The room directory: reports, subscriptions to the room list, refused and released
//! subscriptions ([`super::super::directory`]).

use super::harness::*;

#[test]
fn the_room_reports_joins_leaves_and_settings_but_not_notes() {
    let mut room = room("r");
    assert!(
        reports(&connect(&mut room, 1, "alice")).is_empty(),
        "connecting is not joining"
    );
    let r = reports(&binary(&mut room, 1, &join()));
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].players, r[0].owner_name.as_str(), r[0].capacity),
        (1, "name of alice", 20)
    );
    assert!(
        reports(&enter(&mut room, 2, "bob"))
            .iter()
            .any(|s| s.players == 2)
    );
    assert!(reports(&binary(&mut room, 1, &notes(NOW))).is_empty());
    assert!(reports(&msg(&mut room, 1, chat("hi"))).is_empty());
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            visible: Some(false),
            password: Some("x".into()),
            ..Default::default()
        }),
    );
    let r = reports(&fx);
    assert!(r.len() == 1 && !r[0].visible && r[0].locked, "{r:?}");
    let r = reports(&room.handle(Input::Disconnect { conn: 2 }, NOW));
    assert_eq!(r[0].players, 1);
    // Waking up always reports (the directory may hold a stale entry).
    let (_, fx) = Room::restore("r", Some(room.stored().clone()), [], NOW, SEED);
    assert_eq!(reports(&fx)[0].players, 0);
}

#[test]
fn subscribers_get_the_list_and_changes() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    connect(&mut room, 2, "bob");
    let sub = || client_message::Msg::SubscribeRooms(proto::SubscribeRooms {});
    let fx = msg(&mut room, 1, sub());
    assert!(
        fx.contains(&Effect::Directory(DirectoryOp::Subscribe {
            conn: 1,
            user_id: "alice".into()
        })),
        "before joining too"
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Remember(r) if r.subscribed))
    );
    let list = vec![room.summary(NOW)];
    let msgs = sent(&room.handle(
        Input::RoomList {
            conn: 1,
            rooms: list,
        },
        NOW,
    ));
    assert!(
        matches!(&msgs[..], [(to, server_message::Msg::RoomList(l))] if to == &[1] && l.rooms.len() == 1)
    );
    let delta = crate::lobby::Delta {
        upserted: vec![],
        removed: vec!["gone".into()],
    };
    let msgs = sent(&room.handle(Input::RoomListChanged(delta.clone()), NOW));
    assert!(
        matches!(&msgs[..], [(to, server_message::Msg::RoomListChanged(c))] if to == &[1] && c.removed == ["gone"])
    );
    // The last subscriber leaving unsubscribes the room.
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::UnsubscribeRooms(proto::UnsubscribeRooms {}),
    );
    assert!(fx.contains(&Effect::Directory(DirectoryOp::Unsubscribe)));
    assert!(room.handle(Input::RoomListChanged(delta), NOW).is_empty());
    msg(&mut room, 2, sub());
    assert!(
        room.handle(Input::Disconnect { conn: 2 }, NOW)
            .contains(&Effect::Directory(DirectoryOp::Unsubscribe))
    );
    assert!(!room.has_subscribers());
}

#[test]
fn a_refused_subscription_is_undone_and_told() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    connect(&mut room, 2, "bob");
    msg(&mut room, 1, M::SubscribeRooms(proto::SubscribeRooms {}));
    msg(&mut room, 2, M::SubscribeRooms(proto::SubscribeRooms {}));
    let fx = room.handle(Input::SubscribeRefused { conn: 1 }, NOW);
    assert_eq!(error_code(&fx), Some(ErrorCode::TooManySubscriptions));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Remember(r) if r.conn == 1 && !r.subscribed))
    );
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Directory(DirectoryOp::Unsubscribe))),
        "bob still follows the list"
    );
    let fx = room.handle(Input::SubscribeRefused { conn: 2 }, NOW);
    assert!(fx.contains(&Effect::Directory(DirectoryOp::Unsubscribe)));
    assert!(!room.has_subscribers());
    // Late or repeated refusals change nothing.
    assert!(
        room.handle(Input::SubscribeRefused { conn: 2 }, NOW)
            .is_empty()
    );
    assert!(
        room.handle(Input::SubscribeRefused { conn: 9 }, NOW)
            .is_empty()
    );
}

/// A user's last subscribed connection going frees that user's place in the directory's
/// per-user cap even while others in the room still follow the list; another connection of
/// the same user keeps it.
#[test]
fn a_users_last_subscription_in_a_busy_room_is_released() {
    let mut room = room("r");
    for (conn, user) in [(1, "alice"), (2, "alice"), (3, "bob")] {
        connect(&mut room, conn, user);
        msg(&mut room, conn, M::SubscribeRooms(proto::SubscribeRooms {}));
    }
    let unsub = || M::UnsubscribeRooms(proto::UnsubscribeRooms {});
    let directory = |fx: &[Effect]| -> Vec<DirectoryOp> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Directory(
                    op @ (DirectoryOp::Unsubscribe | DirectoryOp::UnsubscribeUser { .. }),
                ) => Some(op.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        directory(&msg(&mut room, 1, unsub())),
        [],
        "alice still follows on conn 2"
    );
    assert_eq!(
        directory(&room.handle(Input::Disconnect { conn: 2 }, NOW)),
        [DirectoryOp::UnsubscribeUser {
            user_id: "alice".into()
        }]
    );
    assert_eq!(
        directory(&msg(&mut room, 1, unsub())),
        [],
        "not subscribed: nothing to end"
    );
    assert_eq!(
        directory(&msg(&mut room, 3, unsub())),
        [DirectoryOp::Unsubscribe],
        "the room's last subscriber"
    );
}
