//! Resuming after a dropped connection (docs/resume.md), on every target: a player whose socket
//! is cut (no close frame: the server sees an abnormal close) comes back within the grace period
//! without anyone seeing it leave, gets what it missed in order, and what it sent on the dead
//! socket arrives once; after the grace period it is a normal rejoin; tokens of others, spent or
//! expired tokens are refused; a resume takes over a half-open socket (closed with 4005).
//!
//! The targets run with `RESUME_GRACE_MS` = [`GRACE_MS`] (`targets.rs`).

use crate::*;
use e2e_tests::proto::{ResumeFailure, client_message, server_message};
use std::time::Duration;

/// The targets' grace period (`targets.rs` sets it).
const GRACE_MS: u64 = e2e_tests::targets::RESUME_GRACE_MS;

fn chat(text: &str) -> client_message::Msg {
    client_message::Msg::Chat(proto::SendChat { text: text.into() })
}

/// The note of a one-note batch.
fn note_of(b: &proto::NoteBatch) -> Option<u32> {
    match b.events.first()?.kind.as_ref()? {
        proto::note_event::Kind::NoteOn(n) => Some(n.note),
        _ => None,
    }
}

/// Joins and checks the room offers resuming (so every trial fails when it is off).
async fn join_resumable(c: &mut Client) -> proto::Joined {
    let joined = c.join().await;
    assert!(
        !joined.resume_token.is_empty() && joined.resume_grace_ms as u64 == GRACE_MS,
        "the room offers resuming with the configured grace: {joined:?}"
    );
    joined
}

/// Ava and Bo joined in a new room (Ava saw Bo arrive), and Bo's participant id.
async fn ava_and_bo(s: &Server, prefix: &str) -> (Client, Client, String) {
    let room = unique(prefix);
    let mut a = s.player(&room, "Ava").await;
    let mut b = s.player(&room, "Bo").await;
    join_resumable(&mut a).await;
    join_resumable(&mut b).await;
    a.recv_matching(|m| matches!(m, server_message::Msg::ParticipantJoined(_)).then_some(()))
        .await;
    let bo = b.id().to_owned();
    (a, b, bo)
}

/// The note of the next batch from `who`, asserting `who` neither leaves nor arrives meanwhile.
async fn next_note_from(c: &mut Client, who: &str) -> Option<u32> {
    loop {
        let m = c.recv().await;
        assert!(
            !leave_or_join_of(&m, who),
            "others see no leave or join: {m:?}"
        );
        if let server_message::Msg::Notes(n) = &m
            && n.sender_id == who
        {
            return note_of(n);
        }
    }
}

/// Whether `m` is `who` leaving or arriving.
fn leave_or_join_of(m: &server_message::Msg, who: &str) -> bool {
    match m {
        server_message::Msg::ParticipantLeft(l) => l.participant_id == who,
        server_message::Msg::ParticipantJoined(j) => {
            j.participant.as_ref().is_some_and(|p| p.id == who)
        }
        _ => false,
    }
}

