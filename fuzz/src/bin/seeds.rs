//! Writes the seed corpus (`fuzz/corpus/<target>/`): a few valid inputs per target for AFL++ to
//! start from. `scripts/fuzz` runs it when a corpus directory is missing; the seeds are also
//! committed, and core/tests/fuzz_regressions.rs replays them.

use piano_core::identity::{Claims, Identity, SigningKey, TEST_KEY_PEM};
use piano_core::proto::{self, client_message::Msg as C};
use piano_core::room::{Effect, Frame, Input, Room};
use piano_fuzz::harness::room_input::{USERS, identity};
use piano_fuzz::harness::token::{AUDIENCE, ISSUER, NOW_SECS};
use prost::Message;
use std::path::Path;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let dir = Path::new(&dir);
    write(dir, "client_message", client_messages());
    write(dir, "server_message", server_messages());
    write(dir, "room", rooms());
    write(dir, "auth_json", auth_bodies());
    write(dir, "token", tokens());
    write(dir, "names", names());
    write(dir, "oauth", oauth());
}

fn write(dir: &Path, target: &str, seeds: Vec<Vec<u8>>) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus directory");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(d.join(format!("seed-{i:02}")), s).expect("seed written");
    }
    println!("{target}: {} seeds", seeds.len());
}

fn cm(msg: C) -> Vec<u8> {
    proto::ClientMessage {
        msg: Some(msg),
        ..Default::default()
    }
    .encode_to_vec()
}

fn note_on(note: u32) -> proto::NoteEvent {
    proto::NoteEvent {
        delay: 10,
        kind: Some(proto::note_event::Kind::NoteOn(proto::NoteOn {
            note,
            velocity: 100,
            channel: 0,
        })),
    }
}

fn client_messages() -> Vec<Vec<u8>> {
    vec![
        cm(C::Join(proto::Join {
            password: "pw".into(),
            create_settings: Some(proto::UpdateSettings {
                max_players: Some(5),
                color: Some("#00ff00".into()),
                ..Default::default()
            }),
        })),
        cm(C::Notes(proto::NoteBatch {
            time: 1_800_000_000_000,
            events: vec![note_on(60), note_on(64)],
            sender_id: String::new(),
        })),
        cm(C::Ping(proto::Ping { client_time: 12.5 })),
        cm(C::UpdateProfile(proto::UpdateProfile {
            name: Some("Eve".into()),
            color: Some("#123456".into()),
            status: Some("afk".into()),
        })),
        cm(C::Chat(proto::SendChat {
            text: "hello".into(),
        })),
        cm(C::Kick(proto::Kick {
            participant_id: "abc".into(),
            ban_ms: 60_000,
        })),
        cm(C::Cursor(proto::MoveCursor { x: 1.5, y: 99.0 })),
        cm(C::SubscribeRooms(proto::SubscribeRooms {})),
    ]
}

/// Every frame a small scripted room sends.
fn server_messages() -> Vec<Vec<u8>> {
    let mut room = Room::new("jazz", [1; 32]);
    let now = 1_800_000_000_000;
    let mut out = Vec::new();
    let ids: Vec<Identity> = USERS[..3]
        .iter()
        .map(|(u, n, r)| identity(u, n, r))
        .collect();
    for (i, id) in ids.into_iter().enumerate() {
        out.extend(room.handle(
            Input::Connect {
                conn: i as u64,
                identity: id,
            },
            now,
        ));
    }
    let script = [
        (0, cm(C::Join(proto::Join::default()))),
        (1, cm(C::Join(proto::Join::default()))),
        (2, cm(C::Chat(proto::SendChat { text: "hi".into() }))),
        (
            1,
            cm(C::Notes(proto::NoteBatch {
                time: now,
                events: vec![note_on(60)],
                sender_id: String::new(),
            })),
        ),
        (1, cm(C::Chat(proto::SendChat { text: "hi".into() }))),
        (0, cm(C::SubscribeRooms(proto::SubscribeRooms {}))),
        (1, vec![0xff, 0x01]),
    ];
    for (conn, bytes) in &script {
        out.extend(room.handle(
            Input::Frame {
                conn: *conn,
                frame: Frame::Binary(bytes),
            },
            now,
        ));
    }
    out.into_iter()
        .filter_map(|e| match e {
            Effect::Send { frame, .. } => Some(frame.to_vec()),
            _ => None,
        })
        .collect()
}

