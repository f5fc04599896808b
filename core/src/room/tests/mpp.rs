//! MPP connections in a room with protobuf ones: each broadcast is encoded once per protocol,
//! MPP frames become the room's messages, MPP gets its close codes.

use super::harness::*;
use serde_json::{Value, json};

/// What the room sent, split by protocol: protobuf frames decoded, MPP frames parsed.
#[derive(Default)]
struct Sent {
    proto: Vec<(Vec<ConnId>, SM)>,
    mpp: Vec<(Vec<ConnId>, Vec<Value>)>,
}

fn split(fx: &[Effect], mpp_conns: &[ConnId]) -> Sent {
    let mut s = Sent::default();
    for e in fx {
        if let Effect::Send { to, frame, .. } = e {
            let to = to.as_slice().to_vec();
            let n_mpp = to.iter().filter(|c| mpp_conns.contains(c)).count();
            assert!(
                n_mpp == 0 || n_mpp == to.len(),
                "one protocol per Send: {to:?}"
            );
            if n_mpp > 0 {
                let v: Vec<Value> = serde_json::from_slice(frame).expect("MPP JSON");
                s.mpp.push((to, v));
            } else {
                s.proto.push((
                    to,
                    ServerMessage::decode(frame.clone()).unwrap().msg.unwrap(),
                ));
            }
        }
    }
    s
}

fn mpp_frame(room: &mut Room, conn: ConnId, msgs: Value, now: Millis) -> Vec<Effect> {
    let text = msgs.to_string();
    drive(
        room,
        Input::Frame {
            conn,
            frame: Frame::Text(&text),
        },
        now,
    )
}

fn all_mpp(s: &Sent) -> Vec<Value> {
    s.mpp.iter().flat_map(|(_, v)| v.iter().cloned()).collect()
}

/// Room "r": protobuf players on conns 1 and 2, MPP players on 10 and 11.
fn mixed() -> Room {
    let mut r = room("r");
    for (c, u) in [(1, "ann"), (2, "bob")] {
        enter(&mut r, c, u);
    }
    for (c, u) in [(10, "cy"), (11, "di")] {
        mpp_enter(&mut r, c, u);
    }
    r
}

/// Connects `user` on `conn` as an MPP client and sends `ch` into room "r".
fn mpp_enter(r: &mut Room, conn: ConnId, user: &str) -> Vec<Effect> {
    drive(
        r,
        Input::ConnectMpp {
            conn,
            identity: ident(user),
        },
        NOW,
    );
    mpp_frame(r, conn, json!([{"m": "ch", "_id": "r"}]), NOW)
}

#[test]
fn an_mpp_join_gets_ch_history_and_quota_and_protobuf_players_see_it() {
    let mut r = room("r");
    enter(&mut r, 1, "ann");
    let fx = drive(
        &mut r,
        Input::ConnectMpp {
            conn: 10,
            identity: ident("cy"),
        },
        NOW,
    );
    assert!(
        split(&fx, &[10]).mpp.is_empty(),
        "no Welcome for MPP: the host said hi"
    );
    let fx = mpp_frame(&mut r, 10, json!([{"m": "ch", "_id": "r"}]), NOW);
    let s = split(&fx, &[10]);
    let got = all_mpp(&s);
    let kinds: Vec<&str> = got.iter().map(|m| m["m"].as_str().unwrap()).collect();
    assert_eq!(kinds[..3], ["ch", "c", "nq"]);
    assert_eq!(got[0]["p"], participant_id("cy"));
    assert_eq!(got[0]["ch"]["_id"], "r");
    assert_eq!(got[0]["ppl"].as_array().unwrap().len(), 2);
    assert!(s.proto.iter().any(|(to, m)| to == &[1]
        && matches!(m, SM::ParticipantJoined(p) if p.participant.as_ref().unwrap().user_id == "cy")));
}

#[test]
fn a_broadcast_is_encoded_once_per_protocol() {
    let mut r = mixed();
    let batch = client(M::Notes(proto::NoteBatch {
        time: NOW,
        events: vec![NoteEvent {
            delay: 7,
            kind: Some(E::NoteOn(NoteOn {
                note: 60,
                velocity: 127,
                channel: 0,
            })),
        }],
        sender_id: String::new(),
    }));
    let fx = drive(
        &mut r,
        Input::Frame {
            conn: 1,
            frame: Frame::Binary(&batch),
        },
        NOW,
    );
    let sends: Vec<&Effect> = fx
        .iter()
        .filter(|e| matches!(e, Effect::Send { .. }))
        .collect();
    assert_eq!(sends.len(), 2, "{fx:?}");
    // Both copies of a note batch may be skipped for a listener that fell behind.
    assert!(
        sends.iter().all(|e| matches!(
            e,
            Effect::Send {
                delivery: Delivery::Fresh,
                ..
            }
        )),
        "{sends:?}"
    );
    let s = split(&fx, &[10, 11]);
    assert_eq!(s.proto.len(), 1);
    assert_eq!(s.proto[0].0, vec![2]);
    assert_eq!(s.mpp.len(), 1);
    let (mut to, msgs) = s.mpp[0].clone();
    to.sort();
    assert_eq!(to, vec![10, 11]);
    assert_eq!(
        msgs,
        vec![json!({"m": "n", "t": NOW, "p": participant_id("ann"),
                    "n": [{"n": "c3", "v": 1.0, "d": 7}]})]
    );
}

