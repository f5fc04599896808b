//! The room's tests and the harness the other test files share (`tests_*.rs`).

use super::perms::Actor;
use super::stored::Ban;
use super::stored::{RoomKind, Stored};
use super::*;
#[allow(unused_imports)]
use crate::limits::{MAX_FRAME_BYTES, close};
use crate::proto::NotesDroppedReason;
#[allow(unused_imports)]
use crate::proto::{ClientMessage, ErrorCode, ServerMessage, client_message::Msg as C};
use crate::proto::{JoinFailure, NoteEvent, NoteOn, client_message, note_event, server_message};
use proptest::prelude::*;
#[allow(unused_imports)]
use prost::Message;

pub(super) const NOW: Millis = 1_800_000_000_000;
pub(super) const SEED: [u8; 32] = [7; 32];

pub(super) fn room(name: &str) -> Room {
    Room::new(name, SEED)
}

/// A normal room "r" whose stored state was changed first.
pub(super) fn room_with(f: impl FnOnce(&mut Stored)) -> Room {
    let mut stored = Stored::new(RoomKind::Normal);
    f(&mut stored);
    Room::restore("r", Some(stored), [], NOW, SEED).0
}

pub(super) fn ident(user: &str) -> Identity {
    Identity {
        user_id: user.into(),
        name: format!("name of {user}"),
        roles: vec!["guest".into()],
        ..Default::default()
    }
}

pub(super) fn client(msg: client_message::Msg) -> Vec<u8> {
    ClientMessage { msg: Some(msg) }.encode_to_vec()
}

pub(super) fn join() -> Vec<u8> {
    client(client_message::Msg::Join(proto::Join::default()))
}

pub(super) fn notes(time: Millis) -> Vec<u8> {
    client(client_message::Msg::Notes(proto::NoteBatch {
        time,
        events: vec![NoteEvent {
            delay: 0,
            kind: Some(note_event::Kind::NoteOn(NoteOn {
                note: 60,
                velocity: 90,
                channel: 0,
            })),
        }],
        sender_id: "forged".into(),
    }))
}

/// What a host does with an input: hands it to the room and checks the passwords the room
/// asks about at once (feeding the answers back), so a Join's answer is in the effects.
pub(super) fn drive(room: &mut Room, input: Input<'_>, now: Millis) -> Vec<Effect> {
    let mut fx = room.handle(input, now);
    let mut i = 0;
    while i < fx.len() {
        if let Effect::VerifyPassword {
            conn,
            password,
            hash,
        } = &fx[i]
        {
            let (conn, ok) = (*conn, hash.verify(password));
            fx.extend(room.handle(Input::PasswordChecked { conn, ok }, now));
        }
        i += 1;
    }
    fx
}

pub(super) fn binary(room: &mut Room, conn: ConnId, bytes: &[u8]) -> Vec<Effect> {
    drive(
        room,
        Input::Frame {
            conn,
            frame: Frame::Binary(bytes),
        },
        NOW,
    )
}

pub(super) fn connect(room: &mut Room, conn: ConnId, user: &str) -> Vec<Effect> {
    room.handle(
        Input::Connect {
            conn,
            identity: ident(user),
        },
        NOW,
    )
}

/// Connects and joins; returns the join effects.
pub(super) fn enter(room: &mut Room, conn: ConnId, user: &str) -> Vec<Effect> {
    connect(room, conn, user);
    binary(room, conn, &join())
}

/// The (targets, decoded message) of every Send effect.
pub(super) fn sent(effects: &[Effect]) -> Vec<(Vec<ConnId>, server_message::Msg)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, frame } => {
                let mut t = to.as_slice().to_vec();
                t.sort();
                Some((
                    t,
                    ServerMessage::decode(frame.clone()).unwrap().msg.unwrap(),
                ))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn error_code(effects: &[Effect]) -> Option<ErrorCode> {
    sent(effects).into_iter().find_map(|(_, m)| match m {
        server_message::Msg::Error(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    })
}

#[test]
fn welcome_on_connect() {
    let mut room = room("r");
    let fx = connect(&mut room, 1, "alice");
    assert!(matches!(&fx[0], Effect::Remember(r) if r.conn == 1 && r.joined.is_none()));
    let msgs = sent(&fx);
    let [(to, server_message::Msg::Welcome(w))] = &msgs[..] else {
        panic!("{msgs:?}")
    };
    assert_eq!(to, &[1]);
    assert_eq!(w.server_time, NOW);
    assert_eq!(w.room, "r");
    assert_eq!(w.max_frame_bytes as usize, MAX_FRAME_BYTES);
    let you = w.you.as_ref().unwrap();
    assert_eq!(you.user_id, "alice");
    assert_eq!(you.id, participant_id("alice"));
    assert!(you.color.starts_with('#') && you.color.len() == 7);
    assert_eq!(
        room.participant_count(),
        0,
        "not a participant before joining"
    );
}

#[test]
fn join_tells_newcomer_and_others() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    let fx = enter(&mut room, 2, "bob");
    let msgs = sent(&fx);
    assert_eq!(msgs.len(), 2);
    let (to, server_message::Msg::Joined(j)) = &msgs[0] else {
        panic!()
    };
    assert_eq!(to, &[2]);
    let names: Vec<_> = j.participants.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(j.you.as_ref().unwrap().user_id, "bob");
    let (to, server_message::Msg::ParticipantJoined(pj)) = &msgs[1] else {
        panic!()
    };
    assert_eq!(to, &[1]);
    assert_eq!(pj.participant.as_ref().unwrap().user_id, "bob");
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Remember(r) if r.conn == 2 && r.joined.is_some()))
    );
}

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
fn ping_gets_pong_even_before_join() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    let fx = binary(
        &mut room,
        1,
        &client(client_message::Msg::Ping(proto::Ping { client_time: 12.5 })),
    );
    let msgs = sent(&fx);
    let [(_, server_message::Msg::Pong(p))] = &msgs[..] else {
        panic!()
    };
    assert_eq!((p.client_time, p.server_time), (12.5, NOW));
}

