//! Resuming (docs/resume.md): a dropped connection keeps its place for the grace period, a
//! resume takes it back unseen and replays what it missed, numbered client messages are
//! processed once, and what the host kept brings all of it through a restart.

use super::harness::*;

/// Every frame `conn` was sent in these effects, with its `ServerMessage.seq`.
fn frames_to(fx: &[Effect], conn: ConnId) -> Vec<(u64, SM)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { to, frame, .. } if to.as_slice().contains(&conn) => {
                let m = ServerMessage::decode(frame.clone()).ok()?;
                Some((m.seq, m.msg?))
            }
            _ => None,
        })
        .collect()
}

fn joined_of(fx: &[Effect], conn: ConnId) -> proto::Joined {
    frames_to(fx, conn)
        .into_iter()
        .find_map(|(_, m)| match m {
            SM::Joined(j) => Some(j),
            _ => None,
        })
        .expect("Joined")
}

fn numbered(seq: u64, m: M) -> Vec<u8> {
    ClientMessage { msg: Some(m), seq }.encode_to_vec()
}

fn resume(token: &str, last_seq: u64) -> M {
    M::Resume(proto::Resume {
        token: token.into(),
        last_seq,
    })
}

/// ann (1) and bob (2) in a room; returns bob's Joined.
fn two_players(host: &mut Host) -> proto::Joined {
    host.enter(1, "ann");
    let fx = host.enter(2, "bob");
    host.take(1);
    joined_of(&fx, 2)
}

#[test]
fn a_dropped_player_resumes_unseen_and_gets_what_it_missed_in_order() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    assert!(!joined.resume_token.is_empty());
    assert_eq!(joined.resume_grace_ms, 15_000);

    let fx = host.drop_conn(2);
    assert!(sent(&fx).is_empty(), "nobody is told: {fx:?}");
    assert_eq!(host.room.participant_count(), 2);
    // ann plays and chats while bob is away.
    host.frame(1, &notes(NOW));
    host.send(1, chat("where did bob go"));
    host.take(1);

    host.advance(3000);
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq));
    let got = frames_to(&fx, 3);
    let SM::Resumed(r) = &got[0].1 else {
        panic!("{got:?}")
    };
    assert!(r.complete);
    assert_eq!(r.replayed, 2);
    assert_ne!(r.resume_token, joined.resume_token);
    assert!(matches!(got[1].1, SM::Notes(_)));
    assert!(matches!(&got[2].1, SM::Chat(c) if c.text == "where did bob go"));
    assert!(got[1].0 > joined.seq && got[2].0 > got[1].0);
    assert!(host.take(1).is_empty(), "ann sees no leave or join");

    // bob is back for real: ann's next note reaches connection 3.
    host.frame(1, &notes(NOW + 4000));
    assert!(matches!(host.take(3).as_slice(), [.., SM::Notes(_)]));
    // The old token is spent.
    host.connect(4, ident("bob"));
    let fx = host.send(4, resume(&joined.resume_token, 0));
    assert!(matches!(
        frames_to(&fx, 4).as_slice(),
        [(_, SM::ResumeFailed(f))] if f.reason == proto::ResumeFailure::Expired as i32
    ));
}

#[test]
fn after_the_grace_period_the_player_leaves_and_the_token_is_refused() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    host.drop_conn(2);
    host.advance(15_000);
    let fx = host.input(Input::Tick);
    assert!(matches!(
        sent(&fx).as_slice(),
        [(_, SM::ParticipantLeft(_))]
    ));
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq));
    assert!(matches!(
        frames_to(&fx, 3).as_slice(),
        [(_, SM::ResumeFailed(f))] if f.reason == proto::ResumeFailure::Expired as i32
    ));
    // A normal join follows.
    let fx = host.send(3, M::Join(proto::Join::default()));
    assert!(matches!(
        frames_to(&fx, 1).as_slice(),
        [(_, SM::ParticipantJoined(_))]
    ));
}

