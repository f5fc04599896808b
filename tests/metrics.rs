//! Operating it (issue 17): `/metrics` counts exactly what a scripted session did, and
//! `/api/status` and the status page answer, on the edge and on the fallback.
//!
//! The counts are exact because the trial starts a server of its own (as the drift rigs do):
//! the shared targets' counters also count every other trial's traffic.

use crate::*;
use e2e_tests::proto::{self, client_message as cm, server_message::Msg};
use serde_json::json;
use std::time::Duration;

const TOKEN: &str = "metrics-trial-token";

/// A server of `target`'s host with `METRICS_TOKEN` set.
fn own_server(target: &Server) -> Server {
    // Stored with a trailing newline (`echo token | wrangler secret put`): still the token.
    let vars = vec![("METRICS_TOKEN".to_owned(), format!("{TOKEN}\n"))];
    match target.host {
        Host::Edge => Server::start_edge_with(&vars),
        _ => Server::start_fallback_binary(
            std::path::Path::new(env!("CARGO_BIN_EXE_piano-fallback")),
            &vars,
        ),
    }
}

pub(crate) async fn scrape(s: &Server, token: Option<&str>) -> (u16, String) {
    let mut req = crate::http().get(s.http("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("GET /metrics");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// The value of one series (`name` or `name{label="value"}`), if present.
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub async fn metrics_count_what_a_session_did(target: &Server) {
    let s = own_server(target);
    // The credential: none and a wrong one are refused, as JSON.
    assert_eq!(scrape(&s, None).await.0, 401);
    assert_eq!(scrape(&s, Some("not-the-token")).await.0, 401);

    // Accounts: one registration, one login, one refused login.
    let name = unique("metered");
    let creds = json!({"username": name, "password": "correct horse"});
    assert_eq!(
        s.post_json("/api/auth/register", creds.clone()).await.0,
        201
    );
    assert_eq!(s.post_json("/api/auth/login", creds).await.0, 200);
    let wrong = json!({"username": name, "password": "wrong horse!"});
    assert_ne!(s.post_json("/api/auth/login", wrong).await.0, 200);

    // A room: two players join, a third fails the password and plays before joining.
    let room = unique("metered");
    let mut owner = s.player(&room, "Owner").await;
    owner.join().await;
    let mut listener = s.player(&room, "Listener").await;
    listener.join().await;
    owner
        .send(cm::Msg::UpdateSettings(proto::UpdateSettings {
            password: Some("hunter2".into()),
            ..Default::default()
        }))
        .await;
    owner
        .recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
        .await;
    let mut stranger = s.player(&room, "Stranger").await;
    let refused = stranger
        .try_join("guess")
        .await
        .expect_err("wrong password");
    assert_eq!(refused.reason, proto::JoinFailure::WrongPassword as i32);
    stranger.send(note_on(60, 80)).await;
    assert_eq!(stranger.error_code().await, proto::ErrorCode::NotJoined);

    // Three notes relayed; then owner-only play drops the listener's one.
    for i in 0..3 {
        owner.send(note_on(60 + i, 90)).await;
        listener
            .recv_matching(|m| matches!(m, Msg::Notes(_)).then_some(()))
            .await;
    }
    owner
        .send(cm::Msg::UpdateSettings(proto::UpdateSettings {
            owner_only_play: Some(true),
            ..Default::default()
        }))
        .await;
    listener
        .recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
        .await;
    listener.send(note_on(64, 90)).await;
    listener
        .recv_matching(|m| matches!(m, Msg::NotesDropped(_)).then_some(()))
        .await;

    // What the metrics must say (the edge's rooms push every few seconds: wait for it).
    let expected: &[(&str, f64)] = &[
        ("piano_auth_total{outcome=\"register_ok\"}", 1.0),
        ("piano_auth_total{outcome=\"login_ok\"}", 1.0),
        ("piano_auth_total{outcome=\"login_refused\"}", 1.0),
        ("piano_notes_relayed_total", 3.0),
        ("piano_notes_dropped_total{reason=\"owner_only\"}", 1.0),
        ("piano_notes_dropped_total{reason=\"quota\"}", 0.0),
        ("piano_join_failures_total{reason=\"wrong_password\"}", 1.0),
        ("piano_join_failures_total{reason=\"room_full\"}", 0.0),
        ("piano_errors_total{code=\"not_joined\"}", 1.0),
        ("piano_messages_in_total{kind=\"notes\"}", 5.0),
        ("piano_messages_in_total{kind=\"join\"}", 3.0),
        ("piano_messages_out_total{kind=\"join_failed\"}", 1.0),
        ("piano_messages_out_total{kind=\"notes\"}", 3.0),
        ("piano_connections", 3.0),
        ("piano_players", 2.0),
        ("piano_rooms_awake", 1.0),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (settled, last) = loop {
        let (status, text) = scrape(&s, Some(TOKEN)).await;
        assert_eq!(status, 200, "{text}");
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, want)| value(&text, series) != Some(*want))
            .map(|(series, want)| format!("{series}: {:?} (want {want})", value(&text, series)))
            .collect();
        if wrong.is_empty() || std::time::Instant::now() > deadline {
            break (wrong, text);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(settled.is_empty(), "{settled:#?}\n{last}");
    assert!(
        value(&last, "piano_http_errors_total{status=\"401\"}").is_some_and(|n| n >= 2.0),
        "{last}"
    );
    if s.host != Host::Edge {
        // The fallback times each relay; the edge's clock does not advance while it computes.
        assert!(value(&last, "piano_relay_latency_seconds_count").is_some_and(|n| n >= 3.0));
    }
    assert!(last.contains("# TYPE piano_notes_relayed_total counter"));

    // The status: public, every component named, nothing degraded on a server without
    // backends; and the page that renders it.
    let resp = crate::get(s.http("/api/status")).await.expect("GET status");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap_or_default()
            .contains("max-age")
    );
    let status: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(status["state"], "up", "{status}");
    assert!(!status["version"].as_str().unwrap_or_default().is_empty());
    for c in ["rooms", "directory", "accounts"] {
        assert_eq!(status[c]["state"], "up", "{status}");
    }
    for c in ["mongodb", "redis"] {
        assert_eq!(status[c]["state"], "off", "{status}");
    }
    let page = crate::get(s.http("/status.html")).await.expect("GET page");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap_or_default().contains("/status.js"));
    let script = crate::get(s.http("/status.js")).await.expect("GET script");
    assert_eq!(script.status(), 200);
    assert!(
        script
            .text()
            .await
            .unwrap_or_default()
            .contains("/api/status")
    );
}