#[test]
fn disconnect_tells_the_others() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let fx = room.handle(Input::Disconnect { conn: 1 }, NOW);
    let msgs = sent(&fx);
    // Alice created the room, so her crown drops as she leaves.
    let [
        (to, server_message::Msg::ParticipantLeft(l)),
        (_, server_message::Msg::OwnerChanged(o)),
    ] = &msgs[..]
    else {
        panic!("{msgs:?}")
    };
    assert_eq!(to, &[2]);
    let o = o.ownership.as_ref().unwrap();
    assert_eq!(
        (o.owner_id.as_str(), o.previous_owner_user_id.as_str()),
        ("", "alice")
    );
    assert_eq!(l.participant_id, participant_id("alice"));
    assert_eq!(room.participant_count(), 1);
    // A second disconnect of the same connection is harmless.
    assert!(room.handle(Input::Disconnect { conn: 1 }, NOW).is_empty());
}

#[test]
fn one_user_two_connections_is_one_participant() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let fx = enter(&mut room, 3, "alice");
    assert_eq!(room.participant_count(), 2);
    assert!(
        sent(&fx)
            .iter()
            .all(|(_, m)| !matches!(m, server_message::Msg::ParticipantJoined(_)))
    );
    // Her notes from one tab reach her other tab and bob.
    let msgs = sent(&binary(&mut room, 1, &notes(NOW)));
    assert_eq!(msgs[0].0, vec![2, 3]);
    assert!(
        room.handle(Input::Disconnect { conn: 1 }, NOW).is_empty(),
        "still present via conn 3"
    );
    let msgs = sent(&room.handle(Input::Disconnect { conn: 3 }, NOW));
    assert!(matches!(
        &msgs[..],
        [
            (_, server_message::Msg::ParticipantLeft(_)),
            (_, server_message::Msg::OwnerChanged(_))
        ]
    ));
}

#[test]
fn bad_input_gets_typed_errors_and_the_connection_keeps_working() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    assert_eq!(
        error_code(&binary(&mut room, 1, &notes(NOW))),
        Some(ErrorCode::NotJoined)
    );
    assert_eq!(
        error_code(&binary(&mut room, 1, &[0xff, 0xff, 0xff])),
        Some(ErrorCode::MalformedFrame)
    );
    assert_eq!(
        error_code(&binary(&mut room, 1, &[])),
        Some(ErrorCode::EmptyMessage)
    );
    let fx = room.handle(
        Input::Frame {
            conn: 1,
            frame: Frame::Text("hi"),
        },
        NOW,
    );
    assert_eq!(error_code(&fx), Some(ErrorCode::TextFrame));
    binary(&mut room, 1, &join());
    assert_eq!(
        error_code(&binary(&mut room, 1, &join())),
        Some(ErrorCode::AlreadyJoined)
    );
    assert_eq!(
        error_code(&binary(&mut room, 1, &notes(NOW - 60_000))),
        Some(ErrorCode::InvalidNotes)
    );
    assert_eq!(room.participant_count(), 1);
}

#[test]
fn oversized_frame_closes_with_1009() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let big = vec![0u8; MAX_FRAME_BYTES + 1];
    let fx = binary(&mut room, 2, &big);
    assert!(fx.contains(&Effect::Close {
        conn: 2,
        code: 1009,
        reason: "frame too large"
    }));
    assert!(
        matches!(&sent(&fx)[..], [(to, server_message::Msg::ParticipantLeft(_))] if to == &[1])
    );
    assert_eq!(room.participant_count(), 1);
    // Exactly at the limit is fine (it is then judged on content).
    let fx = binary(&mut room, 1, &vec![0u8; MAX_FRAME_BYTES]);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Close { .. })));
}

/// What a host stores per socket: the last Remember; a closed socket's record goes with it.
pub(super) fn keep_records(records: &mut BTreeMap<ConnId, ConnRecord>, fx: &[Effect]) {
    for e in fx {
        match e {
            Effect::Remember(r) => {
                records.insert(r.conn, r.clone());
            }
            Effect::Close { conn, .. } => {
                records.remove(conn);
            }
            Effect::Send { .. }
            | Effect::Persist(_)
            | Effect::Directory(_)
            | Effect::VerifyPassword { .. } => {}
        }
    }
}

/// What a host's durable storage holds after these effects.
pub(super) fn keep_stored(stored: &mut Stored, fx: &[Effect]) {
    for e in fx {
        if let Effect::Persist(change) = e {
            stored.apply(change.clone());
        }
    }
}

#[test]
fn restore_after_hibernation_looks_the_same() {
    let mut room = room("r");
    let mut records = BTreeMap::new();
    for (conn, user) in [(10, "carol"), (3, "alice"), (8, "dave")] {
        keep_records(&mut records, &connect(&mut room, conn, user));
        keep_records(&mut records, &binary(&mut room, conn, &join()));
        if conn == 3 {
            keep_records(&mut records, &connect(&mut room, 5, "bob")); // connected, not joined
        }
    }
    let before: Vec<_> = room.participants().cloned().collect();

    let (mut woken, fx) = Room::restore(
        "r",
        Some(room.stored().clone()),
        records.into_values(),
        NOW,
        SEED,
    );
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Persist(_))),
        "the owner is still connected: {fx:?}"
    );
    assert_eq!(woken.participants().cloned().collect::<Vec<_>>(), before);
    assert_eq!(woken.connection_count(), 4);
    let msgs = sent(&binary(&mut woken, 3, &notes(NOW)));
    let (to, server_message::Msg::Notes(b)) = &msgs[0] else {
        panic!()
    };
    assert_eq!(to, &[8, 10]);
    assert_eq!(b.sender_id, participant_id("alice"));
    // Bob joins after the wake and is last in order.
    let msgs = sent(&binary(&mut woken, 5, &join()));
    let (_, server_message::Msg::Joined(j)) = &msgs[0] else {
        panic!()
    };
    let order: Vec<_> = j.participants.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(order, ["carol", "alice", "dave", "bob"]);
}