/// Room operation sequences (format: piano_fuzz::harness::room).
fn rooms() -> Vec<Vec<u8>> {
    // The fourth byte: no network, session "s1" for members, no expiry.
    let connect = |conn: u8, who: u8| vec![0, conn, who, 0];
    let join = |conn: u8, pw: u8| vec![3, conn, 0, pw, 0];
    let chat = |conn: u8| vec![3, conn, 4, 0];
    let notes = |conn: u8| {
        vec![
            3, conn, 1, 0, 0, 2, 10, 0, 0, 60, 100, 0, 20, 0, 1, 60, 0, 0,
        ]
    };
    let set_password = |conn: u8| vec![3, conn, 8, 0b100, 0, 1, 0];
    let kick = |conn: u8, who: u8| vec![3, conn, 12, who, 3];
    let mute = |conn: u8, who: u8| vec![3, conn, 14, who, 1, 1];
    let advance = |t: u8| vec![12, 0, t];
    let hibernate = vec![14, 0];
    let drop = |conn: u8| vec![20, conn];
    // A new socket `conn` connects as the user of the `token`th kept token and resumes with
    // it from the last seq its connection received.
    let resume_on = |conn: u8, token: u8| vec![23, conn, token, 0, 0];
    // Chat numbered the next seq (`how` 0) or the last one again (2).
    let numbered_chat = |conn: u8, how: u8| vec![22, conn, 4, 0, how];
    let disconnect = |conn: u8| vec![2, conn];
    let seq = |room: u8, ops: Vec<Vec<u8>>| {
        let mut v = vec![room];
        v.extend(ops.concat());
        v
    };
    vec![
        // A normal room: owner, guest, moderator; notes, chat, password, a wrong guess, a kick.
        seq(
            0,
            vec![
                connect(0, 0),
                connect(1, 1),
                connect(2, 3),
                join(0, 0),
                join(1, 0),
                join(2, 0),
                notes(0),
                chat(1),
                set_password(0),
                connect(3, 2),
                join(3, 2),
                vec![18, 0, 0],
                advance(0x5f),
                join(3, 1),
                vec![18, 0, 0],
                mute(2, 1),
                kick(0, 1),
                hibernate.clone(),
                advance(200),
                connect(4, 1),
                join(4, 0),
                disconnect(0),
                advance(0x45),
                vec![3, 2, 11],
                hibernate.clone(),
                disconnect(2),
            ],
        ),
        // A lobby: two tabs of one user, the directory, a subscribe.
        seq(
            1,
            vec![
                connect(0, 0),
                connect(1, 0),
                join(0, 0),
                join(1, 0),
                vec![3, 0, 16],
                vec![13, 0, 1, 1, 1, 9, 9, 9, 9, 9, 9, 9, 9, 1, 0, 0, 0],
                vec![13, 0, 0, 1, 0, 1, 0],
                notes(1),
                disconnect(0),
                hibernate.clone(),
            ],
        ),
        // Raw and text frames, an oversized one, before joining.
        seq(
            2,
            vec![
                connect(5, 5),
                vec![9, 5, 2, 0x1a, 0x00],
                vec![11, 5, 3, b'h', b'i', b'!'],
                vec![15, 5, 3],
            ],
        ),
        // Resuming: a guest drops and comes back on a new socket, gets what it missed; the
        // owner drops, the room hibernates (in memory only: a wake loses the buffer) and the
        // owner gets a snapshot.
        seq(
            0,
            vec![
                connect(0, 0),
                connect(1, 1),
                join(0, 0),
                join(1, 0),
                drop(1),
                chat(0),
                notes(0),
                resume_on(2, 1),
                drop(0),
                chat(2),
                advance(0x4a),
                hibernate.clone(),
                resume_on(3, 0),
                disconnect(2),
            ],
        ),
        // Kept replay entries: the host keeps them while someone is suspended; numbered chat,
        // a drop, hibernation, a resume replayed from what the host kept, the numbered chat
        // re-sent (processed once), a half-open socket taken over, a grace period that ends.
        seq(
            1,
            vec![
                vec![15, 0, 5, 1],
                connect(0, 2),
                connect(1, 3),
                join(0, 0),
                join(1, 0),
                numbered_chat(0, 0),
                drop(0),
                chat(1),
                advance(0x4a),
                hibernate.clone(),
                resume_on(3, 0),
                numbered_chat(3, 2),
                vec![3, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0],
                resume_on(4, 2),
                drop(1),
                advance(0x81),
                vec![17, 0, 1],
                resume_on(5, 1),
            ],
        ),
        // Every entry kept (a cluster's holder): drop, wake, resume.
        seq(
            3,
            vec![
                vec![15, 0, 5, 2],
                connect(0, 4),
                connect(1, 1),
                join(0, 0),
                join(1, 0),
                notes(1),
                drop(1),
                chat(0),
                advance(0x4a),
                hibernate,
                resume_on(2, 1),
            ],
        ),
    ]
}

