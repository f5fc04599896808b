//! Table-driven tests of both directions, and a property test that no input panics.

use super::*;
use crate::proto::{client_message::Msg as C, note_event::Kind, server_message::Msg as S};
use proptest::prelude::*;
use serde_json::json;

fn one(text: &str) -> Result<MppIn, MppError> {
    let mut v = parse_frame(text).expect("frame parses");
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn action(msg: Value, own: Option<&str>) -> Action {
    one(&json!([msg]).to_string())
        .expect("message parses")
        .into_action(own)
        .expect("translates")
}

fn room(msg: Value) -> C {
    match action(msg, None) {
        Action::Room(c) => c,
        other => panic!("not a room message: {other:?}"),
    }
}

#[test]
fn client_messages_translate_to_room_messages() {
    let cases: Vec<(Value, C)> = vec![
        (
            json!({"m": "a", "message": "Hello :D", "reply_to": "x"}),
            C::Chat(proto::SendChat {
                text: "Hello :D".into(),
            }),
        ),
        (
            json!({"m": "chown", "id": "abc"}),
            C::TransferOwnership(proto::TransferOwnership {
                participant_id: "abc".into(),
            }),
        ),
        (
            json!({"m": "chown"}),
            C::DropOwnership(proto::DropOwnership {}),
        ),
        (
            json!({"m": "chset", "set": {"color": "#0066ff", "chat": "false", "limit": "50",
                   "visible": true, "crownsolo": true, "no cussing": true, "color2": "#ff9900"}}),
            C::UpdateSettings(proto::UpdateSettings {
                visible: Some(true),
                max_players: Some(50),
                owner_only_chat: Some(true),
                owner_only_play: Some(true),
                color: Some("#0066ff".into()),
                profanity_filter: Some(true),
                ..Default::default()
            }),
        ),
        (
            json!({"m": "m", "x": 25, "y": "63.5"}),
            C::Cursor(proto::MoveCursor { x: 25.0, y: 63.5 }),
        ),
        (
            json!({"m": "t", "e": 1627972519126u64}),
            C::Ping(proto::Ping {
                client_time: 1627972519126.0,
            }),
        ),
        (json!({"m": "t"}), C::Ping(proto::Ping { client_time: 0.0 })),
        (
            json!({"m": "+ls"}),
            C::SubscribeRooms(proto::SubscribeRooms {}),
        ),
        (
            json!({"m": "-ls"}),
            C::UnsubscribeRooms(proto::UnsubscribeRooms {}),
        ),
        (
            json!({"m": "userset", "set": {"name": "Lapis", "color": "#ff8ff9"}}),
            C::UpdateProfile(proto::UpdateProfile {
                name: Some("Lapis".into()),
                color: Some("#ff8ff9".into()),
                status: None,
            }),
        ),
        (
            json!({"m": "userset", "set": {"name": "only"}}),
            C::UpdateProfile(proto::UpdateProfile {
                name: Some("only".into()),
                ..Default::default()
            }),
        ),
        (
            json!({"m": "kickban", "_id": "p1", "ms": 300000}),
            C::Kick(proto::Kick {
                participant_id: "p1".into(),
                ban_ms: 300000,
            }),
        ),
        (
            json!({"m": "unban", "_id": "p1"}),
            C::Unban(proto::Unban {
                user_id: "p1".into(),
            }),
        ),
        (
            json!({"m": "n", "t": 1627971516894.4, "n": [
                {"n": "c3", "v": 0.75},
                {"n": "c3", "d": 100, "s": 1},
                {"n": "a-1", "v": 1, "d": "5"},
                {"n": "c7"},
            ]}),
            C::Notes(proto::NoteBatch {
                time: 1627971516894,
                events: vec![on(0, 60, 95), off(100, 60), on(5, 21, 127), on(0, 108, 64)],
                sender_id: String::new(),
            }),
        ),
    ];
    for (mpp, expected) in cases {
        assert_eq!(room(mpp.clone()), expected, "{mpp}");
    }
}

fn on(delay: u32, note: u32, velocity: u32) -> proto::NoteEvent {
    proto::NoteEvent {
        delay,
        kind: Some(Kind::NoteOn(proto::NoteOn {
            note,
            velocity,
            channel: 0,
        })),
    }
}

fn off(delay: u32, note: u32) -> proto::NoteEvent {
    proto::NoteEvent {
        delay,
        kind: Some(Kind::NoteOff(proto::NoteOff { note, channel: 0 })),
    }
}

#[test]
fn session_messages_are_for_the_host() {
    assert_eq!(
        action(json!({"m": "hi", "token": "jwt"}), None),
        Action::Hi {
            token: Some("jwt".into())
        }
    );
    assert_eq!(action(json!({"m": "hi"}), None), Action::Hi { token: None });
    assert_eq!(action(json!({"m": "bye"}), None), Action::Bye);
    assert_eq!(
        action(json!({"m": "ch", "_id": "lobby"}), None),
        Action::Join {
            room: "lobby".into(),
            join: proto::Join::default()
        }
    );
    assert_eq!(
        action(
            json!({"m": "ch", "_id": "My room", "set": {"visible": false}}),
            None
        ),
        Action::Join {
            room: "My room".into(),
            join: proto::Join {
                password: String::new(),
                create_settings: Some(proto::UpdateSettings {
                    visible: Some(false),
                    ..Default::default()
                }),
            },
        }
    );
}

#[test]
fn giving_the_crown_to_oneself_claims_it() {
    assert_eq!(
        action(json!({"m": "chown", "id": "me"}), Some("me")),
        Action::Room(C::ClaimOwnership(proto::ClaimOwnership {}))
    );
}

#[test]
fn what_our_rooms_lack_is_unsupported_with_a_notification() {
    for (msg, what) in [
        (json!({"m": "dm", "_id": "x", "message": "hi"}), "dm"),
        (
            json!({"m": "custom", "data": {"a": 1}, "target": {"mode": "subscribed"}}),
            "custom",
        ),
        (json!({"m": "+custom"}), "+custom"),
        (json!({"m": "-custom"}), "-custom"),
        (json!({"m": "devices", "list": []}), "devices"),
    ] {
        assert_eq!(action(msg, None), Action::Unsupported(what));
        let n = unsupported(what);
        assert_eq!(n["m"], "notification");
        assert!(n["text"].as_str().is_some_and(|t| !t.is_empty()));
    }
}

#[test]
fn bad_frames_and_messages_get_typed_errors() {
    let frames: Vec<(String, FrameError)> = vec![
        ("{".into(), FrameError::NotJson(String::new())),
        ("{\"m\":\"hi\"}".into(), FrameError::NotArray),
        ("[]".into(), FrameError::Empty),
        (
            json!(vec![json!({"m": "t"}); MAX_MESSAGES_PER_FRAME + 1]).to_string(),
            FrameError::TooManyMessages {
                count: MAX_MESSAGES_PER_FRAME + 1,
            },
        ),
        (
            format!("[\"{}\"]", "x".repeat(crate::limits::MAX_FRAME_BYTES)),
            FrameError::TooLarge {
                len: crate::limits::MAX_FRAME_BYTES + 4,
            },
        ),
    ];
    for (text, expected) in frames {
        let got = parse_frame(&text).expect_err("refused");
        match (&got, &expected) {
            (FrameError::NotJson(_), FrameError::NotJson(_)) => {}
            _ => assert_eq!(got, expected),
        }
        assert!(!got.to_string().is_empty());
    }
    assert_eq!(
        FrameError::TooLarge { len: 1 }
            .close_code()
            .map(close::for_mpp),
        Some(close::BYTE_QUOTA)
    );
    assert_eq!(FrameError::NotArray.close_code(), None);

    let messages: Vec<(Value, MppError)> = vec![
        (json!(3), MppError::NotObject),
        (json!({"x": 1}), MppError::MissingType),
        (json!({"m": 5}), MppError::MissingType),
        (json!({"m": "zap"}), MppError::UnknownType("zap".into())),
        (
            json!({"m": "a", "message": 5}),
            MppError::Field {
                m: "a",
                field: "message",
                expected: "a string",
            },
        ),
        (
            json!({"m": "ch"}),
            MppError::Field {
                m: "ch",
                field: "_id",
                expected: "a string",
            },
        ),
        (
            json!({"m": "m", "x": "left", "y": 1}),
            MppError::Field {
                m: "m",
                field: "x",
                expected: "a number",
            },
        ),
        (
            json!({"m": "n", "t": 1, "n": "c3"}),
            MppError::Field {
                m: "n",
                field: "n",
                expected: "an array of notes",
            },
        ),
        (
            json!({"m": "chset", "set": {"visible": 3}}),
            MppError::Field {
                m: "chset",
                field: "visible",
                expected: "a boolean",
            },
        ),
        (
            json!({"m": "chset", "set": {"limit": -1}}),
            MppError::Field {
                m: "chset",
                field: "limit",
                expected: "a player count",
            },
        ),
        (
            json!({"m": "userset", "set": "x"}),
            MppError::Field {
                m: "userset",
                field: "set",
                expected: "an object",
            },
        ),
    ];
    for (msg, expected) in messages {
        assert_eq!(one(&json!([msg]).to_string()), Err(expected), "{msg}");
    }

    let translate = |msg: Value| one(&json!([msg]).to_string()).unwrap().into_action(None);
    assert_eq!(
        translate(json!({"m": "n", "t": 1, "n": [{"n": "h9", "v": 1}]})),
        Err(MppError::BadNote("h9".into()))
    );
    assert!(matches!(
        translate(json!({"m": "n", "t": 1, "n": [{"n": "c3", "d": -5, "v": 1}]})),
        Err(MppError::Field { field: "d", .. })
    ));
    assert!(matches!(
        translate(json!({"m": "kickban", "_id": "p", "ms": -1})),
        Err(MppError::Field { field: "ms", .. })
    ));
}

#[test]
fn one_bad_message_does_not_spoil_its_frame() {
    let v = parse_frame(r#"[{"m":"t","e":1},{"m":"nope"},{"m":"a","message":"x"}]"#).unwrap();
    assert!(v[0].is_ok() && v[1].is_err() && v[2].is_ok());
}

fn player(id: &str, name: &str, roles: &[&str]) -> proto::Participant {
    proto::Participant {
        id: id.into(),
        user_id: format!("user-{id}"),
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        color: "#123456".into(),
        ..Default::default()
    }
}

fn chat_msg(id: u64, text: &str) -> proto::ChatMessage {
    proto::ChatMessage {
        id,
        time: 1000 + id,
        participant_id: "p1".into(),
        user_id: "user-p1".into(),
        name: "Ann".into(),
        color: "#123456".into(),
        text: text.into(),
    }
}

fn settings() -> proto::RoomSettings {
    proto::RoomSettings {
        visible: true,
        max_players: 20,
        owner_only_chat: false,
        owner_only_play: true,
        color: "#220022".into(),
        profanity_filter: true,
        kind: "normal".into(),
        ..Default::default()
    }
}

fn joined_channel() -> (Channel, Vec<Value>) {
    let mut ch = Channel::new();
    let out = ch.encode(&S::Joined(proto::Joined {
        room: "Room A".into(),
        you: Some(player("p2", "Bob", &[])),
        participants: vec![player("p1", "Ann", &["admin"]), player("p2", "Bob", &[])],
        server_time: 5,
        settings: Some(settings()),
        ownership: Some(proto::Ownership {
            owner_id: "p1".into(),
            owner_user_id: "user-p1".into(),
            owner_name: "Ann".into(),
            ..Default::default()
        }),
        chat_history: (0..40).map(|i| chat_msg(i, "old")).collect(),
        quota: Some(proto::Quota {
            allowance: 200,
            max: 600,
            interval_ms: 1000,
            points: 600,
            unlimited: false,
        }),
        ..Default::default()
    }));
    (ch, out)
}

#[test]
fn joined_is_ch_then_history_then_note_quota() {
    let (_, out) = joined_channel();
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0],
        json!({
            "m": "ch", "p": "p2",
            "ch": {
                "_id": "Room A", "id": "Room A", "count": 2,
                "settings": {"visible": true, "chat": true, "crownsolo": true, "limit": 20,
                             "color": "#220022", "no cussing": true, "noindex": false},
                "crown": {"userId": "p1", "participantId": "p1", "time": 0,
                          "startPos": {"x": 50, "y": 50}, "endPos": {"x": 50, "y": 50}},
            },
            "ppl": [
                {"_id": "p1", "id": "p1", "name": "Ann", "color": "#123456", "x": 200, "y": 100,
                 "afk": false, "tag": {"text": "ADMIN", "color": "#a00"}},
                {"_id": "p2", "id": "p2", "name": "Bob", "color": "#123456", "x": 200, "y": 100,
                 "afk": false},
            ],
        })
    );
    assert_eq!(out[1]["m"], "c");
    let history = out[1]["c"].as_array().unwrap();
    assert_eq!(history.len(), CHAT_HISTORY);
    assert_eq!(history[0]["id"], "8", "the newest 32 of 40");
    assert_eq!(
        out[2],
        json!({"m": "nq", "allowance": 400, "max": 600, "maxHistLen": 3})
    );
}