#[derive(Debug, Clone)]
enum Op {
    Connect(u8, u8),
    Join(u8),
    Notes(u8, i64),
    Garbage(u8, Vec<u8>),
    Text(u8),
    Big(u8),
    Disconnect(u8),
    Hibernate,
    Chat(u8),
    Kick(u8, u8, bool),
    Capacity(u8, u32),
    Crown(u8, u8, u8),
    Mute(u8, u8),
    Wait(u64),
    /// Lock (or unlock) the room with the password "pw".
    Lock(u8, bool),
    /// Join with the right password or a wrong one; the check stays pending.
    JoinPw(u8, bool),
    /// The host's answer to a pending check.
    Checked(u8, bool),
    SessionEnded(u8),
    RolesChanged(u8),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let c = || 0..8u8;
    prop_oneof![
        (c(), 0..5u8).prop_map(|(c, u)| Op::Connect(c, u)),
        c().prop_map(Op::Join),
        (c(), -20_000..20_000i64).prop_map(|(c, d)| Op::Notes(c, d)),
        (c(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(c, b)| Op::Garbage(c, b)),
        c().prop_map(Op::Text),
        c().prop_map(Op::Big),
        c().prop_map(Op::Disconnect),
        Just(Op::Hibernate),
        c().prop_map(Op::Chat),
        (c(), 0..5u8, any::<bool>()).prop_map(|(c, u, b)| Op::Kick(c, u, b)),
        (c(), 0..5u32).prop_map(|(c, n)| Op::Capacity(c, n)),
        (c(), 0..3u8, 0..5u8).prop_map(|(c, k, u)| Op::Crown(c, k, u)),
        (c(), 0..5u8).prop_map(|(c, u)| Op::Mute(c, u)),
        (0..20_000u64).prop_map(Op::Wait),
        (c(), any::<bool>()).prop_map(|(c, b)| Op::Lock(c, b)),
        (c(), any::<bool>()).prop_map(|(c, b)| Op::JoinPw(c, b)),
        (c(), any::<bool>()).prop_map(|(c, b)| Op::Checked(c, b)),
        (0..5u8).prop_map(Op::SessionEnded),
        (0..5u8).prop_map(Op::RolesChanged),
        Just(Op::Tick),
    ]
}

/// User u4 is an admin, u3 a moderator, the rest guests; u1's token expires 30 s in.
fn prop_identity(u: u8) -> Identity {
    let role = match u {
        4 => "admin",
        3 => "moderator",
        _ => "guest",
    };
    Identity {
        expires_at: (u == 1).then_some(NOW + 30_000),
        ..ident_with(&format!("u{u}"), &[role])
    }
}

enum OpKind {
    Tick,
    Other,
}

proptest! {
    /// Random sequences never panic, and the room's invariants hold after every step: at most
    /// one owner and only a present one; never more participants than the limit (staff aside);
    /// no banned user present; quotas within bounds; every participant has a joined connection;
    /// no user appears twice; no frame goes to an unknown connection; storage always equals the
    /// room's durable state; and hibernating changes nothing visible.
    #[test]
    fn random_inputs_keep_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let mut room = room("prop");
        let mut records = BTreeMap::new();
        let mut persisted = Stored::new(RoomKind::Normal);
        let mut now = NOW;
        for op in ops {
            let op_kind = if matches!(op, Op::Tick) { OpKind::Tick } else { OpKind::Other };
            let count_before = room.participant_count();
            let conn = |c: u8| ConnId::from(c);
            let at = |room: &mut Room, c: u8, m: client_message::Msg, now| msg_at(room, conn(c), m, now);
            let fx = match op {
                Op::Connect(c, u) => room.handle(Input::Connect { conn: conn(c), identity: prop_identity(u) }, now),
                Op::Join(c) => at(&mut room, c, client_message::Msg::Join(proto::Join::default()), now),
                Op::Notes(c, d) => room.handle(Input::Frame { conn: conn(c), frame: Frame::Binary(&notes(now.saturating_add_signed(d))) }, now),
                Op::Garbage(c, b) => room.handle(Input::Frame { conn: conn(c), frame: Frame::Binary(&b) }, now),
                Op::Text(c) => room.handle(Input::Frame { conn: conn(c), frame: Frame::Text("x") }, now),
                Op::Big(c) => room.handle(Input::Frame { conn: conn(c), frame: Frame::Binary(&vec![1u8; MAX_FRAME_BYTES + 1]) }, now),
                Op::Disconnect(c) => {
                    records.remove(&conn(c));
                    room.handle(Input::Disconnect { conn: conn(c) }, now)
                }
                Op::Chat(c) => at(&mut room, c, chat("hello"), now),
                Op::Kick(c, u, ban) => at(&mut room, c, client_message::Msg::Kick(proto::Kick { participant_id: pid(&format!("u{u}")), ban_ms: if ban { 5000 } else { 0 } }), now),
                Op::Capacity(c, n) => at(&mut room, c, client_message::Msg::UpdateSettings(proto::UpdateSettings { max_players: Some(n), ..Default::default() }), now),
                Op::Crown(c, k, u) => {
                    let m = match k {
                        0 => client_message::Msg::ClaimOwnership(proto::ClaimOwnership {}),
                        1 => client_message::Msg::DropOwnership(proto::DropOwnership {}),
                        _ => client_message::Msg::TransferOwnership(proto::TransferOwnership { participant_id: pid(&format!("u{u}")) }),
                    };
                    at(&mut room, c, m, now)
                }
                Op::Mute(c, u) => at(&mut room, c, client_message::Msg::Mute(proto::Mute { participant_id: pid(&format!("u{u}")), notes: true, chat: u % 2 == 0 }), now),
                Op::Wait(ms) => {
                    now += ms;
                    Vec::new()
                }
                Op::Lock(c, on) => at(&mut room, c, client_message::Msg::UpdateSettings(proto::UpdateSettings { password: Some(if on { "pw".into() } else { String::new() }), ..Default::default() }), now),
                Op::JoinPw(c, right) => {
                    let m = client_message::Msg::Join(proto::Join { password: if right { "pw".into() } else { "no".into() }, create_settings: None });
                    room.handle(Input::Frame { conn: conn(c), frame: Frame::Binary(&client(m)) }, now)
                }
                Op::Checked(c, ok) => room.handle(Input::PasswordChecked { conn: conn(c), ok }, now),
                Op::SessionEnded(u) => room.handle(Input::SessionEnded { user_id: format!("u{u}"), session_id: None }, now),
                Op::RolesChanged(u) => room.handle(Input::IdentityChanged { user_id: format!("u{u}") }, now),
                Op::Tick => room.handle(Input::Tick, now),
                Op::Hibernate => {
                    prop_assert_eq!(&persisted, room.stored(), "storage lags the room");
                    let before: Vec<_> = room.participants().cloned().collect();
                    let (woken, fx) = Room::restore("prop", Some(persisted.clone()), records.values().cloned(), now, SEED);
                    prop_assert!(!fx.iter().any(|e| matches!(e, Effect::Persist(_))), "a present owner keeps the crown on wake: {:?}", fx);
                    room = woken;
                    prop_assert_eq!(room.participants().cloned().collect::<Vec<_>>(), before);
                    Vec::new()
                }
            };
            // A frame may go to a known connection, or to one closed right after it (the
            // Kicked notice before the close).
            let closed: Vec<ConnId> = fx.iter().filter_map(|e| match e {
                Effect::Close { conn, .. } => Some(*conn),
                _ => None,
            }).collect();
            for e in &fx {
                if let Effect::Send { to, .. } = e {
                    for t in to.as_slice() {
                        prop_assert!(room.conns.contains_key(t) || closed.contains(t), "sent to unknown conn {}", t);
                    }
                }
            }
            keep_records(&mut records, &fx);
            keep_stored(&mut persisted, &fx);
            prop_assert_eq!(&persisted, room.stored());

            let mut users: Vec<_> = room.participants().map(|p| p.user_id.clone()).collect();
            users.sort();
            let n = users.len();
            users.dedup();
            prop_assert_eq!(users.len(), n, "a user appears twice");
            if let Some(owner) = &room.stored.crown.owner_user {
                prop_assert!(users.contains(owner), "the owner {} is not present", owner);
            }
            // Lowering the capacity never evicts anyone, so the limit binds each join: a
            // non-staff newcomer only gets in while the room is below it.
            if n > count_before {
                let newcomer = room.members.last().map(|m| Actor::from_roles(&m.info.roles, false).staff());
                if newcomer == Some(false) {
                    let cap = room.stored.settings.max_players as usize;
                    prop_assert!(count_before < cap, "joined a room of {} with a limit of {}", count_before, cap);
                }
            }
            for ban in room.stored.bans.iter().filter(|b| b.until > now) {
                prop_assert!(!users.contains(&ban.user_id), "banned {} is present", ban.user_id);
            }
            for m in &mut room.members {
                prop_assert!(!m.conns.is_empty());
                let q = m.quota.to_proto(now);
                prop_assert!(q.unlimited || q.points <= q.max);
            }
            for m in &room.members {
                for c in &m.conns {
                    prop_assert!(room.conns.get(c).is_some_and(|c| c.joined.is_some()));
                }
            }
            for u in 0..5 {
                let user = format!("u{u}");
                let sockets = room.conns.values().filter(|c| c.identity.user_id == user).count();
                prop_assert!(sockets <= budget::MAX_CONNS_PER_USER, "{} holds {} sockets", user, sockets);
            }
            if matches!(op_kind, OpKind::Tick) {
                prop_assert!(room.conns.values().all(|c| c.identity.expires_at.is_none_or(|t| t > now)), "an expired socket survived a tick");
            }
        }
    }
}

