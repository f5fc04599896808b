//! What the room counts for the hosts' metrics (`counting.rs`): exactly what it did.

use super::harness::*;
use crate::metrics::{Fam, IN_KINDS, OUT_KINDS};

fn kind(list: &[&str], name: &str) -> usize {
    list.iter().position(|k| *k == name).unwrap_or(usize::MAX)
}

#[test]
fn the_room_counts_messages_relays_drops_refusals_and_errors() {
    let mut room = room_with(|s| {
        s.settings.max_players = 2;
        s.settings.owner_only_play = true;
    });
    enter(&mut room, 1, "owner");
    enter(&mut room, 2, "bob");
    let _ = room.take_counters();
    // Relayed: one event to one listener.
    binary(&mut room, 1, &notes(NOW));
    // Refused whole: owner-only.
    binary(&mut room, 2, &notes(NOW));
    // A third player: the room is full.
    connect(&mut room, 3, "carol");
    binary(&mut room, 3, &join());
    // Notes before joining: a typed error; a text frame: undecoded.
    binary(&mut room, 3, &notes(NOW));
    room.handle(
        Input::Frame {
            conn: 3,
            frame: Frame::Text("hi"),
        },
        NOW,
    );
    let c = room.take_counters();
    assert_eq!(c.get(Fam::NotesRelayed, 0), 1);
    assert_eq!(
        c.get(Fam::NotesDropped, NotesDroppedReason::OwnerOnly as usize),
        1
    );
    assert_eq!(c.get(Fam::JoinFailures, JoinFailure::RoomFull as usize), 1);
    assert_eq!(c.get(Fam::Errors, ErrorCode::NotJoined as usize), 1);
    assert_eq!(c.get(Fam::Errors, ErrorCode::TextFrame as usize), 1);
    assert_eq!(c.get(Fam::MessagesIn, kind(IN_KINDS, "notes")), 3);
    assert_eq!(c.get(Fam::MessagesIn, kind(IN_KINDS, "join")), 1);
    assert_eq!(c.get(Fam::MessagesIn, 0), 1);
    assert_eq!(c.get(Fam::MessagesOut, kind(OUT_KINDS, "notes")), 1);
    assert_eq!(c.get(Fam::MessagesOut, kind(OUT_KINDS, "notes_dropped")), 1);
    assert_eq!(c.get(Fam::MessagesOut, kind(OUT_KINDS, "welcome")), 1);
    // Taken: nothing left.
    assert!(room.take_counters().is_empty());
}

#[test]
fn sockets_closed_for_an_ended_session_or_changed_roles_are_counted() {
    let mut room = room("r");
    connect_as(&mut room, 1, member("alice", "s1", None));
    connect_as(&mut room, 2, member("alice", "s2", None));
    connect_as(&mut room, 3, member("bob", "s3", None));
    let _ = room.take_counters();
    room.handle(
        Input::SessionEnded {
            user_id: "alice".into(),
            session_id: None,
        },
        NOW,
    );
    room.handle(
        Input::IdentityChanged {
            user_id: "bob".into(),
        },
        NOW,
    );
    assert_eq!(room.take_counters().get(Fam::SessionCloses, 0), 3);
}
