//! Participants and connections: one user with many connections is one participant
//! ([`super::super::members`]).

use super::harness::*;

#[test]
fn one_user_two_connections_is_one_participant() {
    let mut room = room("r");
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
        [
            (_, server_message::Msg::ParticipantLeft(_)),
            (_, server_message::Msg::OwnerChanged(_))
        ]
    ));
}
