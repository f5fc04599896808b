//! Signing in through an OpenID Connect provider in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/web/oauth_signin.mjs`) against the target's `local` provider (the
//! rig's oidc-provider). The page signs in through the provider's login and consent forms,
//! plays a note that a WebSocket client of this trial hears in the same room, links and unlinks
//! Discord (the rig's stand-in) from the account panel, signs out and in again as the same
//! account, then from a fresh browser; at each step the script checks that the refresh token
//! (which the test, not the page, reads from the browser's cookie jar) is out of every page
//! script's reach and absent from the server's logs.

use e2e_tests::proto::{note_event, server_message};
use e2e_tests::*;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

/// The whole browser run: three sign-ins through the provider's forms on a busy machine.
const BROWSER_RUN: Duration = Duration::from_secs(240);

pub async fn browser_signs_in_through_a_provider_and_never_exposes_the_refresh_token(s: &Server) {
    let (status, providers) = get_json(&s.http("/api/auth/providers")).await;
    assert_eq!(status, 200, "providers: {providers}");
    assert!(
        providers["providers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["id"] == "local")),
        "the target configures the rig's `local` provider: {providers}"
    );

    let room = unique("oauth-browser");
    let listener = unique("ear");
    let mut ear = s.player(&room, &listener).await;
    let joined = ear.join().await;
    // Participant id → user id, to name who played what.
    let mut users: HashMap<String, String> = joined
        .participants
        .iter()
        .map(|p| (p.id.clone(), p.user_id.clone()))
        .collect();

    let shots = repo_root()
        .join("tests/artifacts/screenshots")
        .join(format!("{:?}", s.host).to_lowercase());
    let child = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/web/oauth_signin.mjs"))
        .arg(s.http(""))
        .arg(&shots)
        .arg(&room)
        .arg(&listener)
        .args(s.log_paths())
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let run = child.wait_with_output();
    tokio::pin!(run);
    let deadline = tokio::time::Instant::now() + BROWSER_RUN;
    // The user ids whose middle C the listener heard, while the browser runs.
    let mut heard: Vec<String> = Vec::new();
    let out = loop {
        tokio::select! {
            out = &mut run => break out.expect("node ran"),
            ev = ear.next_event(Duration::from_secs(1)) => match ev {
                Some(Event::Msg(m)) => record(m, &mut users, &mut heard),
                Some(other) => panic!("the listener's socket ended: {other:?}"),
                None => {}
            },
            _ = tokio::time::sleep_until(deadline) => panic!("the browser test finishes within {BROWSER_RUN:?}"),
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "browser test failed:\n{text}");

    let line = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("the script printed `{tag}`:\n{text}"))
    };
    let account = line("ACCOUNT ");
    assert_eq!(line("PLAYED "), account);
    assert!(account.starts_with("user:"), "a member account: {account}");
    // The note left the page long before the script ended; a last look in case it is in flight.
    while !heard.contains(&account) {
        match ear.next_event(Duration::from_secs(5)).await {
            Some(Event::Msg(m)) => record(m, &mut users, &mut heard),
            other => {
                panic!("the listener heard {account}'s note (heard {heard:?}; then {other:?})")
            }
        }
    }
    assert!(
        shots.join("account.png").exists(),
        "account.png was written"
    );
    ear.close().await;
}

/// Keeps track of who is in the room and notes whose middle C was heard.
fn record(msg: server_message::Msg, users: &mut HashMap<String, String>, heard: &mut Vec<String>) {
    match msg {
        server_message::Msg::ParticipantJoined(j) => {
            if let Some(p) = j.participant {
                users.insert(p.id, p.user_id);
            }
        }
        server_message::Msg::Notes(batch) => {
            let middle_c = batch
                .events
                .iter()
                .any(|e| matches!(&e.kind, Some(note_event::Kind::NoteOn(n)) if n.note == 60));
            if middle_c {
                heard.push(users.get(&batch.sender_id).cloned().unwrap_or_default());
            }
        }
        _ => {}
    }
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let resp = crate::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}