/// The capacity invariant without the noise of capacity changes: joins never overfill a room.
#[test]
fn joins_never_exceed_the_limit() {
    let mut room = room_with(|s| s.settings.max_players = 3);
    for i in 0..10 {
        enter(&mut room, i, &format!("user{i}"));
        assert!(room.participant_count() <= 3);
    }
    assert_eq!(room.participant_count(), 3);
}

// ---------------------------------------------------------------------------------------------
// The complete room: roles, notes quota, chat, settings, crown, moderation, durability.

pub(super) fn ident_with(user: &str, roles: &[&str]) -> Identity {
    Identity {
        user_id: user.into(),
        name: user.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

pub(super) fn enter_as(room: &mut Room, conn: ConnId, user: &str, roles: &[&str]) -> Vec<Effect> {
    room.handle(
        Input::Connect {
            conn,
            identity: ident_with(user, roles),
        },
        NOW,
    );
    binary(room, conn, &join())
}

pub(super) fn msg(room: &mut Room, conn: ConnId, m: client_message::Msg) -> Vec<Effect> {
    binary(room, conn, &client(m))
}

pub(super) fn msg_at(
    room: &mut Room,
    conn: ConnId,
    m: client_message::Msg,
    at: Millis,
) -> Vec<Effect> {
    drive(
        room,
        Input::Frame {
            conn,
            frame: Frame::Binary(&client(m)),
        },
        at,
    )
}

pub(super) fn chat(text: &str) -> client_message::Msg {
    client_message::Msg::Chat(proto::SendChat { text: text.into() })
}

pub(super) fn find<T>(fx: &[Effect], f: impl Fn(&server_message::Msg) -> Option<T>) -> Option<T> {
    sent(fx).iter().find_map(|(_, m)| f(m))
}

pub(super) fn join_failure(fx: &[Effect]) -> Option<(JoinFailure, u64)> {
    find(fx, |m| match m {
        server_message::Msg::JoinFailed(f) => {
            Some((JoinFailure::try_from(f.reason).ok()?, f.retry_after_ms))
        }
        _ => None,
    })
}

pub(super) fn pid(user: &str) -> String {
    participant_id(user)
}

/// Every privileged action by every role, through the real message handlers: allowed, or
/// refused with NOT_ALLOWED.
#[test]
fn privileged_actions_by_role() {
    use client_message::Msg as M;
    const ROLES: [&str; 5] = ["guest", "member", "owner", "moderator", "admin"];
    #[rustfmt::skip]
    let table: [(&str, [bool; 5]); 10] = [
        //                      guest  member owner  mod    admin
        ("change settings",    [false, false, true,  true,  true ]),
        ("raise capacity",     [false, false, false, false, true ]),
        ("kick",               [false, false, true,  true,  true ]),
        ("ban",                [false, false, true,  true,  true ]),
        ("unban",              [false, false, true,  true,  true ]),
        ("mute",               [false, false, true,  true,  true ]),
        ("transfer crown",     [false, false, true,  true,  true ]),
        ("drop crown",         [false, false, true,  false, false]),
        ("delete others' chat",[false, false, false, true,  true ]),
        ("clear chat",         [false, false, false, true,  true ]),
    ];
    for (action, expected) in table {
        for (role, allowed) in ROLES.iter().zip(expected) {
            let mut room = room_with(|s| {
                s.bans.push(Ban {
                    user_id: "banned".into(),
                    until: NOW + 60_000,
                    network: None,
                })
            });
            // The creator owns the room; for the "owner" row the actor is the creator.
            let actor: ConnId = 1;
            if *role == "owner" {
                enter_as(&mut room, actor, "actor", &["member"]);
            } else {
                enter_as(&mut room, 9, "creator", &["member"]);
                enter_as(&mut room, actor, "actor", &[role]);
            }
            enter_as(&mut room, 2, "victim", &["guest"]);
            let victim_chat = find(&msg(&mut room, 2, chat("hello")), |m| match m {
                server_message::Msg::Chat(c) => Some(c.id),
                _ => None,
            })
            .unwrap();
            let m = match action {
                "change settings" => M::UpdateSettings(proto::UpdateSettings {
                    visible: Some(false),
                    ..Default::default()
                }),
                "raise capacity" => M::UpdateSettings(proto::UpdateSettings {
                    max_players: Some(150),
                    ..Default::default()
                }),
                "kick" => M::Kick(proto::Kick {
                    participant_id: pid("victim"),
                    ban_ms: 0,
                }),
                "ban" => M::Kick(proto::Kick {
                    participant_id: pid("victim"),
                    ban_ms: 60_000,
                }),
                "unban" => M::Unban(proto::Unban {
                    user_id: "banned".into(),
                }),
                "mute" => M::Mute(proto::Mute {
                    participant_id: pid("victim"),
                    notes: true,
                    chat: false,
                }),
                "transfer crown" => M::TransferOwnership(proto::TransferOwnership {
                    participant_id: pid("victim"),
                }),
                "drop crown" => M::DropOwnership(proto::DropOwnership {}),
                "delete others' chat" => M::DeleteChat(proto::DeleteChat { id: victim_chat }),
                "clear chat" => M::ClearChat(proto::ClearChat {}),
                _ => unreachable!(),
            };
            let fx = msg(&mut room, actor, m);
            let refused = error_code(&fx) == Some(ErrorCode::NotAllowed);
            assert_eq!(!refused, allowed, "{role} / {action}: {:?}", sent(&fx));
            if allowed {
                assert!(
                    error_code(&fx).is_none(),
                    "{role} / {action}: {:?}",
                    sent(&fx)
                );
                let done = fx
                    .iter()
                    .any(|e| matches!(e, Effect::Persist(_) | Effect::Close { .. }));
                assert!(done, "{role} / {action} did nothing");
            }
        }
    }
}

#[test]
fn an_owner_cannot_kick_or_mute_staff_but_an_admin_can() {
    let mut room = room("r");
    enter_as(&mut room, 1, "owner", &["member"]);
    enter_as(&mut room, 2, "mod", &["moderator"]);
    enter_as(&mut room, 3, "admin", &["admin"]);
    let kick = |p: &str| {
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid(p),
            ban_ms: 0,
        })
    };
    assert_eq!(
        error_code(&msg(&mut room, 1, kick("mod"))),
        Some(ErrorCode::NotAllowed)
    );
    assert_eq!(
        error_code(&msg(&mut room, 1, kick("owner"))),
        Some(ErrorCode::InvalidValue),
        "not yourself"
    );
    let fx = msg(&mut room, 3, kick("mod"));
    assert!(fx.contains(&Effect::Close {
        conn: 2,
        code: 4003,
        reason: "kicked"
    }));
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

#[test]
fn chat_rules_history_rate_and_filters() {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    enter(&mut room, 2, "bob");
    // Broadcast to everyone, the sender included, trimmed, with an id.
    let msgs = sent(&msg(&mut room, 2, chat("  hi all ")));
    let (to, server_message::Msg::Chat(c)) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!(
        (to.clone(), c.text.as_str(), c.participant_id.clone()),
        (vec![1, 2], "hi all", pid("bob"))
    );
    assert_eq!(
        error_code(&msg(&mut room, 2, chat("   "))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(&mut room, 2, chat(&"x".repeat(513)))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(&mut room, 2, chat("bell\u{7}"))),
        Some(ErrorCode::InvalidValue)
    );
    // Rate: 4 per 6 s for players (one used above).
    for i in 0..3 {
        assert_eq!(error_code(&msg(&mut room, 2, chat(&format!("m{i}")))), None);
    }
    assert_eq!(
        error_code(&msg(&mut room, 2, chat("one too many"))),
        Some(ErrorCode::RateLimited)
    );
    assert_eq!(
        error_code(&msg_at(&mut room, 2, chat("later"), NOW + 6000)),
        None
    );
    // The owner has a larger allowance.
    for i in 0..10 {
        assert_eq!(
            error_code(&msg(&mut room, 1, chat(&format!("o{i}")))),
            None,
            "owner message {i}"
        );
    }
    // Typing goes to the others.
    let msgs = sent(&msg(
        &mut room,
        2,
        client_message::Msg::Typing(proto::SetTyping { typing: true }),
    ));
    assert!(matches!(&msgs[..], [(to, server_message::Msg::Typing(t))] if to == &[1] && t.typing));
    // Profanity filter.
    msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            profanity_filter: Some(true),
            ..Default::default()
        }),
    );
    let text = find(
        &msg_at(&mut room, 2, chat("oh shit"), NOW + 20_000),
        |m| match m {
            server_message::Msg::Chat(c) => Some(c.text.clone()),
            _ => None,
        },
    );
    assert_eq!(text.as_deref(), Some("oh ****"));
    // Owner-only chat.
    msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            owner_only_chat: Some(true),
            ..Default::default()
        }),
    );
    assert_eq!(
        error_code(&msg_at(&mut room, 2, chat("me?"), NOW + 40_000)),
        Some(ErrorCode::NotAllowed)
    );
}

