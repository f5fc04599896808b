//! Multiplayer Piano clients (`GET /mpp`) in the same rooms as protobuf players, driven through
//! `mpp-client-net` (an MPP client from npm, written independently of this server; pinned in
//! package.json) by `tests/mpp/client.cjs`.

use crate::*;
use e2e_tests::proto::{self, client_message, note_event::Kind, server_message};
use serde_json::{Value, json};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// One `mpp-client-net` client in a Node process (also used by `oauth.rs`).
pub(crate) struct Mpp {
    _child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
}

impl Mpp {
    /// Starts a client that says `hi` (with `token`, if any) and joins `room`.
    pub(crate) async fn start(s: &Server, room: &str, token: Option<&str>) -> Mpp {
        let url = s.http("/mpp").replacen("http://", "ws://", 1);
        let mut cmd = Command::new("node");
        cmd.arg("tests/mpp/client.cjs").arg(url).arg(room);
        if let Some(t) = token {
            cmd.arg(t);
        }
        let mut child = cmd
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs tests/mpp/client.cjs");
        let stdin = child.stdin.take().expect("stdin");
        let events = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Mpp {
            _child: child,
            stdin,
            events,
        }
    }

    async fn cmd(&mut self, c: Value) {
        let line = format!("{c}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("to node");
    }

    /// The first `ev` message `pick` accepts, skipping everything else.
    pub(crate) async fn wait<T>(&mut self, ev: &str, pick: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.events.next_line())
                .await
                .unwrap_or_else(|_| panic!("no matching {ev:?} from the MPP client in time"))
                .expect("node's stdout")
                .expect("the MPP client is running");
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            assert_ne!(
                v["ev"], "disconnect",
                "the MPP client was disconnected: {v}"
            );
            if v["ev"] == ev
                && let Some(t) = pick(&v["msg"])
            {
                return t;
            }
        }
    }
}