#[test]
fn server_messages_translate_to_mpp() {
    let cases: Vec<(S, Vec<Value>)> = vec![
        (
            S::Welcome(proto::Welcome {
                room: "Room A".into(),
                ..Default::default()
            }),
            vec![],
        ),
        (
            S::ParticipantJoined(proto::ParticipantJoined {
                participant: Some(player("p3", "Cy", &["bot"])),
            }),
            vec![
                json!({"m": "p", "_id": "p3", "id": "p3", "name": "Cy", "color": "#123456",
                        "x": 200, "y": 100, "afk": false, "tag": {"text": "BOT", "color": "#55f"}}),
            ],
        ),
        (
            S::ParticipantUpdated(proto::ParticipantUpdated {
                participant: Some(player("p2", "Bobby", &[])),
            }),
            vec![
                json!({"m": "p", "_id": "p2", "id": "p2", "name": "Bobby", "color": "#123456",
                        "x": 200, "y": 100, "afk": false}),
            ],
        ),
        (
            S::ParticipantLeft(proto::ParticipantLeft {
                participant_id: "p3".into(),
            }),
            vec![json!({"m": "bye", "p": "p3"})],
        ),
        (
            S::Notes(proto::NoteBatch {
                time: 1628020489306,
                sender_id: "p1".into(),
                events: vec![
                    on(0, 60, 127),
                    off(150, 60),
                    on(10, 20, 64),
                    proto::NoteEvent {
                        delay: 20,
                        kind: Some(Kind::ControlChange(proto::ControlChange {
                            control: 64,
                            value: 127,
                            channel: 0,
                        })),
                    },
                    on(30, 21, 1),
                ],
            }),
            vec![json!({"m": "n", "t": 1628020489306u64, "p": "p1", "n": [
                {"n": "c3", "v": 1.0},
                {"n": "c3", "s": 1, "d": 150},
                {"n": "a-1", "v": 1.0 / 127.0, "d": 30},
            ]})],
        ),
        (
            S::Notes(proto::NoteBatch {
                time: 1,
                sender_id: "p1".into(),
                events: vec![on(0, 5, 64)],
            }),
            vec![],
        ),
        (
            S::Pong(proto::Pong {
                client_time: 42.0,
                server_time: 99,
                ..Default::default()
            }),
            vec![json!({"m": "t", "t": 99, "e": 42.0})],
        ),
        (
            S::Pong(proto::Pong {
                client_time: 0.0,
                server_time: 99,
                ..Default::default()
            }),
            vec![json!({"m": "t", "t": 99})],
        ),
        (
            S::Chat(chat_msg(7, "hey")),
            vec![json!({"m": "a", "id": "7", "t": 1007, "a": "hey",
                        "p": {"_id": "p1", "id": "p1", "name": "Ann", "color": "#123456"}})],
        ),
        (
            S::ChatCleared(proto::ChatCleared {}),
            vec![json!({"m": "c", "c": []})],
        ),
        (
            S::Quota(proto::Quota {
                unlimited: true,
                ..Default::default()
            }),
            vec![json!({"m": "nq", "allowance": 1_000_000, "max": 3_000_000, "maxHistLen": 3})],
        ),
        (
            S::Cursor(proto::Cursor {
                participant_id: "p1".into(),
                x: 50.3,
                y: 26.49,
            }),
            vec![json!({"m": "m", "id": "p1", "x": "50.30", "y": "26.49"})],
        ),
        (
            S::RoomList(proto::RoomList {
                rooms: vec![proto::RoomSummary {
                    name: "lobby".into(),
                    players: 3,
                    capacity: 20,
                    visible: true,
                    kind: "lobby".into(),
                    ..Default::default()
                }],
            }),
            vec![
                json!({"m": "ls", "c": true, "u": [{"_id": "lobby", "id": "lobby", "count": 3,
                "settings": {"visible": true, "limit": 20, "chat": true, "crownsolo": false,
                             "lobby": true}}]}),
            ],
        ),
        (
            S::RoomListChanged(proto::RoomListChanged {
                upserted: vec![],
                removed: vec!["gone".into()],
            }),
            vec![
                json!({"m": "ls", "c": false, "u": [{"_id": "gone", "id": "gone", "count": 0,
                "settings": {"visible": false}}]}),
            ],
        ),
        (S::Typing(proto::Typing::default()), vec![]),
        (S::ChatDeleted(proto::ChatDeleted { id: 1 }), vec![]),
        (S::NotesDropped(proto::NotesDropped::default()), vec![]),
    ];
    for (msg, expected) in cases {
        let (mut ch, _) = joined_channel();
        assert_eq!(ch.encode(&msg), expected, "{msg:?}");
    }
}

