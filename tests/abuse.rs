//! Issue 13, tried as a hostile guest would with nothing but guest tokens: floods of the
//! messages the note quota does not charge, extra sockets, password guessing and a reader that
//! never reads. Each trial asserts the documented outcome (README "Limits and abuse") on counts,
//! close codes and error codes, never on how fast the server is; waits are bounded and generous.
//! Every trial uses its own rooms and users, so the trials run alongside each other.

use crate::*;
use e2e_tests::abuse_support::{close, error_code, join_failure};
use e2e_tests::proto::{self, client_message as cm, server_message::Msg};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// How many over-budget frames a flooder may get through: a budget's burst plus its refill over
/// the time the flood lasted (plus a second of slack). Generous on purpose: what matters is
/// that the count is bounded while the flood is not.
fn budget_allows(flood: Duration) -> usize {
    // No per-kind budget in the contract refills faster than this or bursts higher.
    const RATE_PER_SEC: f64 = 50.0;
    const BURST: f64 = 100.0;
    (BURST + RATE_PER_SEC * (flood.as_secs_f64() + 1.0)) as usize
}

/// Typed notices a flooder may get: at most one per message kind per budget window (1 s or
/// longer), for the few kinds a trial sends, plus slack.
fn notices_allowed(flood: Duration, kinds: usize) -> usize {
    kinds * (flood.as_secs_f64().ceil() as usize + 3)
}

/// Note-offs for notes that are not sounding and a sustain pedal pressed and released: nothing
/// the note-on quota charges.
fn offs_and_pedal() -> cm::Msg {
    let mut events: Vec<proto::NoteEvent> = (0..8)
        .map(|i| proto::NoteEvent {
            delay: i,
            kind: Some(proto::note_event::Kind::NoteOff(proto::NoteOff {
                note: 40 + i,
                channel: 0,
            })),
        })
        .collect();
    for (delay, value) in [(8, 127), (9, 0)] {
        events.push(proto::NoteEvent {
            delay,
            kind: Some(proto::note_event::Kind::ControlChange(
                proto::ControlChange {
                    control: 64,
                    value,
                    channel: 0,
                },
            )),
        });
    }
    cm::Msg::Notes(proto::NoteBatch {
        time: now_ms(),
        events,
        sender_id: String::new(),
    })
}

/// A notice the server gives a sender whose messages it dropped.
fn is_notice(m: &Msg) -> bool {
    match m {
        Msg::Error(e) => e.code == error_code::RATE_LIMITED,
        Msg::NotesDropped(_) => true,
        _ => false,
    }
}

/// What one flooder achieved.
struct Flood {
    sent: usize,
    notices: usize,
    lasted: Duration,
    ending: Ending,
}

/// Sends up to `count` messages made by `make` as fast as the socket takes them, reading what
/// comes back between bursts of 50, until the server closes the socket (then up to 20 s more
/// for the close to arrive).
async fn flood(c: &mut Client, count: usize, make: impl Fn(usize) -> cm::Msg) -> Flood {
    let started = Instant::now();
    let (mut sent, mut notices) = (0, 0);
    let mut ending = Ending::StillOpen;
    'flood: while sent < count {
        for _ in 0..50 {
            if c.try_send(make(sent)).await.is_err() {
                break 'flood;
            }
            sent += 1;
        }
        loop {
            match c.next_event_lenient(Duration::from_millis(1)).await {
                Some(Ok(Event::Msg(m))) => notices += usize::from(is_notice(&m)),
                Some(Ok(Event::Closed(f))) => {
                    ending = f.map_or(Ending::ClosedWithoutFrame, |f| {
                        Ending::Closed(u16::from(f.code))
                    });
                    break 'flood;
                }
                Some(Err(e)) => {
                    ending = Ending::Broken(e);
                    break 'flood;
                }
                None => break,
            }
        }
    }
    let lasted = started.elapsed();
    if ending == Ending::StillOpen {
        ending = c
            .until_closed(Duration::from_secs(20), |m| {
                notices += usize::from(is_notice(m))
            })
            .await;
    }
    Flood {
        sent,
        notices,
        lasted,
        ending,
    }
}

