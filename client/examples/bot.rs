//! A small bot on `piano-client`: joins a room, plays a short phrase, answers `!ping` with
//! `pong` and `!play` with the phrase again; stops on Ctrl-C / SIGTERM or after its time limit.
//!
//! `cargo run -p piano-client --example bot -- <server url> <room> [name] [seconds]`
//! e.g. `cargo run -p piano-client --example bot -- http://127.0.0.1:8787 lobby Bach 60`

use piano_client::bot::{BotOptions, run};
use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(room)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bot <server url> <room> [name] [seconds]");
        std::process::exit(2);
    };
    let name = args.get(2).cloned().unwrap_or_else(|| "Bot".into());
    let secs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60);
    let opts = BotOptions {
        url: url.clone(),
        room: room.clone(),
        name,
        limit: Duration::from_secs(secs),
    };
    match run(opts, stop_signal()).await {
        Ok(report) => println!("{report:?}"),
        Err(e) => {
            eprintln!("bot: {e}");
            std::process::exit(1);
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