#[test]
fn without_mpp_connections_sends_are_untouched() {
    let mut r = room("r");
    enter(&mut r, 1, "ann");
    drive(
        &mut r,
        Input::Connect {
            conn: 2,
            identity: ident("bob"),
        },
        NOW,
    );
    let fx = drive(
        &mut r,
        Input::Frame {
            conn: 2,
            frame: Frame::Binary(&join()),
        },
        NOW,
    );
    assert!(split(&fx, &[]).mpp.is_empty());
}

#[test]
fn mpp_chat_and_notes_reach_protobuf_players_with_names_velocities_delays_and_times() {
    let mut r = mixed();
    let fx = mpp_frame(
        &mut r,
        10,
        json!([
            {"m": "a", "message": "hello"},
            {"m": "n", "t": NOW + 5, "n": [{"n": "a-1", "v": 0.5, "d": 30}, {"n": "c7", "s": 1, "d": 40}]},
        ]),
        NOW,
    );
    let s = split(&fx, &[10, 11]);
    let chat = s.proto.iter().find_map(|(_, m)| match m {
        SM::Chat(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(chat.unwrap().text, "hello");
    let notes = s.proto.iter().find_map(|(to, m)| match m {
        SM::Notes(b) => Some((to.clone(), b.clone())),
        _ => None,
    });
    let (to, b) = notes.expect("notes relayed");
    assert!(to.contains(&1) && to.contains(&2));
    assert_eq!(b.time, NOW + 5);
    assert_eq!(b.sender_id, participant_id("cy"));
    assert_eq!(
        b.events,
        vec![
            NoteEvent {
                delay: 30,
                kind: Some(E::NoteOn(NoteOn {
                    note: 21,
                    velocity: 64,
                    channel: 0
                }))
            },
            NoteEvent {
                delay: 40,
                kind: Some(E::NoteOff(NoteOff {
                    note: 108,
                    channel: 0
                }))
            },
        ]
    );
    // The other MPP player hears both, once, in MPP form; the sender hears its own chat.
    let to_11 = all_mpp(&s);
    assert!(to_11.iter().any(|m| m["m"] == "a" && m["a"] == "hello"));
    assert!(
        to_11
            .iter()
            .any(|m| m["m"] == "n" && m["n"][0]["n"] == "a-1" && m["n"][0]["d"] == 30)
    );
}

#[test]
fn bad_and_unsupported_mpp_input_is_told_and_the_room_lives() {
    let mut r = mixed();
    for (msgs, title) in [
        (
            json!([{"m": "dm", "_id": "x", "message": "psst"}]),
            "Not supported",
        ),
        (json!([{"m": "zap"}]), "Bad message"),
        (json!({"m": "t"}), "Bad message"),
        (
            json!([{"m": "n", "t": NOW, "n": [{"n": "h9", "v": 1}]}]),
            "Bad message",
        ),
    ] {
        let fx = mpp_frame(&mut r, 10, msgs.clone(), NOW);
        let got = all_mpp(&split(&fx, &[10, 11]));
        assert_eq!(got.len(), 1, "{msgs}: {got:?}");
        assert_eq!(got[0]["m"], "notification");
        assert_eq!(got[0]["title"], title);
    }
    let fx = drive(
        &mut r,
        Input::Frame {
            conn: 10,
            frame: Frame::Text("not json"),
        },
        NOW,
    );
    assert_eq!(all_mpp(&split(&fx, &[10, 11]))[0]["m"], "notification");
    // Still in: a ping is answered.
    let fx = mpp_frame(&mut r, 10, json!([{"m": "t", "e": 5}]), NOW);
    assert_eq!(
        all_mpp(&split(&fx, &[10, 11])),
        vec![json!({"m": "t", "t": NOW, "e": 5.0})]
    );
}

#[test]
fn oversized_frames_and_floods_close_mpp_connections_too() {
    let mut r = mixed();
    let big = format!(
        "[{{\"m\":\"a\",\"message\":\"{}\"}}]",
        "x".repeat(MAX_FRAME_BYTES)
    );
    let fx = drive(
        &mut r,
        Input::Frame {
            conn: 10,
            frame: Frame::Text(&big),
        },
        NOW,
    );
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::Close {
                conn: 10,
                code: crate::limits::close::FRAME_TOO_LARGE,
                ..
            }
        )),
        "{fx:?}"
    );
    // The others were told cy left, in their own protocols.
    let s = split(&fx, &[11]);
    assert!(
        s.proto
            .iter()
            .any(|(_, m)| matches!(m, SM::ParticipantLeft(_)))
    );
    assert!(all_mpp(&s).iter().any(|m| m["m"] == "bye"));

    let mut closed = None;
    for i in 0..10_000u64 {
        let fx = mpp_frame(&mut r, 11, json!([{"m": "t", "e": i}]), NOW);
        if let Some(code) = fx.iter().find_map(|e| match e {
            Effect::Close { conn: 11, code, .. } => Some(*code),
            _ => None,
        }) {
            closed = Some(code);
            break;
        }
    }
    // Our code, as for any connection: the host's transport gives MPP clients MPP's (4007).
    assert_eq!(closed, Some(crate::limits::close::POLICY_VIOLATION));
}

