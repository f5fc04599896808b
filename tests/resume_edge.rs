//! Resuming at the edge when the Room object loses its memory during the grace period
//! (docs/resume.md §4): a dropped player's session and what was broadcast meanwhile are kept in
//! the object's SQLite, so the player resumes, with its place and crown, after the object
//! hibernated (workerd evicts an idle object; its other sockets stay open) or after the
//! server restarted (every socket lost, the room rebuilt from storage).
//!
//! These run on an edge server of their own with a 60 s grace period: eviction needs about
//! ten idle seconds and a restart some more, longer than the default grace leaves to spare.

use crate::basics::room_info;
use crate::*;
use e2e_tests::proto::{client_message, server_message};
use e2e_tests::rigs::Rigs;
use std::time::Duration;

static RIGS: Rigs<Server> = Rigs::new();

const GRACE_MS: &str = "60000";

async fn with_rig<F: std::future::Future<Output = ()>>(
    target: &Server,
    trial: impl FnOnce(&'static Server) -> F,
) {
    let start = |_| Server::start_edge_with(&[("RESUME_GRACE_MS".into(), GRACE_MS.into())]);
    RIGS.with(target.host, start, trial).await;
}

/// Stops the rig, if one was started (at the end of the run).
pub fn stop_rigs() {
    for rig in RIGS.started() {
        rig.shutdown();
    }
}

/// A player of a fixed user, so it can connect again as itself.
async fn player(s: &Server, room: &str, user: &str) -> Client {
    s.player_as(room, user, &["guest"]).await
}

/// Connects as `user` again and resumes with `token`; the Resumed and the messages replayed.
async fn resume(
    s: &Server,
    room: &str,
    user: &str,
    token: &str,
) -> (Client, proto::Resumed, Vec<server_message::Msg>) {
    let mut c = player(s, room, user).await;
    c.send(client_message::Msg::Resume(proto::Resume {
        token: token.into(),
        // Nothing numbered was received: everything since the join that is still kept.
        last_seq: 0,
    }))
    .await;
    let resumed = match c.recv().await {
        server_message::Msg::Resumed(r) => r,
        other => panic!("expected Resumed, got {other:?}"),
    };
    let mut replayed = Vec::new();
    for _ in 0..resumed.replayed {
        replayed.push(c.recv().await);
    }
    (c, resumed, replayed)
}

/// A complete resume into the participant `me`.
fn complete_in_place(resumed: &proto::Resumed, me: &str) {
    assert!(
        resumed.complete,
        "the kept replay covers the gap: {resumed:?}"
    );
    assert_eq!(resumed.you.as_ref().map(|p| p.id.as_str()), Some(me));
}

/// The room's info before and after says the object was rebuilt meanwhile.
fn evicted(before: &serde_json::Value, after: &serde_json::Value) {
    assert!(
        after["instance_started_at"].as_u64() > before["instance_started_at"].as_u64(),
        "the object was evicted and rebuilt (before {before}, after {after})"
    );
}

/// The chat texts and note batches (by first key) among `msgs`, in order.
fn traffic(msgs: &[server_message::Msg]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            server_message::Msg::Chat(c) => Some(format!("chat {}", c.text)),
            server_message::Msg::Notes(n) => first_note(n).map(|k| format!("note {k}")),
            _ => None,
        })
        .collect()
}

fn first_note(batch: &proto::NoteBatch) -> Option<u32> {
    match batch.events.first()?.kind {
        Some(proto::note_event::Kind::NoteOn(on)) => Some(on.note),
        _ => None,
    }
}

/// What reaches `c` until it has been quiet for `within`; a `ParticipantLeft` or the end of its
/// socket fails the trial (the dropped player must not be seen leaving).
async fn no_leave(c: &mut Client, within: Duration) -> Vec<server_message::Msg> {
    let mut seen = Vec::new();
    while let Some(e) = c.next_event(within).await {
        match e {
            Event::Msg(server_message::Msg::ParticipantLeft(l)) => {
                panic!("others saw the dropped player leave: {l:?}")
            }
            Event::Msg(m) => seen.push(m),
            other => panic!("the staying player's socket ended: {other:?}"),
        }
    }
    seen
}

