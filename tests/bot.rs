//! The example bot (`client/examples/bot.rs`, its logic `piano_client::bot`): it joins, plays its
//! phrase with the phrase's timing, and answers `!ping` and `!play` in the chat; the logic
//! in-process, then the real example binary (built as this crate's `piano-bot`), stopped by a
//! signal.

use e2e_tests::proto::{self, note_event, server_message::Msg};
use e2e_tests::*;
use piano_client::bot::{BotOptions, BotReport, PHRASE};
use std::time::Duration;

/// Waits for `bot`'s arrival in the listener's room; its participant id.
async fn arrival(listener: &mut Client, name: &str) -> String {
    listener
        .recv_matching(|m| match m {
            Msg::ParticipantJoined(j) => j
                .participant
                .as_ref()
                .filter(|p| p.name == name)
                .map(|p| p.id.clone()),
            _ => None,
        })
        .await
}

/// Waits for the phrase from `bot`: every note of it, with its delays kept (as sent: one batch).
async fn hears_phrase(listener: &mut Client, bot: &str) {
    let batch = listener
        .recv_matching(|m| match m {
            Msg::Notes(b) if b.sender_id == bot => Some(b.clone()),
            _ => None,
        })
        .await;
    let heard: Vec<(u32, u32, bool)> = batch
        .events
        .iter()
        .filter_map(|e| match e.kind {
            Some(note_event::Kind::NoteOn(n)) => Some((e.delay, n.note, true)),
            Some(note_event::Kind::NoteOff(n)) => Some((e.delay, n.note, false)),
            _ => None,
        })
        .collect();
    assert_eq!(heard, PHRASE.to_vec(), "the phrase, with its timing");
}

/// Waits for the bot to leave, then leaves.
async fn leaves(mut listener: Client, bot: &str) {
    listener
        .recv_matching(|m| match m {
            Msg::ParticipantLeft(l) if l.participant_id == bot => Some(()),
            _ => None,
        })
        .await;
    listener.close().await;
}

/// Says `command` in the chat.
async fn say(listener: &mut Client, command: &str) {
    listener
        .send(proto::client_message::Msg::Chat(proto::SendChat {
            text: command.into(),
        }))
        .await;
}

/// Waits for the bot to say `answer`.
async fn hears_answer(listener: &mut Client, bot: &str, answer: &str) {
    listener
        .recv_matching(|m| match m {
            Msg::Chat(c) if c.participant_id == bot && c.text == answer => Some(()),
            _ => None,
        })
        .await;
}

/// The bot's logic in a task, in `room` as `name`: what stops it, and its task.
fn start_bot(
    s: &Server,
    room: &str,
    name: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<BotReport, piano_client::ClientError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = BotOptions {
        url: s.http(""),
        room: room.into(),
        name: name.into(),
        limit: Duration::from_secs(120),
    };
    let task = tokio::spawn(piano_client::bot::run(opts, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

pub async fn bot_plays_and_answers_chat_commands(s: &Server) {
    let room = unique("bot");
    let mut listener = s.player(&room, "Listener").await;
    listener.join().await;
    let (stop, bot_task) = start_bot(s, &room, "Bot");
    let bot = arrival(&mut listener, "Bot").await;
    hears_phrase(&mut listener, &bot).await;
    say(&mut listener, "!ping").await;
    hears_answer(&mut listener, &bot, "pong").await;
    // The phrase goes before the answer.
    say(&mut listener, "!play").await;
    hears_phrase(&mut listener, &bot).await;
    hears_answer(&mut listener, &bot, "playing").await;
    let _ = stop.send(());
    let report = bot_task
        .await
        .expect("bot task")
        .expect("the bot ran without error");
    assert_eq!(
        report,
        BotReport {
            phrases: 2,
            answered: 2,
            reconnects: 0,
            refused: 0,
        }
    );
    leaves(listener, &bot).await;
}

/// The owner mutes the bot's chat: each answer is refused (`MUTED`), and the bot goes on (it
/// plays at the second `!play` too) instead of ending at the first refusal.
pub async fn bot_survives_refused_answers(s: &Server) {
    let room = unique("botmuted");
    let mut owner = s.player_as(&room, "user:botowner", &["member"]).await;
    owner.join().await;
    let (stop, bot_task) = start_bot(s, &room, "MutedBot");
    let bot = arrival(&mut owner, "MutedBot").await;
    hears_phrase(&mut owner, &bot).await;
    owner
        .send(proto::client_message::Msg::Mute(proto::Mute {
            participant_id: bot.clone(),
            notes: false,
            chat: true,
        }))
        .await;
    owner
        .recv_matching(|m| match m {
            Msg::ParticipantUpdated(u) => u
                .participant
                .as_ref()
                .filter(|p| p.id == bot && p.muted_chat)
                .map(|_| ()),
            _ => None,
        })
        .await;
    for _ in 0..2 {
        say(&mut owner, "!play").await;
        hears_phrase(&mut owner, &bot).await;
    }
    let _ = stop.send(());
    let report = bot_task
        .await
        .expect("bot task")
        .expect("the bot ran on after the refusals");
    assert_eq!(
        report,
        BotReport {
            phrases: 3,
            answered: 0,
            reconnects: 0,
            refused: 2,
        }
    );
    leaves(owner, &bot).await;
}

pub async fn bot_example_binary_runs_and_stops_on_a_signal(s: &Server) {
    let room = unique("botbin");
    let mut listener = s.player(&room, "Listener").await;
    listener.join().await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_piano-bot"))
        .args([s.http("").as_str(), room.as_str(), "BinBot", "120"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example bot");
    let bot = arrival(&mut listener, "BinBot").await;
    hears_phrase(&mut listener, &bot).await;
    say(&mut listener, "!ping").await;
    hears_answer(&mut listener, &bot, "pong").await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: a signal to the child this trial started and still holds.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(RECV_TIMEOUT, child.wait_with_output())
        .await
        .expect("the bot stops on SIGTERM")
        .expect("bot output");
    assert!(out.status.success(), "{:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("phrases: 1, answered: 1"), "{stdout}");
    leaves(listener, &bot).await;
}
