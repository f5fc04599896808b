//! Per-user activity counted and handed over once ([`super::super::stats`]).

use super::harness::*;

#[test]
fn activity_is_counted_per_user_and_handed_over_once() {
    // Not counted unless the host asks for it.
    let mut off = room("quiet");
    enter(&mut off, 1, "a");
    binary(&mut off, 1, &notes(NOW));
    assert!(!off.has_stats());

    let mut r = room("stats");
    r.count_activity(true);
    enter(&mut r, 1, "a");
    enter(&mut r, 2, "b");
    binary(&mut r, 1, &notes(NOW));
    binary(&mut r, 1, &notes(NOW));
    msg(&mut r, 2, chat("hello"));
    // A second connection of a joins the same participant: not a new join.
    enter(&mut r, 3, "a");
    let stats = r.take_stats();
    assert_eq!(
        (stats["a"].notes, stats["a"].chats, stats["a"].joins),
        (2, 0, 1)
    );
    assert_eq!(
        (stats["b"].notes, stats["b"].chats, stats["b"].joins),
        (0, 1, 1)
    );
    assert_eq!(stats["b"].last_seen, NOW);
    assert!(!r.has_stats(), "taken once");

    // Notes that are not relayed (muted) are not counted.
    let mut muted = room_with(|s| {
        s.mutes.push(stored::MuteEntry {
            user_id: "m".into(),
            notes: true,
            chat: false,
        })
    });
    muted.count_activity(true);
    enter(&mut muted, 1, "m");
    muted.take_stats();
    binary(&mut muted, 1, &notes(NOW));
    assert!(!muted.has_stats());
}