#[test]
fn chat_history_keeps_the_last_100_and_deletes() {
    let mut room = room_with(|s| s.settings.welcome_message = "Welcome, %%user%%!".into());
    enter(&mut room, 1, "owner");
    for i in 0..105u64 {
        msg_at(&mut room, 1, chat(&format!("m{i}")), NOW + i * 1000);
    }
    let fx = enter(&mut room, 2, "bob");
    let history = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => Some(j.chat_history.clone()),
        _ => None,
    })
    .unwrap();
    assert_eq!(history.len(), 100);
    assert_eq!(
        (history[0].text.as_str(), history[99].text.as_str()),
        ("m5", "m104")
    );
    let welcome = find(&fx, |m| match m {
        server_message::Msg::Chat(c) if c.participant_id.is_empty() => Some(c.text.clone()),
        _ => None,
    });
    assert_eq!(welcome.as_deref(), Some("Welcome, name of bob!"));
    // Bob may delete his own message, not the owner's (the owner is no moderator).
    let own = find(
        &msg_at(&mut room, 2, chat("mine"), NOW + 200_000),
        |m| match m {
            server_message::Msg::Chat(c) => Some(c.id),
            _ => None,
        },
    )
    .unwrap();
    let del = |id| client_message::Msg::DeleteChat(proto::DeleteChat { id });
    // (m5 just fell out of the 100 kept; m6 is the oldest now.)
    assert_eq!(
        error_code(&msg(&mut room, 2, del(history[1].id))),
        Some(ErrorCode::NotAllowed)
    );
    assert_eq!(
        error_code(&msg(&mut room, 1, del(own))),
        Some(ErrorCode::NotAllowed)
    );
    let msgs = sent(&msg(&mut room, 2, del(own)));
    assert!(matches!(&msgs[..], [(_, server_message::Msg::ChatDeleted(d))] if d.id == own));
    assert_eq!(
        error_code(&msg(&mut room, 2, del(own))),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn settings_are_validated_and_the_password_is_hashed_never_echoed() {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    let set = |p: proto::UpdateSettings| client_message::Msg::UpdateSettings(p);
    let bad = [
        proto::UpdateSettings {
            max_players: Some(0),
            ..Default::default()
        },
        proto::UpdateSettings {
            color: Some("red".into()),
            ..Default::default()
        },
        proto::UpdateSettings {
            welcome_message: Some("x".repeat(513)),
            ..Default::default()
        },
        proto::UpdateSettings {
            password: Some("p".repeat(129)),
            ..Default::default()
        },
    ];
    for p in bad {
        assert_eq!(
            error_code(&msg(&mut room, 1, set(p.clone()))),
            Some(ErrorCode::InvalidValue),
            "{p:?}"
        );
    }
    assert_eq!(
        room.stored().settings,
        stored::Settings::defaults(RoomKind::Normal),
        "refused changes change nothing"
    );
    let fx = msg(
        &mut room,
        1,
        set(proto::UpdateSettings {
            password: Some("hunter2".into()),
            max_players: Some(5),
            ..Default::default()
        }),
    );
    let s = find(&fx, |m| match m {
        server_message::Msg::SettingsChanged(s) => s.settings.clone(),
        _ => None,
    })
    .unwrap();
    assert!(s.has_password);
    assert_eq!(s.max_players, 5);
    let frames: Vec<u8> = fx
        .iter()
        .flat_map(|e| match e {
            Effect::Send { frame, .. } => frame.to_vec(),
            _ => vec![],
        })
        .collect();
    assert!(
        !frames.windows(7).any(|w| w == b"hunter2"),
        "the password never goes out"
    );
    let hash = room.stored().password.clone().unwrap();
    assert!(hash.verify("hunter2") && hash.hash != b"hunter2");

    connect(&mut room, 2, "bob");
    let j = |pw: &str| {
        client_message::Msg::Join(proto::Join {
            password: pw.into(),
            create_settings: None,
        })
    };
    assert_eq!(
        join_failure(&msg(&mut room, 2, j(""))),
        Some((JoinFailure::WrongPassword, 0))
    );
    assert_eq!(
        join_failure(&msg(&mut room, 2, j("wrong"))),
        Some((JoinFailure::WrongPassword, 0)),
        "the first wrong guess is free (a typo)"
    );
    assert!(
        find(&msg_at(&mut room, 2, j("hunter2"), NOW + 1000), |m| {
            matches!(m, server_message::Msg::Joined(_)).then_some(())
        })
        .is_some()
    );
}

#[test]
fn join_failures_are_typed() {
    let mut room = room_with(|s| {
        s.settings.max_players = 2;
        s.settings.allow_guests = false;
        s.settings.allow_bots = false;
    });
    enter_as(&mut room, 1, "owner", &["member"]);
    assert_eq!(
        join_failure(&enter_as(&mut room, 2, "g", &["guest"])),
        Some((JoinFailure::GuestsNotAllowed, 0))
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 3, "b", &["bot"])),
        Some((JoinFailure::NotAllowed, 0))
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 4, "m", &["member"])),
        None
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 5, "m2", &["member"])),
        Some((JoinFailure::RoomFull, 0))
    );
    // Another connection of someone present is never refused; staff pass a full room.
    assert_eq!(
        join_failure(&enter_as(&mut room, 6, "m", &["member"])),
        None
    );
    assert_eq!(
        join_failure(&enter_as(&mut room, 7, "mod", &["moderator"])),
        None
    );
    assert_eq!(room.participant_count(), 3);
}

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

