//! The TypeScript SDK (`sdk/`) in Node against each target: each trial runs one script of
//! `sdk/test/` (`node sdk/test/<script> <base url>`), which drives SDK clients through the
//! built package (`sdk/dist`, built by scripts/build-sdk with the web client) and exits non-zero
//! with a message on the first failed check.

use crate::*;
use std::time::Duration;

/// Runs `node <script> <args>` from the repository root; fails with its output unless it exits 0
/// within `limit`. The SDK's and the browser's trials are such scripts.
pub async fn run_node_script(script: &std::path::Path, args: &[&std::ffi::OsStr], limit: Duration) {
    let name = script.display();
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(repo_root())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} finishes within {limit:?}"))
    .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{name} failed:\n{text}");
}

/// Runs `sdk/test/<script> <base url>`.
async fn run_sdk_script(script: &str, s: &Server) {
    let base = s.http("");
    let path = repo_root().join("sdk/test").join(script);
    run_node_script(&path, &[base.as_ref()], Duration::from_secs(120)).await;
}

/// Two SDK clients: notes arrive batched with the sender's timing and scheduled playback
/// times; chat both ways; a refused chat is a typed error (sdk/test/play_and_chat.mjs).
pub async fn sdk_two_clients_play_and_chat(s: &Server) {
    run_sdk_script("play_and_chat.mjs", s).await;
}

/// Wrong password, full room, ban (close 4003, then BANNED with the time left), and moderation
/// and settings calls refused, each a typed PianoError (sdk/test/typed_failures.mjs).
pub async fn sdk_refusals_are_typed_errors(s: &Server) {
    run_sdk_script("typed_failures.mjs", s).await;
}

/// A subscribed SDK client follows a room into, through and out of the directory
/// (sdk/test/directory.mjs).
pub async fn sdk_follows_the_room_directory(s: &Server) {
    run_sdk_script("directory.mjs", s).await;
}

/// A dropped SDK client resumes: nothing lost, nothing twice, nobody saw it leave
/// (sdk/test/resume.mjs).
pub async fn sdk_resumes_after_a_dropped_connection(s: &Server) {
    run_sdk_script("resume.mjs", s).await;
}

/// The README's example bot (sdk/examples/bot.mjs) joins, plays its phrase, answers chat
/// commands and exits cleanly (sdk/test/bot.mjs).
pub async fn sdk_example_bot_plays_and_answers_chat(s: &Server) {
    run_sdk_script("bot.mjs", s).await;
}

/// The SDK in Chromium: the built package bundled for the page, two clients on the browser's
/// own WebSocket and fetch (sdk/test/browser.mjs).
pub async fn sdk_runs_in_the_browser(s: &Server) {
    run_sdk_script("browser.mjs", s).await;
}