/// Reads `c` until `who` has left the room, counting the messages `counts` picks.
async fn count_until_left(c: &mut Client, who: &str, counts: impl Fn(&Msg) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event(left).await {
            Some(Event::Msg(Msg::ParticipantLeft(l))) if l.participant_id == who => return n,
            Some(Event::Msg(m)) => n += usize::from(counts(&m)),
            Some(Event::Closed(f)) => panic!("the bystander was closed: {f:?}"),
            None => panic!("{who} never left the room (counted {n} of its messages)"),
        }
    }
}

fn assert_flood_stopped(what: &str, f: &Flood, relayed: usize) {
    eprintln!(
        "{what}: sent {}, relayed {relayed}, notices {}, lasted {:?}, ended {:?}",
        f.sent, f.notices, f.lasted, f.ending
    );
    assert_eq!(
        f.ending,
        Ending::Closed(close::POLICY_VIOLATION),
        "{what}: persistent abuse closes the flooder with 1008"
    );
    assert!(
        f.notices >= 1,
        "{what}: the flooder was told (RATE_LIMITED)"
    );
    assert!(
        f.notices <= notices_allowed(f.lasted, 2) && f.notices < f.sent,
        "{what}: {} notices for {} messages: notices must not amplify a flood",
        f.notices,
        f.sent
    );
    assert!(
        relayed <= budget_allows(f.lasted),
        "{what}: the bystander got {relayed} of {} flooded messages in {:?}",
        f.sent,
        f.lasted
    );
}

/// 1. Note-off / CC64 flood: dropped with RATE_LIMITED notices (not one per message), the
/// flooder closed 1008, a bystander gets a bounded number of its batches, and an honest
/// player's note still arrives.
pub async fn note_off_and_pedal_flood_is_bounded_and_closed_1008() {
    let s = server();
    let room = unique("flood-notes");
    let mut honest = s.player(&room, "Honest").await;
    honest.join().await;
    let mut bystander = s.player(&room, "Bystander").await;
    bystander.join().await;
    let mut flooder = s.player(&room, "Flooder").await;
    flooder.join().await;
    let fid = flooder.id().to_owned();

    let f = flood(&mut flooder, 10_000, |_| offs_and_pedal()).await;
    let relayed = count_until_left(
        &mut bystander,
        &fid,
        |m| matches!(m, Msg::Notes(b) if b.sender_id == fid),
    )
    .await;
    assert_flood_stopped("note-off/CC64 flood", &f, relayed);

    honest.send(note_on(60, 90)).await;
    let hid = honest.id().to_owned();
    bystander
        .recv_matching(|m| match m {
            Msg::Notes(b) if b.sender_id == hid => Some(()),
            _ => None,
        })
        .await;
}

/// 1. (cont.) Typing indicators and profile updates are budgeted the same way.
pub async fn typing_and_profile_floods_are_bounded_and_closed_1008() {
    let s = server();
    let room = unique("flood-chatter");
    let mut bystander = s.player(&room, "Bystander").await;
    bystander.join().await;

    let mut typist = s.player(&room, "Typist").await;
    typist.join().await;
    let tid = typist.id().to_owned();
    let f = flood(&mut typist, 5_000, |i| {
        cm::Msg::Typing(proto::SetTyping { typing: i % 2 == 0 })
    })
    .await;
    let relayed = count_until_left(
        &mut bystander,
        &tid,
        |m| matches!(m, Msg::Typing(t) if t.participant_id == tid),
    )
    .await;
    assert_flood_stopped("typing flood", &f, relayed);

    let mut poser = s.player(&room, "Poser").await;
    poser.join().await;
    let pid = poser.id().to_owned();
    let f = flood(&mut poser, 5_000, |i| {
        cm::Msg::UpdateProfile(proto::UpdateProfile {
            status: Some(format!("status {i}")),
            ..Default::default()
        })
    })
    .await;
    let relayed = count_until_left(&mut bystander, &pid, |m| {
        matches!(m, Msg::ParticipantUpdated(u)
            if u.participant.as_ref().is_some_and(|p| p.id == pid))
    })
    .await;
    assert_flood_stopped("profile flood", &f, relayed);

    // The room still works for whoever behaves.
    let mut other = s.player(&room, "Other").await;
    other.join().await;
    other.send(note_on(64, 80)).await;
    let oid = other.id().to_owned();
    bystander
        .recv_matching(|m| match m {
            Msg::Notes(b) if b.sender_id == oid => Some(()),
            _ => None,
        })
        .await;
}