#[test]
fn errors_and_refusals_become_notifications() {
    let (mut ch, _) = joined_channel();
    for msg in [
        S::Error(proto::Error {
            message: "slow down".into(),
            ..Default::default()
        }),
        S::JoinFailed(proto::JoinFailed {
            message: "full".into(),
            ..Default::default()
        }),
        S::Kicked(proto::Kicked {
            banned_until: 9,
            ..Default::default()
        }),
        S::Kicked(proto::Kicked::default()),
    ] {
        let out = ch.encode(&msg);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["m"], "notification", "{msg:?}");
        assert!(out[0]["text"].as_str().is_some_and(|t| !t.is_empty()));
    }
}

#[test]
fn settings_crown_and_presence_changes_send_the_whole_channel() {
    let (mut ch, _) = joined_channel();
    ch.encode(&S::ParticipantLeft(proto::ParticipantLeft {
        participant_id: "p1".into(),
    }));
    let out = ch.encode(&S::OwnerChanged(proto::OwnerChanged {
        ownership: Some(proto::Ownership {
            previous_owner_user_id: "user-p1".into(),
            claimable_at: 20_000,
            ..Default::default()
        }),
    }));
    assert_eq!(out.len(), 1);
    let c = &out[0];
    assert_eq!(c["m"], "ch");
    assert!(c.get("p").is_none(), "a broadcast ch names nobody as you");
    assert_eq!(c["ch"]["count"], 1);
    assert_eq!(c["ppl"].as_array().unwrap().len(), 1);
    let crown = &c["ch"]["crown"];
    assert!(crown.get("participantId").is_none(), "dropped");
    assert_eq!(crown["userId"], crate::identity::participant_id("user-p1"));
    assert_eq!(crown["time"], 5_000);

    let mut lobby = settings();
    lobby.kind = "lobby".into();
    lobby.owner_only_chat = true;
    let out = ch.encode(&S::SettingsChanged(proto::SettingsChanged {
        settings: Some(lobby),
    }));
    let s = &out[0]["ch"]["settings"];
    assert_eq!(s["lobby"], true);
    assert_eq!(s["chat"], false);
    assert!(out[0]["ch"].get("crown").is_none(), "lobbies have no crown");
}

