//! The example bot (`examples/bot.rs` is its `main`; the e2e trial `bot::*` runs both): joins a
//! room as a guest, plays a short phrase, and answers chat commands: `!ping` → `pong`, `!play`
//! → the phrase again. It stops after its time limit or when `stop` resolves, and reconnects
//! (resuming its place) when the server closes it with a code that allows it.

use crate::batch::{note_off, note_on};
use crate::error::ClientError;
use crate::room::{Auth, Client, ConnectOptions, JoinOptions, Reentry, Room, may_reconnect};
use piano_core::proto::server_message;
use std::time::Duration;
use tokio::time::Instant;

/// The phrase: C4 E4 G4 C5, (ms after its start, note, on/off).
pub const PHRASE: [(u32, u32, bool); 8] = [
    (0, 60, true),
    (140, 60, false),
    (150, 64, true),
    (290, 64, false),
    (300, 67, true),
    (440, 67, false),
    (450, 72, true),
    (800, 72, false),
];

#[derive(Debug, Clone)]
pub struct BotOptions {
    /// The server's base URL (`http://host:port`).
    pub url: String,
    pub room: String,
    pub name: String,
    /// Stop after this long.
    pub limit: Duration,
}

/// What the bot did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BotReport {
    pub phrases: u32,
    pub answered: u32,
    pub reconnects: u32,
    /// Answers the room refused (rate limited, muted): logged, and the bot goes on.
    pub refused: u32,
}

/// Plays [`PHRASE`] from now, as one batch keeping its timing.
pub async fn play_phrase(room: &mut Room) -> Result<(), ClientError> {
    let start = room.server_now();
    for (at, note, on) in PHRASE {
        let kind = if on {
            note_on(note, 80)
        } else {
            note_off(note)
        };
        room.send_note_at(kind, start + f64::from(at)).await?;
    }
    room.flush().await
}

/// Runs the bot until its limit or `stop`.
pub async fn run(
    opts: BotOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<BotReport, ClientError> {
    let client = Client::connect(ConnectOptions {
        url: opts.url.clone(),
        auth: Auth::Guest(opts.name.clone()),
    })
    .await?;
    let mut room = client.join(&opts.room, JoinOptions::default()).await?;
    let mut report = BotReport::default();
    play_phrase(&mut room).await?;
    report.phrases += 1;
    let deadline = crate::conn::deadline_in(opts.limit);
    // The newest chat id looked at (the join's history is not answered: it is no message).
    let mut answered_upto = 0;
    tokio::pin!(stop);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let next = tokio::select! {
            biased;
            _ = &mut stop => break,
            next = room.next(left) => next,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) if may_reconnect(&e) => {
                if let Reentry::Rejoined(_) = room.reconnect(5).await? {
                    answered_upto = 0;
                }
                report.reconnects += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let server_message::Msg::Chat(chat) = msg else {
            continue;
        };
        if chat.participant_id.is_empty() || chat.participant_id == room.id() {
            continue; // the room's own messages, and ours
        }
        // A resume replays what was missed, which may include commands already answered
        // (the room's chat ids only grow; a fresh join starts the count again).
        if chat.id <= answered_upto {
            continue;
        }
        answered_upto = chat.id;
        let answer = match chat.text.trim() {
            "!ping" => "pong",
            "!play" => {
                play_phrase(&mut room).await?;
                report.phrases += 1;
                "playing"
            }
            _ => continue,
        };
        match room.chat(answer).await {
            Ok(_) => report.answered += 1,
            // Anyone can get the bot rate limited or muted: that ends an answer, not the bot.
            Err(e @ (ClientError::Server { .. } | ClientError::Timeout(_))) => {
                eprintln!("bot: the answer {answer:?} was refused: {e}");
                report.refused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    room.close().await;
    Ok(report)
}