/// How the server answered one more socket of a user.
fn refusal_is_typed(a: &Admission) -> bool {
    match a {
        Admission::Refused(r) => {
            r.status == 429 && r.body["error"]["code"] == "too_many_connections"
        }
        Admission::Closed { errors, code } => {
            *code == Some(close::TOO_MANY_CONNECTIONS)
                && errors
                    .iter()
                    .all(|e| *e == error_code::TOO_MANY_CONNECTIONS)
        }
        _ => false,
    }
}

/// Opens one socket and joins with it: `Ok` if it joined, else how it was refused.
async fn socket_and_join(url: &str) -> Result<Client, String> {
    match Client::admission(url).await {
        Admission::Admitted(c) => {
            let mut c = *c;
            c.send(cm::Msg::Join(proto::Join::default())).await;
            match c.next_event(RECV_TIMEOUT).await {
                Some(Event::Msg(Msg::Joined(_))) => Ok(c),
                Some(Event::Msg(Msg::JoinFailed(f)))
                    if f.reason == join_failure::TOO_MANY_CONNECTIONS =>
                {
                    Err("JoinFailed TOO_MANY_CONNECTIONS".into())
                }
                Some(Event::Msg(Msg::Error(e))) if e.code == error_code::TOO_MANY_CONNECTIONS => {
                    match c.until_closed(RECV_TIMEOUT, |_| {}).await {
                        Ending::Closed(close::TOO_MANY_CONNECTIONS) => {
                            Err("Error TOO_MANY_CONNECTIONS, close 4004".into())
                        }
                        other => panic!("TOO_MANY_CONNECTIONS, then {other:?}"),
                    }
                }
                other => panic!("an admitted socket's Join got {other:?}"),
            }
        }
        refused => {
            assert!(refusal_is_typed(&refused), "untyped refusal: {refused:?}");
            Err(format!("{refused:?}"))
        }
    }
}