#[test]
fn another_users_token_is_refused_and_stays_valid_for_its_owner() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    host.drop_conn(2);
    host.connect(3, ident("mallory"));
    let fx = host.send(3, resume(&joined.resume_token, 0));
    assert!(matches!(
        frames_to(&fx, 3).as_slice(),
        [(_, SM::ResumeFailed(f))] if f.reason == proto::ResumeFailure::Invalid as i32
    ));
    host.connect(4, ident("bob"));
    let fx = host.send(4, resume(&joined.resume_token, joined.seq));
    assert!(matches!(&frames_to(&fx, 4)[0].1, SM::Resumed(r) if r.complete));
}

#[test]
fn a_half_open_connection_is_taken_over() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    // The server has not noticed bob's connection died; bob reconnects.
    host.frame(1, &notes(NOW));
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq));
    assert_eq!(host.closed(2), Some(close::RESUMED_ELSEWHERE));
    let got = frames_to(&fx, 3);
    assert!(matches!(&got[0].1, SM::Resumed(r) if r.complete && r.replayed == 1));
    assert!(host.take(1).is_empty());
}

#[test]
fn numbered_messages_are_processed_once_across_a_resume() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    let batch = |s| numbered(s, M::Notes(notes_batch(NOW)));
    host.frame(2, &batch(1));
    host.frame(2, &batch(2));
    assert_eq!(host.take(1).len(), 2);
    host.frame(2, &batch(2));
    assert!(host.take(1).is_empty(), "a duplicate is dropped");
    host.drop_conn(2);
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq));
    let SM::Resumed(r) = &frames_to(&fx, 3)[0].1 else {
        panic!()
    };
    assert_eq!(r.last_client_seq, 2);
    // The client re-sends what it was unsure of: only 3 is new.
    for s in [2, 3] {
        host.frame(3, &batch(s));
    }
    assert_eq!(host.take(1).len(), 1);
    // Pong acknowledges.
    let fx = host.send(3, M::Ping(proto::Ping { client_time: 1.0 }));
    assert!(matches!(&frames_to(&fx, 3)[0].1, SM::Pong(p) if p.last_client_seq == 3));
}

#[test]
fn a_gap_longer_than_the_buffer_gets_a_snapshot() {
    let mut host = Host::new("r");
    // A long grace: the notes below are a second apart, within the note budgets.
    host.room.set_limits(Limits {
        resume_grace_ms: 10_000_000,
        ..Limits::default()
    });
    let joined = two_players(&mut host);
    host.drop_conn(2);
    let lots = super::super::replay::REPLAY_MAX_ENTRIES + 5;
    for i in 0..lots {
        host.room.handle(
            Input::Frame {
                conn: 1,
                frame: Frame::Binary(&notes(NOW + 1000 * i as u64)),
            },
            NOW + 1000 * i as u64,
        );
    }
    host.now = NOW + 1000 * lots as u64;
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq));
    let got = frames_to(&fx, 3);
    assert_eq!(got.len(), 1);
    let SM::Resumed(r) = &got[0].1 else { panic!() };
    assert!(!r.complete);
    let snap = r.snapshot.as_ref().expect("snapshot");
    assert_eq!(snap.participants.len(), 2);
}

#[test]
fn the_crown_and_place_survive_a_restart_during_the_grace_period() {
    let mut host = Host::new("r");
    host.room.keep_replay(ReplayDurability::WhileSuspended);
    let fx = host.enter(1, "ann");
    let ann = joined_of(&fx, 1);
    let (bob, ann_seq) = {
        let fx = host.enter(2, "bob");
        // ann's client saw bob arrive: that is where she resumes from.
        let seen = frames_to(&fx, 1).iter().map(|(s, _)| *s).max();
        (joined_of(&fx, 2), seen.unwrap_or(ann.seq))
    };
    // ann's socket drops, then the host restarts (every socket is gone, bob's too).
    host.drop_conn(1);
    host.frame(2, &notes(NOW));
    host.advance(1000);
    host.wake(false);
    host.room.keep_replay(ReplayDurability::WhileSuspended);
    assert_eq!(host.room.participant_count(), 2);
    assert_eq!(host.room.ownership_proto().owner_user_id, "ann");
    // Both come back; ann gets bob's batch from the kept buffer.
    host.connect(11, ident("ann"));
    let fx = host.send(11, resume(&ann.resume_token, ann_seq));
    let got = frames_to(&fx, 11);
    assert!(
        matches!(&got[0].1, SM::Resumed(r) if r.complete && r.replayed == 1),
        "{got:?}"
    );
    host.connect(12, ident("bob"));
    let fx = host.send(12, resume(&bob.resume_token, bob.seq));
    assert!(matches!(&frames_to(&fx, 12)[0].1, SM::Resumed(_)));
    assert!(
        host.take(11)
            .iter()
            .all(|m| !matches!(m, SM::ParticipantJoined(_) | SM::ParticipantLeft(_)))
    );
}

