//! The crown: dropped, waited for, claimed and returned ([`super::super::crown`]).

use super::harness::*;

#[test]
fn the_crown_drops_waits_and_returns() {
    let mut room = room("r");
    let fx = enter(&mut room, 1, "alice");
    let msgs = sent(&fx);
    assert!(
        matches!(&msgs[..], [(_, server_message::Msg::Joined(_))]),
        "the creator hears only Joined: {msgs:?}"
    );
    enter(&mut room, 2, "bob");
    assert_eq!(
        room.ownership_proto().owner_id,
        pid("alice"),
        "the creator owns the room"
    );
    room.handle(Input::Disconnect { conn: 1 }, NOW);
    let o = room.ownership_proto();
    assert_eq!((o.owner_id.as_str(), o.claimable_at), ("", NOW + 15_000));
    let claim = || client_message::Msg::ClaimOwnership(proto::ClaimOwnership {});
    assert_eq!(
        error_code(&msg_at(&mut room, 2, claim(), NOW + 14_999)),
        Some(ErrorCode::NotYet)
    );
    // The previous owner may come back and gets the crown back at once.
    let fx = enter(&mut room, 3, "alice");
    assert!(
        find(&fx, |m| matches!(m, server_message::Msg::OwnerChanged(_))
            .then_some(()))
        .is_some()
    );
    assert_eq!(room.ownership_proto().owner_id, pid("alice"));
    // She drops it; bob waits 15 s, then claims it.
    msg(
        &mut room,
        3,
        client_message::Msg::DropOwnership(proto::DropOwnership {}),
    );
    assert_eq!(
        error_code(&msg_at(&mut room, 2, claim(), NOW + 1000)),
        Some(ErrorCode::NotYet)
    );
    assert_eq!(
        error_code(&msg_at(&mut room, 2, claim(), NOW + 15_000)),
        None
    );
    assert_eq!(room.ownership_proto().owner_id, pid("bob"));
    // Bob hands it back.
    msg(
        &mut room,
        2,
        client_message::Msg::TransferOwnership(proto::TransferOwnership {
            participant_id: pid("alice"),
        }),
    );
    assert_eq!(room.ownership_proto().owner_id, pid("alice"));
    // Lobbies have no crown.
    let mut lobby = Room::new("lobby", SEED);
    enter(&mut lobby, 1, "alice");
    assert_eq!(lobby.ownership_proto().owner_id, "");
    assert_eq!(
        error_code(&msg(&mut lobby, 1, claim())),
        Some(ErrorCode::NotAllowed)
    );
}