/// 2. One token opens 10 sockets to one room: 4 are admitted (`MAX_CONNS_PER_USER`), the rest
/// refused with a typed reason; the cap is per user (someone else still gets in) and a closed
/// socket frees its place.
pub async fn one_user_gets_at_most_four_sockets_per_room() {
    let s = server();
    let room = unique("sockets");
    let token = s.guest_token("Hydra").await;
    let url = format!("{}?token={token}", s.ws_url(&room));
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..10 {
        match socket_and_join(&url).await {
            Ok(c) => admitted.push(c),
            Err(why) => refused.push(why),
        }
    }
    eprintln!("sockets: {} admitted, refused: {refused:?}", admitted.len());
    assert_eq!(admitted.len(), 4, "MAX_CONNS_PER_USER sockets, no more");
    assert_eq!(refused.len(), 6);

    // Someone else is not affected by Hydra's cap, and sees one participant for Hydra.
    let mut other = s.player(&room, "Other").await;
    let joined = other.join().await;
    let hydra = joined
        .participants
        .iter()
        .filter(|p| p.name == "Hydra")
        .count();
    assert_eq!(hydra, 1, "four sockets, one participant");

    // A closed socket frees its place (the room learns of the close asynchronously).
    if let Some(c) = admitted.pop() {
        c.close().await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match socket_and_join(&url).await {
            Ok(c) => {
                admitted.push(c);
                break;
            }
            Err(why) => assert!(
                Instant::now() < deadline,
                "a closed socket's place was never freed: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn join_with_password(c: &mut Client, password: &str) -> Result<(), proto::JoinFailed> {
    c.try_join(password).await.map(|_| ())
}

/// 4. Password guessing: a few WRONG_PASSWORDs, then RATE_LIMITED with a `retry_after_ms`
/// that grows; a new socket of the same user is limited too; the right password after the
/// delay works; the room's relay keeps working for its members meanwhile.
pub async fn password_guessing_is_slowed_per_user_and_room() {
    let s = server();
    let room = unique("guess");
    let mut owner = s.player(&room, "Owner").await;
    owner
        .send(cm::Msg::Join(proto::Join {
            password: String::new(),
            create_settings: Some(proto::UpdateSettings {
                password: Some("open sesame".into()),
                ..Default::default()
            }),
        }))
        .await;
    owner
        .recv_matching(|m| matches!(m, Msg::Joined(_)).then_some(()))
        .await;
    let mut member = s.player(&room, "Member").await;
    join_with_password(&mut member, "open sesame")
        .await
        .expect("the right password joins");

    let token = s.guest_token("Guesser").await;
    let url = format!("{}?token={token}", s.ws_url(&room));
    let mut guesser = Client::connect(&url, &[]).await.expect("connect");

    // A burst of guesses, sent without waiting; a member's note crosses the room meanwhile.
    const BURST: usize = 12;
    for i in 0..BURST {
        guesser
            .send(cm::Msg::Join(proto::Join {
                password: format!("guess-{i}"),
                create_settings: None,
            }))
            .await;
    }
    member.send(note_on(62, 70)).await;
    let mid = member.id().to_owned();
    owner
        .recv_matching(|m| match m {
            Msg::Notes(b) if b.sender_id == mid => Some(()),
            _ => None,
        })
        .await;
    // Every guess is answered, with a JoinFailed or a RATE_LIMITED error.
    let mut answers = Vec::new();
    while answers.len() < BURST {
        let a = guesser
            .recv_matching(|m| match m {
                Msg::JoinFailed(f) => Some((f.reason, f.retry_after_ms)),
                Msg::Error(e) if e.code == error_code::RATE_LIMITED => {
                    Some((join_failure::RATE_LIMITED, 0))
                }
                Msg::Joined(_) => panic!("a wrong password joined"),
                _ => None,
            })
            .await;
        answers.push(a);
    }
    eprintln!("password burst: {answers:?}");
    let wrong = answers
        .iter()
        .filter(|a| a.0 == join_failure::WRONG_PASSWORD)
        .count();
    assert!(
        (1..=5).contains(&wrong),
        "a few guesses are checked, the rest refused unchecked: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.0 == join_failure::WRONG_PASSWORD || a.0 == join_failure::RATE_LIMITED),
        "{answers:?}"
    );
    let first_delay = answers
        .iter()
        .filter(|a| a.0 == join_failure::RATE_LIMITED)
        .map(|a| a.1)
        .max()
        .unwrap_or(0);
    assert!(
        (1..=60_000).contains(&first_delay),
        "RATE_LIMITED says when to retry: {answers:?}"
    );

    // The delay is the user's, not the socket's: a second socket is refused unchecked too.
    let mut second = Client::connect(&url, &[]).await.expect("connect");
    let f = join_with_password(&mut second, "open sesame")
        .await
        .expect_err("the delay applies to every socket of the user");
    assert_eq!(f.reason, join_failure::RATE_LIMITED, "{f:?}");
    second.close().await;

    // After the delay one more wrong guess is checked, and the next delay is longer.
    tokio::time::sleep(Duration::from_millis(first_delay + 300)).await;
    let f = join_with_password(&mut guesser, "still wrong")
        .await
        .expect_err("wrong");
    assert_eq!(f.reason, join_failure::WRONG_PASSWORD, "{f:?}");
    let f = join_with_password(&mut guesser, "wrong again")
        .await
        .expect_err("wrong");
    assert_eq!(f.reason, join_failure::RATE_LIMITED, "{f:?}");
    assert!(
        f.retry_after_ms > first_delay,
        "the delay grows: {} after {first_delay}",
        f.retry_after_ms
    );

    // The right password after the delay works.
    tokio::time::sleep(Duration::from_millis(f.retry_after_ms + 300)).await;
    join_with_password(&mut guesser, "open sesame")
        .await
        .expect("the right password after the delay");
}

fn big_batch(round: usize) -> cm::Msg {
    cm::Msg::Notes(proto::NoteBatch {
        time: now_ms(),
        events: (0..300)
            .map(|i| proto::NoteEvent {
                delay: (i % 200) as u32,
                kind: Some(proto::note_event::Kind::NoteOn(proto::NoteOn {
                    note: 21 + ((i + round) % 88) as u32,
                    velocity: 1 + (i % 126) as u32,
                    channel: 0,
                })),
            })
            .collect(),
        sender_id: String::new(),
    })
}

/// 5. A reader that never reads while a permitted stream of broadcasts flows: it is closed
/// 1013 and the others see it leave; the senders, who read, are not closed.
pub async fn a_reader_that_never_reads_is_closed_1013() {
    let s = server();
    let room = unique("slow-reader");
    let mut owner = s.player(&room, "Owner").await;
    owner
        .send(cm::Msg::Join(proto::Join {
            password: String::new(),
            create_settings: Some(proto::UpdateSettings {
                allow_black_midi: Some(true),
                ..Default::default()
            }),
        }))
        .await;
    owner
        .recv_matching(|m| matches!(m, Msg::Joined(_)).then_some(()))
        .await;
    let mut senders = vec![owner];
    for i in 1..8 {
        let mut p = s.player(&room, &format!("Sender{i}")).await;
        p.join().await;
        senders.push(p);
    }
    let token = s.guest_token("Sloth").await;
    let mut sloth =
        Client::connect_small_window(&format!("{}?token={token}", s.ws_url(&room)), 4096).await;
    sloth.join().await;
    let sloth_id = sloth.id().to_owned();

    // Each sender sends a full batch every 100 ms (well inside the frame budget; Black MIDI
    // lifts the note quota) and reads everything it gets. They stop when the watcher (the
    // owner) sees the sloth leave, or after MAX_BATCHES in all: that is several MiB, far
    // over both hosts' bounds.
    const MAX_BATCHES: usize = 4000;
    let left = Cell::new(false);
    let sent = Cell::new(0usize);
    let mut watcher_saw_leave = false;
    let mut runs = Vec::new();
    for (i, p) in senders.iter_mut().enumerate() {
        let (left, sent) = (&left, &sent);
        let sloth_id = sloth_id.as_str();
        let watching = i == 0;
        runs.push(async move {
            let mut saw_leave = false;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut round = 0;
            while !left.get() && sent.get() < MAX_BATCHES {
                tokio::select! {
                    _ = tick.tick() => {
                        if p.try_send(big_batch(round)).await.is_ok() {
                            sent.set(sent.get() + 1);
                        }
                        round += 1;
                    }
                    e = p.next_event_lenient(Duration::from_secs(1)) => match e {
                        Some(Ok(Event::Msg(Msg::ParticipantLeft(l)))) if l.participant_id == sloth_id => {
                            saw_leave = watching;
                            left.set(true);
                        }
                        Some(Ok(Event::Msg(Msg::NotesDropped(d)))) => {
                            panic!("a permitted stream was dropped: {d:?}")
                        }
                        Some(Ok(Event::Msg(Msg::Error(e)))) => panic!("a sender got {e:?}"),
                        Some(Ok(Event::Closed(f))) => panic!("a sender who reads was closed: {f:?}"),
                        Some(Err(e)) => panic!("a sender's socket broke: {e}"),
                        _ => {}
                    }
                }
            }
            saw_leave
        });
    }
    let started = Instant::now();
    for saw in futures_util::future::join_all(runs).await {
        watcher_saw_leave |= saw;
    }
    eprintln!(
        "slow reader: {} batches sent in {:?} before it was dropped (left: {})",
        sent.get(),
        started.elapsed(),
        left.get()
    );
    if !left.get() {
        // The stream is over; the bound may be crossed only now. Wait, bounded, for the leave.
        senders[0]
            .recv_matching(|m| match m {
                Msg::ParticipantLeft(l) if l.participant_id == sloth_id => Some(()),
                _ => None,
            })
            .await;
        watcher_saw_leave = true;
    }
    assert!(watcher_saw_leave, "the others saw the slow reader leave");
    // What it finally reads ends with the close (1013), after whatever was already queued.
    let ending = sloth.until_closed(Duration::from_secs(60), |_| {}).await;
    assert_eq!(ending, Ending::Closed(close::TRY_AGAIN_LATER));
}