#[test]
fn bans_keep_users_out_until_they_expire_or_are_lifted() {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    enter(&mut room, 2, "bob");
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
    );
    let msgs = sent(&fx);
    assert!(
        matches!(&msgs[0], (to, server_message::Msg::Kicked(k)) if to == &[2] && k.banned_until == NOW + 60_000)
    );
    assert!(fx.contains(&Effect::Close {
        conn: 2,
        code: close::KICKED,
        reason: "kicked"
    }));
    assert_eq!(room.participant_count(), 1);
    assert_eq!(
        error_code(&msg(
            &mut room,
            1,
            client_message::Msg::Kick(proto::Kick {
                participant_id: pid("owner"),
                ban_ms: MAX_BAN_MS + 1
            })
        )),
        Some(ErrorCode::InvalidValue)
    );

    connect(&mut room, 3, "bob");
    assert_eq!(
        join_failure(&binary(&mut room, 3, &join())),
        Some((JoinFailure::Banned, 60_000))
    );
    let later = room.handle(
        Input::Frame {
            conn: 3,
            frame: Frame::Binary(&join()),
        },
        NOW + 59_000,
    );
    assert_eq!(
        join_failure(&later),
        Some((JoinFailure::Banned, 1000)),
        "told how long remains"
    );
    let expired = room.handle(
        Input::Frame {
            conn: 3,
            frame: Frame::Binary(&join()),
        },
        NOW + 60_000,
    );
    assert_eq!(join_failure(&expired), None);

    // Unban lifts it early.
    msg_at(
        &mut room,
        1,
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
        NOW + 61_000,
    );
    msg(
        &mut room,
        1,
        client_message::Msg::Unban(proto::Unban {
            user_id: "bob".into(),
        }),
    );
    connect(&mut room, 4, "bob");
    assert_eq!(
        join_failure(&room.handle(
            Input::Frame {
                conn: 4,
                frame: Frame::Binary(&join())
            },
            NOW + 62_000
        )),
        None
    );
    assert_eq!(
        error_code(&msg(
            &mut room,
            1,
            client_message::Msg::Unban(proto::Unban {
                user_id: "bob".into()
            })
        )),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn profiles_are_validated_broadcast_and_kept_per_connection() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let update = |name: Option<&str>, color: Option<&str>, status: Option<&str>| {
        client_message::Msg::UpdateProfile(proto::UpdateProfile {
            name: name.map(Into::into),
            color: color.map(Into::into),
            status: status.map(Into::into),
        })
    };
    assert_eq!(
        error_code(&msg(&mut room, 2, update(Some(""), None, None))),
        Some(ErrorCode::InvalidValue)
    );
    // The error goes to the connection that sent the update, not another tab of the user.
    enter(&mut room, 3, "bob");
    let fx = msg(&mut room, 3, update(Some(""), None, None));
    assert!(matches!(&sent(&fx)[..], [(to, server_message::Msg::Error(_))] if to == &[3]));
    assert_eq!(
        error_code(&msg(&mut room, 2, update(None, Some("blue"), None))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(
            &mut room,
            2,
            update(None, None, Some(&"s".repeat(65)))
        )),
        Some(ErrorCode::InvalidValue)
    );
    let fx = msg(
        &mut room,
        2,
        update(Some("Robert"), Some("#FF0000"), Some("practising")),
    );
    let msgs = sent(&fx);
    let [(to, server_message::Msg::ParticipantUpdated(u))] = &msgs[..] else {
        panic!("{msgs:?}")
    };
    assert_eq!(to, &[1, 2, 3], "everyone, both of bob's tabs included");
    let p = u.participant.clone().unwrap();
    assert_eq!(
        (p.name.as_str(), p.color.as_str(), p.status.as_str()),
        ("Robert", "#ff0000", "practising")
    );
    // It survives hibernation through the connection record.
    let records: Vec<ConnRecord> = [1, 2].iter().filter_map(|&c| room.record(c)).collect();
    let (woken, _) = Room::restore("r", Some(room.stored().clone()), records, NOW, SEED);
    assert_eq!(woken.participants().nth(1).unwrap().name, "Robert");
}

