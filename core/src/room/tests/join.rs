//! Joining and leaving: Welcome, Joined, who is told, join-or-create ([`super::super::join`]).

use super::harness::*;

#[test]
fn welcome_on_connect() {
    let mut room = room("r");
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
    let mut room = room("r");
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
fn disconnect_tells_the_others() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let fx = room.handle(Input::Disconnect { conn: 1 }, NOW);
    let msgs = sent(&fx);
    // Alice created the room, so her crown drops as she leaves.
    let [
        (to, server_message::Msg::ParticipantLeft(l)),
        (_, server_message::Msg::OwnerChanged(o)),
    ] = &msgs[..]
    else {
        panic!("{msgs:?}")
    };
    assert_eq!(to, &[2]);
    let o = o.ownership.as_ref().unwrap();
    assert_eq!(
        (o.owner_id.as_str(), o.previous_owner_user_id.as_str()),
        ("", "alice")
    );
    assert_eq!(l.participant_id, participant_id("alice"));
    assert_eq!(room.participant_count(), 1);
    // A second disconnect of the same connection is harmless.
    assert!(room.handle(Input::Disconnect { conn: 1 }, NOW).is_empty());
}

#[test]
fn join_or_create_applies_the_creators_settings_once() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    let create = |max: u32| {
        client_message::Msg::Join(proto::Join {
            password: String::new(),
            create_settings: Some(proto::UpdateSettings {
                max_players: Some(max),
                visible: Some(false),
                ..Default::default()
            }),
        })
    };
    assert_eq!(
        error_code(&msg(&mut room, 1, create(0))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(room.participant_count(), 0, "refused settings: not created");
    let fx = msg(&mut room, 1, create(5));
    let j = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => Some(j.clone()),
        _ => None,
    })
    .unwrap();
    let s = j.settings.unwrap();
    assert_eq!((s.max_players, s.visible), (5, false));
    assert_eq!(j.ownership.unwrap().owner_id, pid("alice"));
    // Later joiners' settings are ignored: the room exists.
    connect(&mut room, 2, "bob");
    msg(&mut room, 2, create(9));
    assert_eq!(room.settings_proto().max_players, 5);
    // Lobbies ignore them too.
    let mut lobby = Room::new("lobby", SEED);
    connect(&mut lobby, 1, "alice");
    msg(&mut lobby, 1, create(5));
    assert_eq!(lobby.settings_proto().max_players, 30);
}