#[test]
fn ch_to_another_room_hands_the_connection_over_and_bye_closes() {
    let mut r = mixed();
    let fx = mpp_frame(
        &mut r,
        10,
        json!([{"m": "ch", "_id": "elsewhere", "set": {"visible": false}}]),
        NOW,
    );
    // JSON compared as values: key order depends on serde_json's features in the build.
    assert!(
        fx.iter().any(|e| matches!(e,
            Effect::ChangeRoom { conn: 10, room, frame }
                if room == "elsewhere"
                    && serde_json::from_str::<Value>(frame).ok()
                        == Some(json!([{"m": "ch", "_id": "elsewhere", "set": {"visible": false}}]))
        )),
        "{fx:?}"
    );
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Close { conn: 10, .. }))
    );
    let fx = mpp_frame(&mut r, 11, json!([{"m": "bye"}]), NOW);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Close {
            conn: 11,
            code: 1000,
            ..
        }
    )));
}

#[test]
fn chset_and_chown_from_the_mpp_side_reach_protobuf_players() {
    let mut r = room("r");
    mpp_enter(&mut r, 10, "cy");
    enter(&mut r, 1, "ann");
    // cy created the room and holds the crown; chset reaches ann as SettingsChanged.
    let fx = mpp_frame(
        &mut r,
        10,
        json!([{"m": "chset", "set": {"color": "#0066ff", "crownsolo": true}}]),
        NOW,
    );
    let s = split(&fx, &[10]);
    assert!(
        s.proto
            .iter()
            .any(|(_, m)| matches!(m, SM::SettingsChanged(c)
        if c.settings.as_ref().is_some_and(|x| x.color == "#0066ff" && x.owner_only_play)))
    );
    let ch = all_mpp(&s);
    assert_eq!(ch[0]["ch"]["settings"]["crownsolo"], true);
    assert_eq!(ch[0]["ppl"].as_array().unwrap().len(), 2);
    // chown hands the crown to ann.
    let fx = mpp_frame(
        &mut r,
        10,
        json!([{"m": "chown", "id": participant_id("ann")}]),
        NOW,
    );
    let s = split(&fx, &[10]);
    assert!(s.proto.iter().any(|(_, m)| matches!(m, SM::OwnerChanged(o)
        if o.ownership.as_ref().is_some_and(|o| o.owner_id == participant_id("ann")))));
    let got = all_mpp(&s);
    let ch = got.iter().find(|m| m["m"] == "ch").expect("a whole ch");
    assert_eq!(ch["ch"]["crown"]["participantId"], participant_id("ann"));
    // The crown holder's quota changed: MPP hears nq.
    assert!(got.iter().any(|m| m["m"] == "nq"), "{got:?}");
}

#[test]
fn mpp_connections_survive_hibernation() {
    let r = mixed();
    let records: Vec<ConnRecord> = [1, 2, 10, 11].iter().filter_map(|c| r.record(*c)).collect();
    assert_eq!(
        records
            .iter()
            .filter(|c| c.protocol == Protocol::Mpp)
            .count(),
        2
    );
    let (mut r, _) = Room::restore("r", Some(r.stored().clone()), records, NOW, SEED);
    let fx = drive(
        &mut r,
        Input::Frame {
            conn: 1,
            frame: Frame::Binary(&client(M::Chat(proto::SendChat { text: "hi".into() }))),
        },
        NOW,
    );
    let s = split(&fx, &[10, 11]);
    assert!(all_mpp(&s).iter().any(|m| m["m"] == "a" && m["a"] == "hi"));
}
