//! Per-user activity counted and handed over ([`super::super::stats`]), and presence reported
//! ([`super::super::presence`]): when the host hears of them is the room's decision.

use super::harness::*;

#[test]
fn activity_is_counted_per_user_and_handed_over_when_due() {
    // Not counted unless the host asks for it.
    let mut off = Host::new("quiet");
    off.enter(1, "a");
    off.send(1, M::Notes(notes_batch(NOW)));
    off.advance(STATS_EVERY_MS);
    off.input(Input::Tick);
    assert_eq!((off.stats_handovers, off.room.next_deadline()), (0, None));

    let mut h = Host::new("stats");
    h.room.count_activity(true);
    h.enter(1, "a");
    // A join hands over at once (the room may hibernate or stop right after).
    assert_eq!(h.stats_handovers, 1);
    h.enter(2, "b");
    assert_eq!(h.stats_handovers, 2);
    h.send(1, M::Notes(notes_batch(h.now)));
    h.send(1, M::Notes(notes_batch(h.now)));
    h.send(2, chat("hello"));
    // A second connection of a joins the same participant: not a join, no hand-over.
    h.enter(3, "a");
    assert_eq!(h.stats_handovers, 2, "nothing due yet");
    // The host's timer: the room asks for a tick when the activity is due.
    let due = h.room.next_deadline().expect("activity waiting");
    assert_eq!(due, NOW + STATS_EVERY_MS);
    h.advance(STATS_EVERY_MS);
    h.input(Input::Tick);
    assert_eq!(h.stats_handovers, 3);
    assert_eq!(h.room.next_deadline(), None, "handed over once");
    let (a, b) = (&h.stats["a"], &h.stats["b"]);
    assert_eq!((a.notes, a.chats, a.joins), (2, 0, 1));
    assert_eq!((b.notes, b.chats, b.joins), (0, 1, 1));
    assert_eq!(b.last_seen, NOW);

    // A leave hands over at once; Stop hands over what is left.
    h.send(2, chat("bye"));
    h.disconnect(2);
    assert_eq!((h.stats_handovers, h.stats["b"].chats), (4, 2));
    h.send(1, M::Notes(notes_batch(h.now)));
    h.input(Input::Stop);
    assert_eq!((h.stats_handovers, h.stats["a"].notes), (5, 3));
    h.input(Input::Stop);
    assert_eq!(h.stats_handovers, 5, "nothing left to hand over");
}

/// Time in the room is credited at every hand-over and on leaving; a leave is counted; a
/// refused join is counted for the user who asked (analytics: `core/src/analytics.rs`).
#[test]
fn time_played_leaves_and_refused_joins_are_counted() {
    let mut h = Host::new("timed");
    h.room.count_activity(true);
    h.enter(1, "a");
    h.advance(7_000);
    h.enter(2, "b");
    assert_eq!(h.stats["a"].played_ms, 7_000, "credited at b's join");
    h.advance(3_000);
    h.disconnect(1);
    assert_eq!((h.stats["a"].played_ms, h.stats["a"].leaves), (10_000, 1));
    // The leave is a hand-over: whoever stays is credited up to it.
    assert_eq!((h.stats["b"].played_ms, h.stats["b"].leaves), (3_000, 0));
    h.advance(2_000);
    h.input(Input::Stop);
    assert_eq!(h.stats["b"].played_ms, 5_000, "Stop credits who is present");
    assert_eq!(h.stats["a"].played_ms, 10_000, "a is gone: nothing more");

    // A join refused (the room is full) counts for the one who asked.
    let mut full = Host::new("full");
    full.room = room_with(|s| s.settings.max_players = 1);
    full.room.count_activity(true);
    full.enter(1, "a");
    full.enter(2, "z");
    full.input(Input::Stop);
    assert_eq!(full.stats["z"].join_failures, 1);
    assert_eq!(full.stats["z"].joins, 0);
    assert_eq!(full.stats["a"].join_failures, 0);
}

/// Players who keep playing: their activity is handed over once a minute, not every few
/// seconds (each hand-over costs the host storage writes per player).
#[test]
fn steady_play_is_handed_over_once_a_minute() {
    let mut h = Host::new("steady");
    h.room.count_activity(true);
    h.enter(1, "a");
    let start = h.now;
    let mut handed = Vec::new();
    while h.now < start + STATS_MAX_WAIT_MS + 10_000 {
        h.send(1, M::Notes(notes_batch(h.now)));
        h.advance(1_000);
        let before = h.stats_handovers;
        if h.room.next_deadline().is_some_and(|d| d <= h.now) {
            h.input(Input::Tick);
        }
        if h.stats_handovers > before {
            handed.push(h.now - start);
        }
    }
    assert_eq!(handed, vec![STATS_MAX_WAIT_MS], "{handed:?}");
}

#[test]
fn unrelayed_notes_are_not_counted() {
    let mut muted = Host::new("muted");
    muted.room = room_with(|s| {
        s.mutes.push(stored::MuteEntry {
            user_id: "m".into(),
            notes: true,
            chat: false,
        })
    });
    muted.room.count_activity(true);
    muted.enter(1, "m");
    let joins = muted.stats_handovers;
    muted.send(1, M::Notes(notes_batch(NOW)));
    assert!(!muted.room.has_stats());
    muted.input(Input::Stop);
    assert_eq!(muted.stats_handovers, joins);
}

#[test]
fn presence_reports_arrivals_and_departures_once() {
    let mut h = Host::new("presence");
    h.enter(1, "a");
    assert!(h.present.is_empty(), "not tracked unless the host asks");
    h.room.track_presence(true);
    h.enter(2, "b");
    // Tracking began with a already here: the first change reports both.
    assert_eq!(h.present, ["a", "b"].map(String::from).into());
    // Another socket of b: the same participant, nothing to report (the Host asserts no
    // participant is reported twice).
    let fx = h.enter(3, "b");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Presence { .. })));
    h.disconnect(3);
    assert!(h.present.contains("b"), "b still has a socket");
    h.disconnect(2);
    assert_eq!(h.present, ["a"].map(String::from).into());
    h.enter(4, "c");
    // The host drops the room: everyone published is gone.
    h.input(Input::Stop);
    assert!(h.present.is_empty());
}

#[test]
fn presence_resumed_from_storage_reports_who_was_lost() {
    // The host had published a and z; after its restart only a is back.
    let mut h = Host::new("resumed");
    h.present = ["a", "z"].map(String::from).into();
    h.room.resume_presence(["a".to_owned(), "z".to_owned()]);
    h.enter(1, "a");
    assert_eq!(
        h.present,
        ["a"].map(String::from).into(),
        "z left while the host was down"
    );
}
