//! Property tests over the whole room: random input sequences keep its invariants.

use super::harness::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Connect(u8, u8),
    Join(u8),
    Notes(u8, i64),
    Garbage(u8, Vec<u8>),
    Text(u8),
    Big(u8),
    Disconnect(u8),
    /// The socket fails: a joined connection is suspended (docs/resume.md).
    Dropped(u8),
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
        c().prop_map(Op::Dropped),
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
        let mut kept = Kept::default();
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
                Op::Dropped(c) => {
                    records.remove(&conn(c));
                    room.handle(Input::Dropped { conn: conn(c) }, now)
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
                    // The host ticked at every deadline before it slept (grace periods end).
                    let tfx = room.handle(Input::Tick, now);
                    keep_records(&mut records, &tfx);
                    keep_stored(&mut persisted, &tfx);
                    for e in &tfx {
                        if let Effect::Keep(k) = e {
                            kept.apply(k.clone());
                        }
                    }
                    prop_assert_eq!(&persisted, room.stored(), "storage lags the room");
                    let before: Vec<_> = room.participants().cloned().collect();
                    let (woken, fx) = Room::restore_with("prop", Some(persisted.clone()), records.values().cloned(), kept.clone(), now, SEED);
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
                if let Effect::Send { to, frame, delivery } = e {
                    for t in to.as_slice() {
                        prop_assert!(room.conns.contains_key(t) || closed.contains(t), "sent to unknown conn {}", t);
                    }
                    // Only note batches and cursor moves may be skipped for a listener that
                    // fell behind (every connection here speaks protobuf).
                    let msg = ServerMessage::decode(frame.clone()).ok().and_then(|m| m.msg);
                    prop_assert_eq!(Some(*delivery), msg.as_ref().map(Delivery::of));
                }
            }
            keep_records(&mut records, &fx);
            for e in &fx {
                if let Effect::Keep(k) = e {
                    kept.apply(k.clone());
                }
            }
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
                let sockets = room.conns.values().filter(|c| c.identity.user_id == user && !c.is_suspended()).count();
                prop_assert!(sockets <= budget::MAX_CONNS_PER_USER, "{} holds {} sockets", user, sockets);
                let suspended = room.conns.values().filter(|c| c.identity.user_id == user && c.is_suspended()).count();
                prop_assert!(suspended <= budget::MAX_CONNS_PER_USER, "{} keeps {} suspended", user, suspended);
            }
            // What the host kept matches the room: a session per resumable connection.
            let mut with_session: Vec<ConnId> = room.conns.iter().filter(|(_, c)| c.resume.is_some()).map(|(id, _)| *id).collect();
            let mut kept_ids: Vec<ConnId> = kept.sessions.iter().map(|s| s.record.conn).collect();
            with_session.sort();
            kept_ids.sort();
            prop_assert_eq!(with_session, kept_ids, "kept sessions differ from the room's");
            if matches!(op_kind, OpKind::Tick) {
                prop_assert!(room.suspended_count() == 0 || room.next_deadline().is_some());
                prop_assert!(room.conns.values().all(|c| c.identity.expires_at.is_none_or(|t| t > now)), "an expired socket survived a tick");
            }
        }
    }
}