#[test]
fn cursor_is_bounded_and_throttled() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let cur = |x: f32, y: f32| client_message::Msg::Cursor(proto::MoveCursor { x, y });
    assert_eq!(
        error_code(&msg(&mut room, 1, cur(101.0, 5.0))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(&mut room, 1, cur(f32::NAN, 5.0))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(sent(&msg_at(&mut room, 1, cur(1.0, 2.0), NOW)).len(), 1);
    assert!(
        msg_at(&mut room, 1, cur(1.5, 2.0), NOW + 49).is_empty(),
        "over 20/s"
    );
    assert_eq!(
        sent(&msg_at(&mut room, 1, cur(2.0, 2.0), NOW + 50)).len(),
        1
    );
}

#[test]
fn a_restart_keeps_settings_bans_and_chat_and_drops_an_absent_owners_crown() {
    let mut room = room("r");
    let mut persisted = Stored::new(RoomKind::Normal);
    let mut run = |_: &mut Room, fx: Vec<Effect>| keep_stored(&mut persisted, &fx);
    let fx = enter(&mut room, 1, "alice");
    run(&mut room, fx);
    let fx = enter(&mut room, 2, "bob");
    run(&mut room, fx);
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            max_players: Some(7),
            password: Some("pw".into()),
            ..Default::default()
        }),
    );
    run(&mut room, fx);
    let fx = msg(&mut room, 1, chat("remember me"));
    run(&mut room, fx);
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
    );
    run(&mut room, fx);
    assert_eq!(&persisted, room.stored());

    // The host restarts: every socket is gone; only storage remains.
    let (mut room, fx) = Room::restore("r", Some(persisted.clone()), [], NOW + 1000, SEED);
    let o = room.ownership_proto();
    assert_eq!(
        (o.owner_id.as_str(), o.previous_owner_user_id.as_str()),
        ("", "alice")
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Change::Crown(_))))
    );
    assert_eq!(room.settings_proto().max_players, 7);
    connect(&mut room, 3, "bob");
    assert_eq!(
        join_failure(&binary(&mut room, 3, &join())).map(|f| f.0),
        Some(JoinFailure::Banned)
    );
    connect(&mut room, 4, "alice");
    let fx = binary(&mut room, 4, &join());
    let j = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => Some(j.clone()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        j.chat_history
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>(),
        ["remember me"]
    );
    assert_eq!(
        j.ownership.unwrap().owner_id,
        pid("alice"),
        "the owner comes back to her crown"
    );
}

// ---------------------------------------------------------------------------------------------
// The directory: reports, subscriptions, join-or-create.