fn auth_bodies() -> Vec<Vec<u8>> {
    let body = |which: u8, json: &str| {
        let mut v = vec![which];
        v.extend_from_slice(json.as_bytes());
        v
    };
    vec![
        body(0, r#"{"name":"Ada"}"#),
        body(
            1,
            r#"{"username":"Ada_1","password":"correct horse","email":"a@b.example"}"#,
        ),
        body(2, r#"{"username":"ada_1","password":"correct horse"}"#),
        body(3, r#"{"refresh_token":"ada_1.sid123.secret456"}"#),
        body(4, r#"{"refresh_token":"ada_1.sid123.secret456"}"#),
        body(5, r##"{"name":"Zoë","color":"#aabbcc","status":"on air"}"##),
        body(6, r#"{"add":["pro"],"remove":["bot"]}"#),
        body(
            7,
            r#"{"conn":3,"identity":{"user_id":"guest:a","name":"Ada","roles":["guest"]},"joined":1,"subscribed":true}"#,
        ),
    ]
}

fn tokens() -> Vec<Vec<u8>> {
    let key = SigningKey::from_pkcs8_pem(TEST_KEY_PEM).expect("the test key parses");
    let claims = |sid: Option<&str>| Claims {
        sub: "user:ada".into(),
        name: "Ada".into(),
        roles: vec!["member".into()],
        iat: NOW_SECS,
        exp: NOW_SECS + 900,
        nbf: None,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sid: sid.map(str::to_owned),
        generation: sid.map(|_| 1),
    };
    // Clock bytes [0, 0, 0, 0x40]: the verifier's clock at NOW_SECS.
    let seed = |mode: u8, s: &str| {
        let mut v = vec![mode, 0, 0, 0, 0x40];
        v.extend_from_slice(s.as_bytes());
        v
    };
    let id = identity("guest:a", "Ada", &["guest"]);
    vec![
        seed(0, &key.sign(&claims(None))),
        seed(1, &key.sign(&claims(Some("s1")))),
        seed(0, "eyJhbGciOiJub25lIn0.e30."),
        seed(2, "ada.sid.secret"),
        seed(3, &id.to_header()),
        seed(4, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
        seed(4, TEST_KEY_PEM),
    ]
}

fn names() -> Vec<Vec<u8>> {
    let seed = |which: u8, s: &str| {
        let mut v = vec![which];
        v.extend_from_slice(s.as_bytes());
        v
    };
    vec![
        seed(0, "Jazz café ♪"),
        seed(1, "  Élodie 🎹 "),
        seed(2, "Ada_99"),
        seed(3, "caf%C3%A9%20bar"),
        seed(4, "what the shit, Scunthorpe"),
        seed(5, "#A0b1C2"),
        seed(0, "lobby-2"),
        seed(0, "Lobby_3"),
        seed(6, "2001:db8:85a3::8a2e:370:7334"),
        seed(6, "203.0.113.7"),
        seed(
            7,
            "https://a.example, https://B.example/\nhttps://b.example",
        ),
    ]
}

fn oauth() -> Vec<Vec<u8>> {
    let with = |which: u8, s: &str| {
        let mut v = vec![which];
        v.extend_from_slice(s.as_bytes());
        v
    };
    vec![
        with(0, "idp\ncode=c&state=abc\npiano_oauth=e30.AAAA"),
        with(1, "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ1In0.c2ln"),
        with(
            2,
            r#"{"issuer":"https://idp.example","authorization_endpoint":"https://idp.example/a","token_endpoint":"https://idp.example/t","jwks_uri":"https://idp.example/j"}"#,
        ),
        with(
            3,
            r#"{"id":"80351110224678912","username":"nelly","global_name":"Nelly","avatar":"abc"}"#,
        ),
        with(4, "/rooms?x=1"),
        with(
            5,
            r#"{"access_token":"a","token_type":"Bearer","id_token":"x"}"#,
        ),
    ]
}
