//! Analytics (`piano_core::analytics`): a server of its own with `ANALYTICS_URL` pointed at a
//! local NDJSON receiver; a session's events must arrive with the right counts, and the
//! member's totals (time played included) must be served without MongoDB. At the edge the
//! same events are written to Workers Analytics Engine: wrangler dev's local dataset keeps
//! nothing (its `writeDataPoint` is a no-op), so the trial reads the Room object's log line
//! saying how many data points it wrote, and that none failed.

use crate::*;
use e2e_tests::proto::{self, client_message as cm};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts POSTs on a loopback port and keeps every NDJSON line they carried.
async fn receiver() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, len) = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    match sock.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                let lines = body.lines().filter_map(|l| serde_json::from_str(l).ok());
                keep.lock().unwrap().extend(lines);
                let _ = sock
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (port, got)
}

/// The sum of `field` over the events of `kind` for `user`.
fn sum(events: &[serde_json::Value], user: &str, kind: &str, field: &str) -> u64 {
    events
        .iter()
        .filter(|e| e["user"] == user && e["event"] == kind)
        .map(|e| e[field].as_u64().unwrap_or(0))
        .sum()
}

pub async fn the_http_sink_receives_a_sessions_events(target: &Server) {
    let (port, got) = receiver().await;
    let vars: Vec<(String, String)> = [
        ("ANALYTICS_URL", format!("http://127.0.0.1:{port}/ingest")),
        ("ANALYTICS_FLUSH_MS", "200".to_owned()),
        ("ENVIRONMENT", "staging".to_owned()),
        ("DEPLOYMENT_ID", "analytics-trial".to_owned()),
        // The edge's Analytics Engine writes are logged at debug (read below).
        ("LOG_LEVEL", "debug".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_piano-fallback"));
    let s = match target.host {
        Host::Edge => Server::start_edge_with(&vars),
        Host::Fallback => Server::start_fallback_binary(bin, &vars),
        // Replicas on Redis: members' totals in Redis hashes, each replica its own sink.
        Host::FallbackCluster => Server::start_fallback_cluster_with(bin, &vars),
    };
    let room = unique("analytics");
    let member = format!("user:{}", unique("an-member"));
    let mut a = s.player_as(&room, &member, &["member"]).await;
    a.join().await;
    a.send(cm::Msg::UpdateSettings(proto::UpdateSettings {
        password: Some("pw".into()),
        ..Default::default()
    }))
    .await;
    // The password is set before the guest tries.
    a.recv_matching(|m| matches!(m, proto::server_message::Msg::SettingsChanged(_)).then_some(()))
        .await;
    let mut b = s.player(&room, "Guest").await;
    let refused = b
        .try_join("wrong")
        .await
        .expect_err("joined without the password");
    assert_eq!(refused.reason, proto::JoinFailure::WrongPassword as i32);
    b.try_join("pw").await.expect("right password");
    let guest = b.id().to_owned();
    for n in 0..3 {
        a.send(note_on(60 + n, 90)).await;
    }
    for text in ["one", "two"] {
        a.send(cm::Msg::Chat(proto::SendChat { text: text.into() }))
            .await;
    }
    // The guest saw both chats: everything the member sent is in.
    let mut chats = 0;
    while chats < 2 {
        chats += b
            .recv_matching(|m| matches!(m, proto::server_message::Msg::Chat(_)).then_some(1))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    a.close().await;
    b.close().await;

    let events = eventually(
        "both leaves reach the sink",
        Duration::from_secs(30),
        || {
            let got = got.lock().unwrap().clone();
            let room = room.clone();
            async move {
                let mine: Vec<_> = got
                    .into_iter()
                    .filter(|e| e["room"] == room.as_str())
                    .collect();
                let leaves = mine.iter().filter(|e| e["event"] == "leave").count();
                (leaves >= 2).then_some(mine)
            }
        },
    )
    .await;
    let m = member.as_str();
    assert_eq!(sum(&events, m, "join", "count"), 1, "{events:#?}");
    assert_eq!(sum(&events, m, "leave", "count"), 1, "{events:#?}");
    assert_eq!(sum(&events, m, "activity", "notes"), 3, "{events:#?}");
    assert_eq!(sum(&events, m, "activity", "chats"), 2, "{events:#?}");
    assert!(
        sum(&events, m, "activity", "played_ms") >= 1_000,
        "{events:#?}"
    );
    assert_eq!(sum(&events, m, "join_failed", "count"), 0);
    let guests: Vec<_> = events.iter().filter(|e| e["guest"] == true).collect();
    assert!(!guests.is_empty(), "{events:#?}");
    let g = guests[0]["user"].as_str().unwrap_or_default().to_owned();
    assert!(g.starts_with("guest:"), "{g} ({guest})");
    assert_eq!(sum(&events, &g, "join_failed", "count"), 1, "{events:#?}");
    assert_eq!(sum(&events, &g, "join", "count"), 1, "{events:#?}");
    assert_eq!(sum(&events, &g, "leave", "count"), 1, "{events:#?}");
    for e in &events {
        assert_eq!(
            (e["v"].as_u64(), e["env"].as_str()),
            (Some(1), Some("staging")),
            "{e}"
        );
        assert_eq!(e["deployment"], "analytics-trial", "{e}");
    }

    // The member's totals, time played included, without MongoDB; the guest has none.
    let stats = eventually("the member's totals", Duration::from_secs(15), || {
        let url = s.http(&format!(
            "/api/users/{}/stats",
            piano_core::names::percent_encode(m)
        ));
        async move {
            let body: serde_json::Value = crate::get(url).await.ok()?.json().await.ok()?;
            (body["notes_played"] == 3).then_some(body)
        }
    })
    .await;
    assert_eq!(stats["chat_messages"], 2, "{stats}");
    assert_eq!(stats["joins"], 1, "{stats}");
    assert!(stats["played_ms"].as_u64().unwrap_or(0) >= 1_000, "{stats}");
    let url = s.http(&format!(
        "/api/users/{}/stats",
        piano_core::names::percent_encode(&g)
    ));
    let body: serde_json::Value = crate::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(body["notes_played"], 0, "a guest keeps nothing: {body}");
    assert_eq!(body["joins"], 0, "a guest keeps nothing: {body}");

    if s.host == Host::Edge {
        // One data point per event (the `analytics_engine` log line of
        // durable-objects/src/analytics.rs).
        let written = || {
            let (mut ok, mut failed) = (0u64, 0u64);
            for path in s.log_paths() {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                for line in log.lines().filter(|l| l.starts_with('{')) {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                        continue;
                    };
                    if v["event"] != "analytics_engine" || v["room"] != room.as_str() {
                        continue;
                    }
                    let n = |k: &str| v["fields"][k].as_str().and_then(|n| n.parse::<u64>().ok());
                    ok += n("written").unwrap_or(0);
                    failed += n("failed").unwrap_or(0);
                }
            }
            (ok, failed)
        };
        let sent = got
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["room"] == room.as_str())
            .count() as u64;
        eventually("a data point per event", Duration::from_secs(10), || {
            let w = written();
            async move { (w.0 >= sent).then_some(()) }
        })
        .await;
        assert_eq!(written(), (sent, 0), "{}", s.log_tail(40));
    }
}

const DRAIN_TOKEN: &str = "analytics-drain-token";

/// The fallback's batching by time, and its drain: with a long `ANALYTICS_FLUSH_MS` a session's
/// events wait in the queue, and SIGTERM delivers them before the process exits.
pub async fn queued_analytics_are_delivered_at_shutdown(_target: &Server) {
    let (port, got) = receiver().await;
    let vars: Vec<(String, String)> = [
        ("ANALYTICS_URL", format!("http://127.0.0.1:{port}/ingest")),
        ("ANALYTICS_FLUSH_MS", "600000".to_owned()),
        ("METRICS_TOKEN", DRAIN_TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_piano-fallback"));
    let s = Server::start_fallback_binary(bin, &vars);
    let room = unique("analytics-drain");
    let mut a = s.player(&room, "Drained").await;
    a.join().await;
    a.send(note_on(60, 90)).await;
    a.close().await;
    // The leave is handed over at once; the batch is not due for ten minutes: the session's
    // events (join, activity, leave) wait in the sink's queue, and nothing was sent.
    eventually(
        "the session's events queued",
        Duration::from_secs(10),
        || async {
            let (_, text) = crate::metrics::scrape(&s, Some(DRAIN_TOKEN)).await;
            let queued = crate::metrics::value(&text, "piano_analytics_events_queued");
            (queued.unwrap_or(0.0) >= 2.0).then_some(())
        },
    )
    .await;
    assert!(
        got.lock().unwrap().is_empty(),
        "sent before its batch was due"
    );
    // SIGTERM and a wait (blocking), while the receiver keeps answering on this runtime.
    let s = std::sync::Arc::new(s);
    let stopping = s.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .expect("stop");
    let events: Vec<_> = got.lock().unwrap().clone();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["room"] == room.as_str())
        .filter_map(|e| e["event"].as_str())
        .collect();
    // (An `activity` event between them carries the time in the room.)
    assert_eq!(
        (kinds.first(), kinds.last()),
        (Some(&"join"), Some(&"leave")),
        "{events:#?}"
    );
}