#[test]
fn our_close_codes_reach_mpp_clients_with_mpp_meanings() {
    use crate::limits::close as ours;
    let table = [
        (ours::FRAME_TOO_LARGE, close::BYTE_QUOTA),
        (ours::POLICY_VIOLATION, close::MESSAGE_RATE),
        (ours::SERVICE_RESTART, close::SERVER_CLOSING),
        (ours::IDENTITY_CHANGED, close::SERVER_CLOSING),
        (ours::GOING_AWAY, close::TIMED_OUT),
        (ours::TOO_MANY_CONNECTIONS, close::CLIENT_LIMIT),
        (ours::SESSION_ENDED, ours::NORMAL),
        (ours::KICKED, ours::NORMAL),
        (ours::NORMAL, ours::NORMAL),
        (ours::INTERNAL_ERROR, ours::INTERNAL_ERROR),
        (ours::TRY_AGAIN_LATER, ours::TRY_AGAIN_LATER),
    ];
    for (code, mpp) in table {
        assert_eq!(close::for_mpp(code), mpp, "{code}");
    }
}

#[test]
fn the_channel_shows_where_cursors_last_were_and_forgets_leavers() {
    let (mut ch, out) = joined_channel();
    let ann = |out: &[Value]| out[0]["ppl"][0].clone();
    assert_eq!(
        (ann(&out)["x"].clone(), ann(&out)["y"].clone()),
        (json!(200), json!(100))
    );
    let cursor = |id: &str| {
        S::Cursor(proto::Cursor {
            participant_id: id.into(),
            x: 12.5,
            y: 80.0,
        })
    };
    ch.encode(&cursor("p1"));
    ch.encode(&cursor("nobody here"));
    let crown = S::OwnerChanged(proto::OwnerChanged {
        ownership: Some(proto::Ownership::default()),
    });
    let out = ch.encode(&crown);
    assert_eq!(
        (ann(&out)["x"].clone(), ann(&out)["y"].clone()),
        (json!("12.50"), json!("80.00"))
    );
    let update = S::ParticipantUpdated(proto::ParticipantUpdated {
        participant: Some(player("p1", "Ann", &["admin"])),
    });
    assert_eq!(ch.encode(&update)[0]["x"], "12.50", "p carries it too");
    assert_eq!(
        ch.cursors.len(),
        1,
        "only present participants are remembered"
    );
    ch.encode(&S::ParticipantLeft(proto::ParticipantLeft {
        participant_id: "p1".into(),
    }));
    assert!(ch.cursors.is_empty(), "a leaver is forgotten");
}