pub async fn a_cut_player_resumes_and_misses_nothing(s: &Server) {
    let (mut a, mut b, bo) = ava_and_bo(s, "resume-cut").await;

    // One numbered batch before the cut: processed, then never again.
    b.send_numbered(note_on(61, 90)).await;
    b.cut();
    // While Bo is gone: Ava plays and chats; Bo's batches go down the dead socket.
    for i in 0..4 {
        a.send(note_on(40 + i, 80)).await;
        a.send(chat(&format!("while away {i}"))).await;
        b.send_numbered(note_on(62 + i, 90)).await;
    }
    let resumed = b.resume().await.expect("resumed within the grace period");
    assert!(
        resumed.complete,
        "everything could be replayed: {resumed:?}"
    );
    assert_eq!(resumed.last_client_seq, 1, "the batch sent before the cut");
    assert!(!resumed.resume_token.is_empty(), "a fresh token");
    // A client re-sending what the room already has changes nothing.
    b.send_seq(1, note_on(61, 90)).await;
    b.send_seq(3, note_on(63, 90)).await;
    b.send(note_on(99, 1)).await; // the end marker

    // Bo gets, in order, every batch and chat message of Ava's sent meanwhile.
    let (mut notes, mut chats) = (Vec::new(), Vec::new());
    while notes.len() < 4 || chats.len() < 4 {
        match b.recv().await {
            server_message::Msg::Notes(n) => notes.extend(note_of(&n)),
            server_message::Msg::Chat(c) if c.text.starts_with("while away") => chats.push(c.text),
            _ => {}
        }
    }
    assert_eq!(notes, [40, 41, 42, 43]);
    assert_eq!(
        chats,
        (0..4)
            .map(|i| format!("while away {i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(b.resume.out_of_order, 0, "seq only grows");

    // Ava saw Bo's batches once each, in order, and never saw Bo leave or arrive.
    let mut from_bo = Vec::new();
    while from_bo.last() != Some(&99) {
        from_bo.extend(next_note_from(&mut a, &bo).await);
    }
    assert_eq!(from_bo, [61, 62, 63, 64, 65, 99]);
    // And the next ping acknowledges all of them.
    b.send(client_message::Msg::Ping(proto::Ping { client_time: 1.0 }))
        .await;
    b.recv_matching(|m| matches!(m, server_message::Msg::Pong(_)).then_some(()))
        .await;
    assert!(b.resume.unacked.is_empty(), "{:?}", b.resume.unacked);
    a.close().await;
    b.close().await;
}

pub async fn a_resume_after_the_grace_period_is_a_rejoin(s: &Server) {
    let (mut a, mut b, bo) = ava_and_bo(s, "resume-late").await;
    b.cut();
    // Nobody sees Bo leave before the grace period is over (a drop is not a goodbye)...
    match a.next_event(Duration::from_millis(GRACE_MS / 2)).await {
        None => {}
        Some(e) => panic!("nothing within half the grace period, got {e:?}"),
    }
    // ...and everyone does after it.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(GRACE_MS) + RECV_TIMEOUT * 3;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match a.next_event(left).await {
            Some(Event::Msg(server_message::Msg::ParticipantLeft(l))) if l.participant_id == bo => {
                break;
            }
            Some(Event::Msg(_)) => {}
            other => panic!("expected Bo to leave after the grace period, got {other:?}"),
        }
    }
    let failed = b.resume().await.expect_err("too late to resume");
    assert_eq!(failed.reason, ResumeFailure::Expired as i32, "{failed:?}");
    // The connection stays open for a normal join, which everyone sees.
    join_resumable(&mut b).await;
    a.recv_matching(|m| matches!(m, server_message::Msg::ParticipantJoined(_)).then_some(()))
        .await;
    a.close().await;
    b.close().await;
}

pub async fn stolen_and_spent_resume_tokens_are_refused(s: &Server) {
    let room = unique("resume-steal");
    let mut b = s.player(&room, "Bo").await;
    join_resumable(&mut b).await;
    let stolen = b.resume.token.clone();
    b.cut();
    // Another user with Bo's token: refused, and the token still works for Bo.
    let mut eve = s.player(&room, "Eve").await;
    eve.resume.token = stolen.clone();
    let failed = eve.resume().await.expect_err("not Eve's token");
    assert_eq!(failed.reason, ResumeFailure::Invalid as i32, "{failed:?}");
    b.resume().await.expect("Bo's own token still works");
    assert_ne!(b.resume.token, stolen, "a fresh token");
    // The spent token is worth nothing, even to Bo, and a made-up one neither.
    let mut again = b.reconnect().await;
    again.resume.token = stolen;
    let failed = again.resume().await.expect_err("a spent token");
    assert_eq!(failed.reason, ResumeFailure::Expired as i32, "{failed:?}");
    again.resume.token = "AAAAAAAAAAAAAAAAAAAAAA".into();
    let failed = again.resume().await.expect_err("a made-up token");
    assert_eq!(failed.reason, ResumeFailure::Expired as i32, "{failed:?}");
    // Eve's connection was left open: she can still join.
    join_resumable(&mut eve).await;
    for c in [b, again, eve] {
        c.close().await;
    }
}

pub async fn a_resume_takes_over_a_half_open_socket(s: &Server) {
    let (mut a, mut old, bo) = ava_and_bo(s, "resume-takeover").await;
    // The old socket is still open as far as the server knows.
    let mut new = old.reconnect().await;
    let resumed = new.resume().await.expect("takes the place over");
    assert_eq!(resumed.you.map(|p| p.id), Some(bo.clone()));
    match old.next_event(RECV_TIMEOUT).await {
        Some(Event::Closed(Some(f))) => assert_eq!(u16::from(f.code), 4005, "{f:?}"),
        other => panic!("the old socket is closed with 4005, got {other:?}"),
    }
    // Live traffic reaches the new socket, and Ava saw nobody leave or arrive.
    a.send(note_on(50, 70)).await;
    new.recv_matching(|m| match m {
        server_message::Msg::Notes(n) if note_of(n) == Some(50) => Some(()),
        _ => None,
    })
    .await;
    a.send(client_message::Msg::Ping(proto::Ping { client_time: 1.0 }))
        .await;
    loop {
        let m = a.recv().await;
        assert!(
            !leave_or_join_of(&m, &bo),
            "others see no leave or join: {m:?}"
        );
        if matches!(m, server_message::Msg::Pong(_)) {
            break;
        }
    }
    a.close().await;
    new.close().await;
}

pub async fn players_resume_after_the_server_restarts(s: &Server) {
    let (mut a, mut b, bo) = ava_and_bo(s, "resume-restart").await;
    let ava = a.id().to_owned();
    b.send_numbered(note_on(61, 90)).await;
    assert_eq!(next_note_from(&mut a, &bo).await, Some(61));
    // Bo's steady ping acknowledges the batch: what a ping acknowledged is kept on every host
    // (the edge has no shutdown hook to keep more, docs/resume.md §4).
    b.send(client_message::Msg::Ping(proto::Ping { client_time: 1.0 }))
        .await;
    b.recv_matching(|m| match m {
        server_message::Msg::Pong(p) if p.last_client_seq >= 1 => Some(()),
        _ => None,
    })
    .await;

    s.restart();

    // Both sockets went with the server; both players take their places back.
    for (c, id) in [(&mut a, &ava), (&mut b, &bo)] {
        let _ = c.next_event(RECV_TIMEOUT).await;
        c.cut();
        let resumed = c.resume().await.expect("resumed after the restart");
        assert_eq!(resumed.you.map(|p| p.id).as_ref(), Some(id));
    }
    // Bo's batch was processed once, before the restart, and Ava never saw Bo leave.
    assert!(b.resume.unacked.is_empty(), "{:?}", b.resume.unacked);
    b.send_numbered(note_on(62, 90)).await;
    assert_eq!(next_note_from(&mut a, &bo).await, Some(62), "not 61 again");
    a.close().await;
    b.close().await;
}