#[test]
fn a_goodbye_leaves_at_once_and_resuming_can_be_turned_off() {
    let mut host = Host::new("r");
    two_players(&mut host);
    let fx = host.disconnect(2);
    assert!(matches!(
        sent(&fx).as_slice(),
        [(_, SM::ParticipantLeft(_))]
    ));

    let mut host = Host::new("r");
    host.room.set_limits(Limits {
        resume_grace_ms: 0,
        ..Limits::default()
    });
    let joined = two_players(&mut host);
    assert!(joined.resume_token.is_empty());
    let fx = host.drop_conn(2);
    assert!(matches!(
        sent(&fx).as_slice(),
        [(_, SM::ParticipantLeft(_))]
    ));
}

#[test]
fn a_stopping_room_keeps_what_it_processed_so_a_restart_does_not_process_it_twice() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    host.frame(2, &numbered(1, M::Notes(notes_batch(NOW))));
    host.take(1);
    // A drain: the host stops the room (no ping since the batch), then restarts it.
    host.input(Input::Stop);
    host.wake(false);
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq));
    let SM::Resumed(r) = &frames_to(&fx, 3)[0].1 else {
        panic!("{fx:?}")
    };
    assert_eq!(r.last_client_seq, 1, "the batch before the stop was kept");
}

#[test]
fn a_grace_period_started_by_a_restart_does_not_start_over_at_each_wake() {
    let mut host = Host::new("r");
    two_players(&mut host);
    // The host restarts: both sockets are gone, so both players are suspended from now.
    host.wake(false);
    let until = host.room.next_deadline().expect("the grace period's end");
    // The room's memory goes again before that (the edge hibernates when idle): the end stays.
    host.advance(5000);
    host.wake(false);
    assert_eq!(host.room.next_deadline(), Some(until));
    host.advance(until - host.now);
    let fx = host.input(Input::Tick);
    assert_eq!(host.room.participant_count(), 0, "{fx:?}");
}

#[test]
fn a_restore_starts_the_configured_grace_period() {
    let mut host = Host::new("r");
    two_players(&mut host);
    // The host restarts: both sockets are gone; the host's grace is 5 s.
    let limits = Limits {
        resume_grace_ms: 5000,
        ..Limits::default()
    };
    let (room, _) = Room::restore_configured(
        "r",
        Some(host.stored.clone()),
        [],
        host.kept.clone(),
        limits,
        host.now,
        SEED,
    );
    assert_eq!(room.suspended_count(), 2);
    assert_eq!(room.next_deadline(), Some(host.now + 5000));
}

#[test]
fn a_resume_from_a_number_the_room_never_gave_gets_a_snapshot() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    host.drop_conn(2);
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq + 1_000_000));
    let got = frames_to(&fx, 3);
    assert!(
        matches!(&got[0].1, SM::Resumed(r) if !r.complete && r.snapshot.is_some()),
        "{got:?}"
    );
}

#[test]
fn a_complete_resume_ends_with_the_current_quota() {
    let mut host = Host::new("r");
    let joined = two_players(&mut host);
    host.drop_conn(2);
    host.connect(3, ident("bob"));
    let fx = host.send(3, resume(&joined.resume_token, joined.seq));
    let got = frames_to(&fx, 3);
    assert!(matches!(got.last(), Some((0, SM::Quota(_)))), "{got:?}");
}