#[test]
fn notes_survive_the_round_trip_both_ways() {
    let batch = proto::NoteBatch {
        time: 1_700_000_000_123,
        sender_id: "p1".into(),
        events: (21..=108)
            .map(|n| on(n - 21, n, 1 + (n * 7) % 127))
            .chain((21..=108).map(|n| off(n, n)))
            .collect(),
    };
    let mut ch = Channel::new();
    let out = ch.encode(&S::Notes(batch.clone()));
    let C::Notes(back) = room(out[0].clone()) else {
        panic!("notes")
    };
    assert_eq!(back.time, batch.time);
    assert_eq!(back.events, batch.events);
}

#[test]
fn hi_reply_and_frames() {
    let hi = hi(&player("p1", "Ann", &["bot"]), 77, "Welcome!", Some("tok"));
    assert_eq!(
        hi,
        json!({"m": "hi", "t": 77, "motd": "Welcome!", "permissions": {}, "token": "tok",
               "u": {"_id": "p1", "name": "Ann", "color": "#123456", "afk": false,
                     "tag": {"text": "BOT", "color": "#55f"}}})
    );
    assert_eq!(frame(&[]), None);
    assert_eq!(
        frame(&[json!({"m": "t", "t": 1})]).as_deref(),
        Some(r#"[{"m":"t","t":1}]"#)
    );
}

proptest! {
    #[test]
    fn any_text_never_panics(text in ".{0,300}") {
        if let Ok(msgs) = parse_frame(&text) {
            for m in msgs.into_iter().flatten() {
                let _ = m.into_action(Some("me"));
            }
        }
    }

    #[test]
    fn any_json_message_never_panics(v in json_value(), m in prop::sample::select(vec![
        "hi", "bye", "ch", "chown", "chset", "a", "n", "m", "t", "+ls", "-ls", "userset",
        "kickban", "unban", "dm", "custom", "+custom", "-custom", "devices", "x",
    ])) {
        // The message type fixed, every other field arbitrary.
        let mut msg = match v { Value::Object(o) => o, other => {
            let mut o = serde_json::Map::new();
            for k in ["_id", "id", "set", "n", "t", "message", "x", "y", "ms", "token", "e"] {
                o.insert(k.into(), other.clone());
            }
            o
        }};
        msg.insert("m".into(), m.into());
        let text = json!([msg]).to_string();
        if let Ok(msgs) = parse_frame(&text) {
            for m in msgs.into_iter().flatten() {
                let _ = m.into_action(None);
            }
        }
    }

    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_frame(&text);
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec!["c3", "a-1", "c7", "", "1e400", "-0", "true", "50"])
            .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "n",
                    "v",
                    "d",
                    "s",
                    "t",
                    "_id",
                    "id",
                    "set",
                    "name",
                    "color",
                    "visible",
                    "chat",
                    "limit",
                    "crownsolo",
                    "no cussing",
                    "x",
                    "y",
                    "ms",
                    "message"
                ]),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}