/// A player drops (no close frame: workerd reports 1006); the room object is evicted while it
/// is away; the player resumes: same participant, still crowned, sent what it missed, and
/// nobody saw it leave.
pub async fn a_player_resumes_after_the_room_object_hibernated(target: &Server) {
    with_rig(target, |s| async move {
        let room = unique("resume-hibernate");
        let alice = format!("guest:{}", unique("ra"));
        let mut a = player(s, &room, &alice).await;
        let joined = a.join().await;
        let me = joined.you.clone().expect("you").id;
        assert!(
            !joined.resume_token.is_empty(),
            "a resume token: {joined:?}"
        );
        assert_eq!(
            joined.ownership.as_ref().map(|o| o.owner_id.as_str()),
            Some(me.as_str())
        );
        let mut b = player(s, &room, &format!("guest:{}", unique("rb"))).await;
        b.join().await;
        let _ = a.recv().await; // Bob joined
        let before = room_info(s, &room).await;

        drop(a);
        no_leave(&mut b, Duration::from_secs(2)).await;
        b.send(client_message::Msg::Chat(proto::SendChat {
            text: "while you were away".into(),
        }))
        .await;
        b.send(note_on(61, 80)).await;
        // Idle (no frames at all): workerd evicts the object; Bob's socket stays open. The
        // activity hand-over's alarm may fire up to 5 s after the last frame and workerd evicts
        // about 10 s after the last event: 25 s leaves room for a loaded machine.
        no_leave(&mut b, Duration::from_secs(25)).await;

        let (mut a, resumed, replayed) = resume(s, &room, &alice, &joined.resume_token).await;
        let after = room_info(s, &room).await;
        evicted(&before, &after);
        complete_in_place(&resumed, &me);
        assert_eq!(
            traffic(&replayed),
            ["chat while you were away", "note 61"],
            "what was sent meanwhile, in order: {replayed:?}"
        );
        assert!(!resumed.resume_token.is_empty());
        // Live again, and the room is as it was: Alice first, crowned.
        b.send(note_on(62, 80)).await;
        let live = a
            .recv_matching(|m| match m {
                server_message::Msg::Notes(n) => Some(first_note(n)),
                _ => None,
            })
            .await;
        assert_eq!(live, Some(62));
        let mut c = player(s, &room, &format!("guest:{}", unique("rc"))).await;
        let seen = c.join().await;
        let ids: Vec<_> = seen.participants.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(ids[0], me, "Alice kept her place");
        assert_eq!(
            seen.ownership.map(|o| o.owner_id),
            Some(me.clone()),
            "and her crown"
        );
        no_leave(&mut b, Duration::from_secs(1)).await;
    })
    .await;
}