fn reports(fx: &[Effect]) -> Vec<crate::lobby::Summary> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Directory(DirectoryOp::Report(r)) => Some(r.summary.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_room_reports_joins_leaves_and_settings_but_not_notes() {
    let mut room = room("r");
    assert!(
        reports(&connect(&mut room, 1, "alice")).is_empty(),
        "connecting is not joining"
    );
    let r = reports(&binary(&mut room, 1, &join()));
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].players, r[0].owner_name.as_str(), r[0].capacity),
        (1, "name of alice", 20)
    );
    assert!(
        reports(&enter(&mut room, 2, "bob"))
            .iter()
            .any(|s| s.players == 2)
    );
    assert!(reports(&binary(&mut room, 1, &notes(NOW))).is_empty());
    assert!(reports(&msg(&mut room, 1, chat("hi"))).is_empty());
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            visible: Some(false),
            password: Some("x".into()),
            ..Default::default()
        }),
    );
    let r = reports(&fx);
    assert!(r.len() == 1 && !r[0].visible && r[0].locked, "{r:?}");
    let r = reports(&room.handle(Input::Disconnect { conn: 2 }, NOW));
    assert_eq!(r[0].players, 1);
    // Waking up always reports (the directory may hold a stale entry).
    let (_, fx) = Room::restore("r", Some(room.stored().clone()), [], NOW, SEED);
    assert_eq!(reports(&fx)[0].players, 0);
}

#[test]
fn subscribers_get_the_list_and_changes() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    connect(&mut room, 2, "bob");
    let sub = || client_message::Msg::SubscribeRooms(proto::SubscribeRooms {});
    let fx = msg(&mut room, 1, sub());
    assert!(
        fx.contains(&Effect::Directory(DirectoryOp::Subscribe {
            conn: 1,
            user_id: "alice".into()
        })),
        "before joining too"
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Remember(r) if r.subscribed))
    );
    let list = vec![room.summary(NOW)];
    let msgs = sent(&room.handle(
        Input::RoomList {
            conn: 1,
            rooms: list,
        },
        NOW,
    ));
    assert!(
        matches!(&msgs[..], [(to, server_message::Msg::RoomList(l))] if to == &[1] && l.rooms.len() == 1)
    );
    let delta = crate::lobby::Delta {
        upserted: vec![],
        removed: vec!["gone".into()],
    };
    let msgs = sent(&room.handle(Input::RoomListChanged(delta.clone()), NOW));
    assert!(
        matches!(&msgs[..], [(to, server_message::Msg::RoomListChanged(c))] if to == &[1] && c.removed == ["gone"])
    );
    // The last subscriber leaving unsubscribes the room.
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::UnsubscribeRooms(proto::UnsubscribeRooms {}),
    );
    assert!(fx.contains(&Effect::Directory(DirectoryOp::Unsubscribe)));
    assert!(room.handle(Input::RoomListChanged(delta), NOW).is_empty());
    msg(&mut room, 2, sub());
    assert!(
        room.handle(Input::Disconnect { conn: 2 }, NOW)
            .contains(&Effect::Directory(DirectoryOp::Unsubscribe))
    );
    assert!(!room.has_subscribers());
}

#[test]
fn join_or_create_applies_the_creators_settings_once() {
    let mut room = room("r");
    connect(&mut room, 1, "alice");
    let create = |max: u32| {
        client_message::Msg::Join(proto::Join {
            password: String::new(),
            create_settings: Some(proto::UpdateSettings {
                max_players: Some(max),
                visible: Some(false),
                ..Default::default()
            }),
        })
    };
    assert_eq!(
        error_code(&msg(&mut room, 1, create(0))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(room.participant_count(), 0, "refused settings: not created");
    let fx = msg(&mut room, 1, create(5));
    let j = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => Some(j.clone()),
        _ => None,
    })
    .unwrap();
    let s = j.settings.unwrap();
    assert_eq!((s.max_players, s.visible), (5, false));
    assert_eq!(j.ownership.unwrap().owner_id, pid("alice"));
    // Later joiners' settings are ignored: the room exists.
    connect(&mut room, 2, "bob");
    msg(&mut room, 2, create(9));
    assert_eq!(room.settings_proto().max_players, 5);
    // Lobbies ignore them too.
    let mut lobby = Room::new("lobby", SEED);
    connect(&mut lobby, 1, "alice");
    msg(&mut lobby, 1, create(5));
    assert_eq!(lobby.settings_proto().max_players, 30);
}

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

/// Issue 9: encodes per broadcast do not grow with the room. For rooms of 2 to 200 players, one
/// note batch yields exactly one `Effect::Send` (one frame, encoded once) whose targets are every
/// other player, and a join yields one frame for the newcomer and one shared by everyone else.
#[test]
fn one_encode_per_broadcast_whatever_the_room_size() {
    for size in [2u64, 10, 50, 200] {
        let mut room = room_with(|s| s.settings.max_players = size as u32);
        for conn in 1..size {
            enter(&mut room, conn, &format!("user{conn}"));
        }
        let join_fx = enter(&mut room, size, &format!("user{size}"));
        let join_sends: Vec<&Targets> = join_fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        assert_eq!(
            join_sends.len(),
            2,
            "room of {size}: Joined to the newcomer, ParticipantJoined once to the others"
        );
        assert_eq!(join_sends[0].as_slice(), &[size]);
        assert_eq!(join_sends[1].as_slice().len() as u64, size - 1);

        let sender = 1 + size / 2;
        let fx = binary(&mut room, sender, &notes(NOW));
        let frames: Vec<(&Targets, &Bytes)> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, frame } => Some((to, frame)),
                _ => None,
            })
            .collect();
        assert_eq!(
            frames.len(),
            1,
            "room of {size}: one note batch, one encoded frame"
        );
        assert_eq!(fx.len(), 1, "room of {size}: nothing but the broadcast");
        let (to, frame) = frames[0];
        let mut targets = to.as_slice().to_vec();
        targets.sort_unstable();
        let others: Vec<ConnId> = (1..=size).filter(|c| *c != sender).collect();
        assert_eq!(targets, others, "room of {size}: every other player, once");
        let Some(server_message::Msg::Notes(batch)) = ServerMessage::decode(frame.clone())
            .ok()
            .and_then(|m| m.msg)
        else {
            panic!("room of {size}: the frame is a note batch")
        };
        assert_eq!(batch.sender_id, participant_id(&format!("user{sender}")));
        // A host hands this same buffer to every target: cloning `Bytes` shares it.
        let shared = frame.clone();
        assert_eq!(shared.as_ptr(), frame.as_ptr());
    }
}
