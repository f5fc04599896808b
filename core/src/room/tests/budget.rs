//! Per-connection budgets (issue 13): every kind of client message, note events, notices,
//! closing persistent abusers, and honest clients never noticing any of it
//! ([`super::super::budget`], [`super::super::abuse`]).

use super::harness::*;

/// Room "r": "owner" on conn 1 (owns it), "bob" on conn 2.
fn two_players() -> Room {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    enter(&mut room, 2, "bob");
    room
}

/// A kind's name, budget, sending connection and message.
type Row = (&'static str, Rate, ConnId, fn() -> M);

/// Every budgeted kind: its burst passes at one instant, the next message is dropped with one
/// notice saying when to retry, the one after silently, and one period later one passes again.
#[test]
fn every_message_kind_has_a_budget() {
    let l = Limits::default();
    #[rustfmt::skip]
    let table: [Row; 9] = [
        ("ping",       l.ping,         2, || M::Ping(proto::Ping { client_time: 1.0 })),
        ("typing",     l.typing,       2, || M::Typing(proto::SetTyping { typing: true })),
        ("profile",    l.profile,      2, || M::UpdateProfile(proto::UpdateProfile { status: Some("hi".into()), ..Default::default() })),
        ("cursor",     l.cursor,       2, || M::Cursor(proto::MoveCursor { x: 1.0, y: 2.0 })),
        ("settings",   l.settings,     1, || M::UpdateSettings(proto::UpdateSettings { visible: Some(true), ..Default::default() })),
        ("subscribe",  l.subscribe,    2, || M::SubscribeRooms(proto::SubscribeRooms {})),
        ("moderation", l.moderation,   2, || M::ClaimOwnership(proto::ClaimOwnership {})),
        ("unban",      l.moderation,   1, || M::Unban(proto::Unban { user_id: "nobody".into() })),
        ("notes",      l.note_batches, 1, || batch_at(NOW, vec![ev(pedal(0))])),
    ];
    for (name, rate, conn, make) in table {
        let mut room = two_players();
        for i in 0..rate.burst {
            let fx = msg(&mut room, conn, make());
            assert_eq!(
                rate_notices(&fx),
                Vec::<u64>::new(),
                "{name}: message {i} of the burst"
            );
        }
        let fx = msg(&mut room, conn, make());
        assert_eq!(
            rate_notices(&fx),
            vec![u64::from(rate.every_ms)],
            "{name}: over"
        );
        assert_eq!(
            sent(&fx).len(),
            1,
            "{name}: dropped, only the notice goes out"
        );
        assert!(
            rate_notices(&msg(&mut room, conn, make())).is_empty(),
            "{name}: one notice per window"
        );
        let later = NOW + u64::from(rate.every_ms);
        let fx = msg_at(&mut room, conn, make(), later);
        assert!(rate_notices(&fx).is_empty(), "{name}: refilled");
        assert!(closes(&fx).is_empty(), "{name}");
    }
}

#[test]
fn join_attempts_have_a_budget_answered_by_join_failed() {
    let mut room = room_with(|s| s.settings.max_players = 1);
    enter(&mut room, 1, "owner");
    connect(&mut room, 2, "bob");
    let burst = budget::JOIN.burst;
    for _ in 0..burst {
        assert_eq!(
            join_failure(&binary(&mut room, 2, &join())).map(|f| f.0),
            Some(JoinFailure::RoomFull)
        );
    }
    assert_eq!(
        join_failure(&binary(&mut room, 2, &join())),
        Some((JoinFailure::RateLimited, u64::from(budget::JOIN.every_ms)))
    );
    assert_eq!(
        join_failure(&binary(&mut room, 2, &join())),
        None,
        "one answer per window"
    );
}

/// Note-ons pay the quota, note-offs of sounding notes are free, every other event (and a
/// note-off of a note that is not sounding) pays the note-event budget.
#[test]
fn note_events_are_charged_by_kind() {
    let burst = budget::NOTE_EVENTS.burst as usize;
    type Events = fn(usize) -> Vec<NoteEvent>;
    #[rustfmt::skip]
    let table: [(&str, Events, usize, bool); 6] = [
        // (what, events after pressing notes 0..100, relayed, notice)
        ("note-offs of the 100 sounding notes", |_| (0..100).map(|n| ev(off(n))).collect(), 100, false),
        ("the budget of other events",          |b| (0..b).map(|i| ev(pedal(i as u32 % 128))).collect(), burst, false),
        ("one event over it",                   |b| (0..=b).map(|i| ev(pedal(i as u32 % 128))).collect(), burst, true),
        ("note-offs of silent notes are charged", |b| (0..=b).map(|i| ev(off(100 + (i as u32 % 28)))).collect(), burst, true),
        ("pitch bend and program change too",   |b| (0..=b).map(|i| ev(if i % 2 == 0 { E::PitchBend(proto::PitchBend { value: 5, channel: 0 }) } else { E::ProgramChange(proto::ProgramChange { program: 1, channel: 0 }) })).collect(), burst, true),
        ("free note-offs beside charged events", |b| (0..100).map(|n| ev(off(n))).chain((0..=b).map(|_| ev(pedal(1)))).collect(), 100 + burst, true),
    ];
    for (name, events, relayed, notice) in table {
        let mut room = two_players();
        let press = batch_at(NOW, (0..100).map(|n| ev(on(n))).collect());
        assert_eq!(relayed_events(&msg(&mut room, 1, press)), Some(100));
        // Batches carry at most 300 events: send the events in chunks, counting what passes.
        let all = events(burst);
        let (mut passed, mut notices) = (0, 0);
        for chunk in all.chunks(300) {
            let fx = msg(&mut room, 1, batch_at(NOW, chunk.to_vec()));
            passed += relayed_events(&fx).unwrap_or(0);
            notices += rate_notices(&fx).len();
        }
        assert_eq!(passed, relayed, "{name}");
        assert_eq!(notices > 0, notice, "{name}");
    }
}

#[test]
fn a_note_off_is_free_once_per_note_on() {
    let mut room = two_players();
    let b = |events| batch_at(NOW, events);
    // Pressed and released twice, then released once more: only the last one is charged.
    msg(
        &mut room,
        1,
        b(vec![ev(on(60)), ev(off(60)), ev(on(60)), ev(off(60))]),
    );
    let burst = budget::NOTE_EVENTS.burst;
    for _ in 0..burst / 250 {
        let fx = msg(&mut room, 1, b((0..250).map(|_| ev(pedal(0))).collect()));
        assert!(rate_notices(&fx).is_empty());
    }
    let fx = msg(&mut room, 1, b(vec![ev(off(60))]));
    assert_eq!(
        rate_notices(&fx).len(),
        1,
        "the extra note-off pays, and the budget is spent"
    );
    assert_eq!(relayed_events(&fx), None);
}

#[test]
fn frames_are_counted_before_decoding() {
    let mut room = two_players();
    // Bob's Join was his first frame.
    let burst = budget::FRAMES.burst - 1;
    for _ in 0..burst {
        assert_eq!(
            error_code(&binary(&mut room, 2, b"\xff\xff\xff")),
            Some(ErrorCode::MalformedFrame)
        );
    }
    let fx = binary(&mut room, 2, b"\xff\xff\xff");
    assert_eq!(error_code(&fx), Some(ErrorCode::RateLimited), "not decoded");
    assert_eq!(rate_notices(&fx), vec![u64::from(budget::FRAMES.every_ms)]);
    // Text frames too.
    let fx = room.handle(
        Input::Frame {
            conn: 2,
            frame: Frame::Text("x"),
        },
        NOW,
    );
    assert!(
        sent(&fx).is_empty(),
        "dropped without a second notice: {fx:?}"
    );
}

#[test]
fn chat_over_its_rate_is_noticed_once_per_window() {
    let mut room = two_players();
    for i in 0..CHAT_RATE.0 {
        assert!(rate_notices(&msg(&mut room, 2, chat(&format!("m{i}")))).is_empty());
    }
    let notices: Vec<usize> = (0..20)
        .map(|_| rate_notices(&msg(&mut room, 2, chat("spam"))).len())
        .collect();
    assert_eq!(notices.iter().sum::<usize>(), 1, "{notices:?}");
    assert_eq!(notices[0], 1);
}

#[test]
fn persistent_abuse_closes_with_1008_and_the_others_see_the_player_leave() {
    let mut room = two_players();
    let typing = || M::Typing(proto::SetTyping { typing: true });
    for _ in 0..budget::TYPING.burst {
        msg(&mut room, 2, typing());
    }
    let mut outcome = None;
    for i in 1..=budget::ABUSE_DROPS + 1 {
        let fx = msg(&mut room, 2, typing());
        if !closes(&fx).is_empty() {
            outcome = Some((i, fx));
            break;
        }
    }
    let (drops, fx) = outcome.expect("closed");
    assert_eq!(drops, budget::ABUSE_DROPS + 1);
    assert_eq!(closes(&fx), vec![(2, close::POLICY_VIOLATION)]);
    assert!(
        sent(&fx)
            .iter()
            .any(|(to, m)| to == &[1] && matches!(m, SM::ParticipantLeft(_)))
    );
    assert_eq!(room.connection_count(), 1, "the room forgot the connection");
}

#[test]
fn drops_spread_over_windows_do_not_close() {
    let mut room = two_players();
    let typing = || M::Typing(proto::SetTyping { typing: true });
    // Over budget all the time, but fewer drops per window than the bound.
    let mut now = NOW;
    for _ in 0..50 {
        for _ in 0..(budget::ABUSE_DROPS / 2) {
            assert!(closes(&msg_at(&mut room, 2, typing(), now)).is_empty());
        }
        now += budget::ABUSE_WINDOW_MS;
    }
}

/// The issue's flood: 10,000 batches of note-offs and sustain-pedal changes from one guest in
/// a 20-player room, one a millisecond. Few reach the room, and the flooder is closed.
#[test]
fn the_note_off_and_cc64_flood_is_bounded_and_closed() {
    let mut room = room("r");
    for i in 0..20 {
        enter(&mut room, i, &format!("player{i}"));
    }
    let flooder: ConnId = 7;
    let (mut relayed_batches, mut relayed_events_total, mut sends_to_others) = (0, 0, 0);
    let mut notices = 0;
    let mut closed = None;
    for i in 0..10_000u64 {
        let now = NOW + i;
        let events = (0..150)
            .flat_map(|n| [ev(off(n % 128)), ev(pedal((n % 2) * 127))])
            .collect();
        let fx = msg_at(&mut room, flooder, batch_at(now, events), now);
        for (to, m) in sent(&fx) {
            if to.contains(&flooder) {
                notices += 1;
                continue;
            }
            sends_to_others += to.len();
            if let SM::Notes(b) = m {
                relayed_batches += 1;
                relayed_events_total += b.events.len();
            }
        }
        if let Some(&(conn, code)) = closes(&fx).first() {
            closed = Some((i, conn, code));
            break;
        }
    }
    let (at, conn, code) = closed.expect("the flooder is closed");
    eprintln!(
        "flood: closed after {} batches; relayed {relayed_batches} batches, \
         {relayed_events_total} events, {sends_to_others} sends to others; {notices} notices",
        at + 1
    );
    assert_eq!((conn, code), (flooder, close::POLICY_VIOLATION));
    assert!(
        at < 1000,
        "closed within the first second of flooding (batch {at})"
    );
    let l = Limits::default();
    assert!(
        relayed_events_total <= (l.note_events.burst + 1000 / l.note_events.every_ms) as usize,
        "{relayed_events_total} events relayed"
    );
    assert!(
        relayed_batches <= l.note_batches.burst,
        "{relayed_batches} batches relayed"
    );
    // Each relayed batch went to the 19 others, plus the ParticipantLeft at the close.
    assert!(
        sends_to_others <= 19 * (relayed_batches as usize + 1),
        "{sends_to_others}"
    );
    assert!(notices <= 10, "notices do not amplify the flood: {notices}");
    assert_eq!(room.participant_count(), 19);
}

/// What the web client and a MIDI keyboard send, played hard for a minute: nothing dropped.
#[test]
fn honest_clients_never_meet_a_budget() {
    let mut room = room("r");
    enter(&mut room, 1, "web");
    enter(&mut room, 2, "midi-bridge");
    enter(&mut room, 3, "listener");
    let mut now = NOW;
    let mut complaints = Vec::new();
    let mut bridge = Vec::new();
    for tick in 0..60_000u64 / 10 {
        now += 10;
        let t = tick * 10;
        let mut fx = Vec::new();
        // The web client: a batch every 150 ms of ~16 notes with pedal changes, a ping a
        // second, typing every 3 s, a cursor at 20/s, a profile change a minute.
        if t % 150 == 0 {
            let base = (t / 150 % 60) as u32 + 30;
            let events = (0..8)
                .flat_map(|k| [ev(on(base + k)), ev(off(base + k))])
                .chain([ev(pedal(127)), ev(pedal(0))])
                .collect();
            fx.extend(msg_at(&mut room, 1, batch_at(now, events), now));
        }
        if t % 1000 == 0 {
            fx.extend(msg_at(
                &mut room,
                1,
                M::Ping(proto::Ping { client_time: 0.0 }),
                now,
            ));
        }
        if t % 3000 == 0 {
            fx.extend(msg_at(
                &mut room,
                1,
                M::Typing(proto::SetTyping { typing: true }),
                now,
            ));
        }
        if t % 50 == 0 {
            fx.extend(msg_at(
                &mut room,
                1,
                M::Cursor(proto::MoveCursor { x: 5.0, y: 5.0 }),
                now,
            ));
        }
        // A MIDI keyboard through a bridge that flushes every 50 ms: 12 notes a second, a
        // continuous sustain pedal at 100 values a second, a pitch-bend sweep at 50 a second.
        if t % 80 == 0 {
            let n = 40 + (t / 80 % 40) as u32;
            bridge.extend([ev(on(n)), ev(off(n))]);
        }
        bridge.push(ev(pedal((t / 10 % 128) as u32)));
        if t % 20 == 0 {
            bridge.push(ev(E::PitchBend(proto::PitchBend {
                value: (t % 8000) as i32,
                channel: 0,
            })));
        }
        if t % 50 == 0 {
            let events = std::mem::take(&mut bridge);
            fx.extend(msg_at(&mut room, 2, batch_at(now, events), now));
        }
        for (to, m) in sent(&fx) {
            if matches!(m, SM::Error(_) | SM::NotesDropped(_)) {
                complaints.push((t, to, m));
            }
        }
        assert!(closes(&fx).is_empty(), "closed at {t} ms");
    }
    assert!(
        complaints.is_empty(),
        "{:?}",
        &complaints[..complaints.len().min(5)]
    );
}