/// A player drops while the room object sleeps (the close wakes it: the socket may already be
/// gone from the runtime's list when the room is rebuilt for it): the player is suspended, not
/// gone. What it saw last was numbered before the room's memory went, and the buffer of that
/// time is not kept (nobody was suspended then: docs/resume.md §4), so it resumes with a
/// snapshot: its place, its crown, and the chat sent meanwhile.
pub async fn a_player_who_drops_while_the_room_object_sleeps_resumes_from_a_snapshot(
    target: &Server,
) {
    with_rig(target, |s| async move {
        let room = unique("resume-asleep");
        let alice = format!("guest:{}", unique("ra"));
        let mut a = player(s, &room, &alice).await;
        let joined = a.join().await;
        let me = joined.you.clone().expect("you").id;
        let mut b = player(s, &room, &format!("guest:{}", unique("rb"))).await;
        b.join().await;
        let _ = a.recv().await; // Bob joined
        let before = room_info(s, &room).await;
        // Idle (no frames at all): workerd evicts the object (25 s: as above).
        tokio::time::sleep(Duration::from_secs(25)).await;

        drop(a);
        no_leave(&mut b, Duration::from_secs(2)).await;
        b.send(client_message::Msg::Chat(proto::SendChat {
            text: "while you were away".into(),
        }))
        .await;
        no_leave(&mut b, Duration::from_secs(1)).await;

        let (_a, resumed, _) = resume(s, &room, &alice, &joined.resume_token).await;
        let after = room_info(s, &room).await;
        evicted(&before, &after);
        assert!(!resumed.complete, "{resumed:?}");
        assert_eq!(
            resumed.you.as_ref().map(|p| p.id.as_str()),
            Some(me.as_str())
        );
        let snap = resumed.snapshot.expect("a snapshot");
        let ids: Vec<_> = snap.participants.iter().map(|p| p.id.as_str()).collect();
        assert_eq!((ids.len(), ids[0]), (2, me.as_str()), "her place: {ids:?}");
        assert_eq!(snap.ownership.map(|o| o.owner_id), Some(me), "her crown");
        let chat: Vec<_> = snap.chat_history.iter().map(|c| c.text.as_str()).collect();
        assert!(chat.contains(&"while you were away"), "{chat:?}");
        no_leave(&mut b, Duration::from_secs(1)).await;
    })
    .await;
}

/// The server restarts while a player is away (every socket is lost, the room is rebuilt from
/// its storage): the player resumes and gets what the others sent after the restart, with its
/// place and crown; a player the restart cut off resumes too.
pub async fn a_player_resumes_after_the_edge_restarted(target: &Server) {
    with_rig(target, |s| async move {
        let room = unique("resume-restart");
        let (alice, bob) = (
            format!("guest:{}", unique("ra")),
            format!("guest:{}", unique("rb")),
        );
        let mut a = player(s, &room, &alice).await;
        let joined = a.join().await;
        let me = joined.you.clone().expect("you").id;
        let mut b = player(s, &room, &bob).await;
        let b_joined = b.join().await;
        let _ = a.recv().await; // Bob joined

        drop(a);
        no_leave(&mut b, Duration::from_secs(2)).await;
        b.send(client_message::Msg::Chat(proto::SendChat {
            text: "before the restart".into(),
        }))
        .await;
        // The chat, back to Bob (after a resume, his quota comes first).
        b.recv_matching(|m| match m {
            server_message::Msg::Chat(_) => Some(()),
            _ => None,
        })
        .await;
        s.restart();
        drop(b);

        // Bob's socket went with the server: he resumes too, then plays for Alice.
        let (mut b, b_resumed, _) = resume(s, &room, &bob, &b_joined.resume_token).await;
        assert_eq!(b_resumed.you.map(|p| p.id), b_joined.you.map(|p| p.id));
        b.send(note_on(63, 80)).await;
        b.send(client_message::Msg::Chat(proto::SendChat {
            text: "after the restart".into(),
        }))
        .await;
        // The chat, back to Bob (after a resume, his quota comes first).
        b.recv_matching(|m| match m {
            server_message::Msg::Chat(_) => Some(()),
            _ => None,
        })
        .await;

        let (_a, resumed, replayed) = resume(s, &room, &alice, &joined.resume_token).await;
        complete_in_place(&resumed, &me);
        assert_eq!(
            traffic(&replayed),
            [
                "chat before the restart",
                "note 63",
                "chat after the restart"
            ],
            "what was sent meanwhile, in order: {replayed:?}"
        );
        let mut c = player(s, &room, &format!("guest:{}", unique("rc"))).await;
        let seen = c.join().await;
        let ids: Vec<_> = seen.participants.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids.first().copied(),
            Some(me.as_str()),
            "Alice kept her place: {ids:?}"
        );
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(
            seen.ownership.map(|o| o.owner_id),
            Some(me),
            "and her crown"
        );
    })
    .await;
}
