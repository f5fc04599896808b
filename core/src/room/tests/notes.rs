//! Note batches: relay to everyone else, the note quota, owner-only play and muted players
//! ([`super::super::notes`]).

use super::harness::*;

#[test]
fn notes_reach_everyone_else_once_encoded_and_stamped() {
    let mut room = room_with(|s| s.settings.max_players = 99);
    for i in 0..50 {
        enter(&mut room, i, &format!("user{i}"));
    }
    let fx = binary(&mut room, 7, &notes(NOW));
    // One effect, one frame, 49 targets: the cost of encoding does not grow with the room.
    assert_eq!(fx.len(), 1);
    let msgs = sent(&fx);
    let (to, server_message::Msg::Notes(batch)) = &msgs[0] else {
        panic!()
    };
    assert_eq!(to.len(), 49);
    assert!(!to.contains(&7));
    assert_eq!(
        batch.sender_id,
        participant_id("user7"),
        "server stamps the sender, not the client"
    );
    assert_eq!(batch.events.len(), 1);
}

#[test]
fn note_quota_drops_excess_and_tells_the_sender() {
    let mut room = Room::new("lobby", SEED);
    let fx = enter(&mut room, 1, "alice");
    let q = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => j.quota,
        _ => None,
    })
    .unwrap();
    assert_eq!(
        (q.allowance, q.max, q.interval_ms, q.points, q.unlimited),
        (200, 600, 2000, 600, false)
    );
    enter(&mut room, 2, "bob");
    let batch = |n: usize| {
        client_message::Msg::Notes(proto::NoteBatch {
            time: NOW,
            events: (0..n)
                .map(|i| NoteEvent {
                    delay: 0,
                    kind: Some(if i % 2 == 0 {
                        note_event::Kind::NoteOn(NoteOn {
                            note: 60,
                            velocity: 80,
                            channel: 0,
                        })
                    } else {
                        note_event::Kind::NoteOff(proto::NoteOff {
                            note: 60,
                            channel: 0,
                        })
                    }),
                })
                .collect(),
            sender_id: String::new(),
        })
    };
    // 4 batches of 300 events = 600 note-ons: exactly the quota.
    for _ in 0..4 {
        let fx = msg(&mut room, 1, batch(300));
        assert!(
            find(&fx, |m| matches!(m, server_message::Msg::NotesDropped(_))
                .then_some(()))
            .is_none()
        );
    }
    // The next note-ons are dropped, note-offs still pass (no stuck notes), sender is told.
    let fx = msg(&mut room, 1, batch(10));
    let d = find(&fx, |m| match m {
        server_message::Msg::NotesDropped(d) => Some(*d),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        (d.dropped, d.relayed, d.reason),
        (5, 5, NotesDroppedReason::Quota as i32)
    );
    let relayed = find(&fx, |m| match m {
        server_message::Msg::Notes(b) => Some(b.events.len()),
        _ => None,
    });
    assert_eq!(relayed, Some(5));
    // Two seconds later the allowance is back.
    let fx = msg_at(&mut room, 1, batch(2), NOW + 2000);
    assert!(
        find(&fx, |m| matches!(m, server_message::Msg::NotesDropped(_))
            .then_some(()))
        .is_none()
    );
}

#[test]
fn black_midi_lifts_the_quota_and_owner_plays_with_more() {
    let mut room = room("r");
    let fx = enter(&mut room, 1, "owner");
    let q = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => j.quota,
        _ => None,
    })
    .unwrap();
    assert_eq!(q.max, 1800, "the owner's quota");
    let fx = enter(&mut room, 2, "bob");
    let q = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => j.quota,
        _ => None,
    })
    .unwrap();
    assert_eq!(q.max, 1200);
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            allow_black_midi: Some(true),
            ..Default::default()
        }),
    );
    let quotas: Vec<_> = sent(&fx)
        .into_iter()
        .filter_map(|(to, m)| match m {
            server_message::Msg::Quota(q) => Some((to, q.unlimited)),
            _ => None,
        })
        .collect();
    assert_eq!(quotas, vec![(vec![1], true), (vec![2], true)]);
}

#[test]
fn owner_only_play_and_muted_notes_are_refused_with_a_reason() {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    enter(&mut room, 2, "bob");
    msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            owner_only_play: Some(true),
            ..Default::default()
        }),
    );
    let fx = binary(&mut room, 2, &notes(NOW));
    let d = find(&fx, |m| match m {
        server_message::Msg::NotesDropped(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(d, Some(NotesDroppedReason::OwnerOnly as i32));
    assert!(
        find(&fx, |m| matches!(m, server_message::Msg::Notes(_))
            .then_some(()))
        .is_none()
    );
    // The owner plays.
    assert!(
        find(&binary(&mut room, 1, &notes(NOW)), |m| matches!(
            m,
            server_message::Msg::Notes(_)
        )
        .then_some(()))
        .is_some()
    );
    msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            owner_only_play: Some(false),
            ..Default::default()
        }),
    );
    msg(
        &mut room,
        1,
        client_message::Msg::Mute(proto::Mute {
            participant_id: pid("bob"),
            notes: true,
            chat: false,
        }),
    );
    let d = find(&binary(&mut room, 2, &notes(NOW)), |m| match m {
        server_message::Msg::NotesDropped(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(d, Some(NotesDroppedReason::Muted as i32));
}