pub async fn mpp_client_plays_with_protobuf_players(s: &Server) {
    let room = unique("mpp room");

    // hi (a guest: no token), then ch into a new room, which it owns.
    let mut mpp = Mpp::start(s, &room, None).await;
    let hi = mpp.wait("hi", |m| Some(m.clone())).await;
    assert_eq!(hi["u"]["name"], "Anonymous", "{hi}");
    assert!(
        hi["t"]
            .as_u64()
            .is_some_and(|t| t.abs_diff(now_ms()) < 10_000),
        "{hi}"
    );
    assert!(hi["motd"].as_str().is_some_and(|m| !m.is_empty()), "{hi}");
    let ch = mpp
        .wait("ch", |m| {
            (m["ch"]["_id"] == room.as_str()).then(|| m.clone())
        })
        .await;
    let mpp_id = ch["p"].as_str().expect("ch names the client").to_owned();
    assert_eq!(ch["ch"]["crown"]["participantId"], mpp_id.as_str(), "{ch}");
    mpp.wait("nq", |m| m["max"].as_u64()).await;

    // A protobuf player joins and sees it; it sees the player.
    let mut pb = s.player(&room, "Pia").await;
    let joined = pb.join().await;
    let them = joined
        .participants
        .iter()
        .find(|p| p.id == mpp_id)
        .expect("the MPP client is a participant");
    assert_eq!(them.name, "Anonymous");
    assert_eq!(joined.ownership.unwrap().owner_id, mpp_id);
    let pb_id = pb.id().to_owned();
    let p = mpp
        .wait("p", |m| (m["id"] == pb_id.as_str()).then(|| m.clone()))
        .await;
    assert_eq!(p["name"], "Pia");
    assert!(
        p["color"]
            .as_str()
            .is_some_and(|c| c.len() == 7 && c.starts_with('#'))
    );

    // Chat, both ways.
    mpp.cmd(json!({"cmd": "chat", "text": "hello from MPP"}))
        .await;
    let chat = pb
        .recv_matching(|m| match m {
            server_message::Msg::Chat(c) if c.participant_id == mpp_id => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(chat.text, "hello from MPP");
    pb.send(client_message::Msg::Chat(proto::SendChat {
        text: "hello from protobuf".into(),
    }))
    .await;
    let a = mpp
        .wait("a", |m| (m["p"]["id"] == pb_id.as_str()).then(|| m.clone()))
        .await;
    assert_eq!(a["a"], "hello from protobuf");
    assert_eq!(a["p"]["name"], "Pia");

    // Notes MPP → protobuf: names, velocities, delays and the batch time intact.
    let t = now_ms();
    mpp.cmd(json!({"cmd": "raw", "msgs": [{"m": "n", "t": t, "n": [
        {"n": "a-1", "v": 0.5},
        {"n": "c7", "v": 1, "d": 120},
        {"n": "c7", "s": 1, "d": 250},
    ]}]}))
    .await;
    let batch = pb
        .recv_matching(|m| match m {
            server_message::Msg::Notes(b) if b.sender_id == mpp_id => Some(b.clone()),
            _ => None,
        })
        .await;
    assert_eq!(batch.time, t);
    let on = |note, velocity| {
        Some(Kind::NoteOn(proto::NoteOn {
            note,
            velocity,
            channel: 0,
        }))
    };
    let events: Vec<(u32, Option<Kind>)> = batch
        .events
        .into_iter()
        .map(|e| (e.delay, e.kind))
        .collect();
    assert_eq!(
        events,
        vec![
            (0, on(21, 64)),
            (120, on(108, 127)),
            (
                250,
                Some(Kind::NoteOff(proto::NoteOff {
                    note: 108,
                    channel: 0
                }))
            ),
        ]
    );

    // Notes protobuf → MPP.
    let t = now_ms();
    let event = |delay, kind| proto::NoteEvent {
        delay,
        kind: Some(kind),
    };
    pb.send(client_message::Msg::Notes(proto::NoteBatch {
        time: t,
        events: vec![
            event(
                0,
                Kind::NoteOn(proto::NoteOn {
                    note: 60,
                    velocity: 127,
                    channel: 0,
                }),
            ),
            event(
                37,
                Kind::NoteOn(proto::NoteOn {
                    note: 61,
                    velocity: 64,
                    channel: 0,
                }),
            ),
            event(
                100,
                Kind::NoteOff(proto::NoteOff {
                    note: 60,
                    channel: 0,
                }),
            ),
        ],
        sender_id: String::new(),
    }))
    .await;
    let n = mpp
        .wait("n", |m| (m["p"] == pb_id.as_str()).then(|| m.clone()))
        .await;
    assert_eq!(n["t"].as_u64(), Some(t), "{n}");
    let notes = n["n"].as_array().expect("notes");
    assert_eq!(notes.len(), 3, "{n}");
    // (Numbers pass through the client's JavaScript: 1.0 arrives as 1.)
    assert_eq!(
        (&notes[0]["n"], notes[0]["v"].as_f64(), notes[0].get("d")),
        (&json!("c3"), Some(1.0), None)
    );
    assert_eq!(
        (&notes[1]["n"], &notes[1]["d"]),
        (&json!("cs3"), &json!(37))
    );
    assert!(
        (notes[1]["v"].as_f64().unwrap() - 64.0 / 127.0).abs() < 1e-9,
        "{n}"
    );
    assert_eq!(
        (&notes[2]["n"], &notes[2]["s"], &notes[2]["d"]),
        (&json!("c3"), &json!(1), &json!(100))
    );

    // chset and chown from the MPP side reach the protobuf player.
    mpp.cmd(json!({"cmd": "chset", "set": {"color": "#336699", "visible": true, "chat": true}}))
        .await;
    let settings = pb
        .recv_matching(|m| match m {
            server_message::Msg::SettingsChanged(c) => c.settings.clone(),
            _ => None,
        })
        .await;
    assert_eq!(settings.color, "#336699");
    mpp.cmd(json!({"cmd": "chown", "id": pb_id})).await;
    let owner = pb
        .recv_matching(|m| match m {
            server_message::Msg::OwnerChanged(o) => o.ownership.clone(),
            _ => None,
        })
        .await;
    assert_eq!(owner.owner_id, pb_id);
    let crown = mpp
        .wait("ch", |m| {
            (m["ch"]["crown"]["participantId"] == pb_id.as_str()).then(|| m.clone())
        })
        .await;
    assert_eq!(crown["ch"]["settings"]["color"], "#336699");

    // A bot signs in with one of our tokens and is shown under its name.
    let token = s.guest_token("Piano Bot").await;
    let mut bot = Mpp::start(s, &room, Some(&token)).await;
    let hi = bot.wait("hi", |m| Some(m.clone())).await;
    assert_eq!(hi["u"]["name"], "Piano Bot", "{hi}");
    assert!(
        hi.get("token").is_none(),
        "a token is only handed to new guests: {hi}"
    );
    let bot_id = bot.wait("ch", |m| m["p"].as_str().map(str::to_owned)).await;
    pb.recv_matching(|m| match m {
        server_message::Msg::ParticipantJoined(j) => j
            .participant
            .as_ref()
            .filter(|p| p.id == bot_id && p.name == "Piano Bot")
            .map(|_| ()),
        _ => None,
    })
    .await;

    // +ls: the room list with counts.
    mpp.cmd(json!({"cmd": "raw", "msgs": [{"m": "+ls"}]})).await;
    let count = mpp
        .wait("ls", |m| {
            m["u"]
                .as_array()?
                .iter()
                .find_map(|c| (c["_id"] == room.as_str() && c["count"] == 3).then_some(3))
        })
        .await;
    assert_eq!(count, 3);

    // ch again: the socket moves to another room; the first room sees it leave.
    let elsewhere = unique("mpp elsewhere");
    mpp.cmd(json!({"cmd": "ch", "room": elsewhere})).await;
    let ch = mpp
        .wait("ch", |m| {
            (m["ch"]["_id"] == elsewhere.as_str()).then(|| m.clone())
        })
        .await;
    assert_eq!(ch["ppl"].as_array().map(Vec::len), Some(1), "{ch}");
    pb.recv_matching(|m| match m {
        server_message::Msg::ParticipantLeft(l) if l.participant_id == mpp_id => Some(()),
        _ => None,
    })
    .await;

    mpp.cmd(json!({"cmd": "stop"})).await;
    bot.cmd(json!({"cmd": "stop"})).await;
    pb.close().await;
}

/// Closes reach MPP clients with MPP's codes on every host, whoever closes: an oversized frame
/// before any room (the core's session) and in a room (the room, through the edge's relay),
/// and a `bye` normally. The core closes with our codes; each host's transport translates.
pub async fn mpp_clients_are_closed_with_mpp_codes(s: &Server) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = s.http("/mpp").replacen("http://", "ws://", 1);
    let big = format!(
        r#"[{{"m":"a","message":"{}"}}]"#,
        "x".repeat(piano_core::limits::MAX_FRAME_BYTES)
    );
    let room = unique("mpp closes");
    for (enter_room, last, code) in [(false, &big, 4002), (true, &big, 4002)]
        .into_iter()
        .chain([(true, &r#"[{"m":"bye"}]"#.to_owned(), 1000)])
    {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect to /mpp");
        ws.send(Message::text(r#"[{"m":"hi"}]"#))
            .await
            .expect("send hi");
        if enter_room {
            let ch = json!([{"m": "ch", "_id": room}]).to_string();
            ws.send(Message::text(ch)).await.expect("send ch");
        }
        // Waits for the answer to hi (and ch), then sends the last frame.
        let mut waiting_for = if enter_room { "ch" } else { "hi" };
        let closed = tokio::time::timeout(RECV_TIMEOUT, async {
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Text(t)) if !waiting_for.is_empty() => {
                        let v: Value = serde_json::from_str(&t).expect("MPP JSON");
                        if v.as_array()
                            .is_some_and(|a| a.iter().any(|m| m["m"] == waiting_for))
                        {
                            waiting_for = "";
                            ws.send(Message::text(last.clone())).await.expect("send");
                        }
                    }
                    Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                    Ok(_) => {}
                    Err(e) => panic!("the socket broke instead of closing: {e}"),
                }
            }
            None
        })
        .await
        .expect("closed in time");
        assert_eq!(
            closed,
            Some(code),
            "in a room: {enter_room}, last frame of {} bytes",
            last.len()
        );
    }
}
