//! Participants and connections: one user with many connections is one participant
//! ([`super::super::members`]).

use super::harness::*;

#[test]
fn one_user_two_connections_is_one_participant() {
    let mut host = Host::new("r");
    host.enter(1, "alice");
    host.enter(2, "bob");
    let fx = host.enter(3, "alice");
    assert_eq!(host.room.participant_count(), 2);
    assert!(
        sent(&fx)
            .iter()
            .all(|(_, m)| !matches!(m, SM::ParticipantJoined(_)))
    );
    for conn in [1, 2, 3] {
        host.take(conn);
    }
    // Her notes from one tab reach her other tab and bob.
    host.frame(1, &notes(NOW));
    assert!(host.take(1).is_empty());
    for conn in [2, 3] {
        let got = host.take(conn);
        assert!(matches!(got.as_slice(), [SM::Notes(_)]), "{conn}: {got:?}");
    }
    assert!(
        sent(&host.disconnect(1)).is_empty(),
        "still present via conn 3"
    );
    let msgs = sent(&host.disconnect(3));
    assert!(matches!(
        &msgs[..],
        [(_, SM::ParticipantLeft(_)), (_, SM::OwnerChanged(_))]
    ));
}
