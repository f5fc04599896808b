//! The attacker of the "room under attack" scenario (`attack.rs`): one guest token and its
//! friends, from one loopback address (127.0.0.2, its "network"), doing what issue 13 found
//! harmful. Each component is switchable and bounded in count and time; each keeps a [`Tally`]
//! of what the server did to it (closes by code, `RATE_LIMITED` and other notices, refused
//! upgrades and joins), so the honest players' numbers can be read against it.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use piano_core::proto::{
    self, ClientMessage, ServerMessage, client_message, note_event, server_message,
};
use prost::Message as _;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The ws URL (with a guest-only token) for (room name, user id).
pub type GuestUrl = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// The attacker's address: every socket it (and its slow-reading friends) opens comes from here.
pub const ATTACKER_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The attacker's user id (one guest token for the flood and the extra sockets).
pub const ATTACKER: &str = "guest:bench-attacker";
/// The spray's guest identity (another free guest token of the attacker's): a user already in
/// the room skips the password check on its other sockets (issue 13, item 2), so guessing
/// with the flooding identity would measure no password check at all.
pub const SPRAYER: &str = "guest:bench-attack-spray";
/// The password of the locked room (the honest room itself with `--spray same`).
pub const PASSWORD: &str = "bench-correct-horse";
/// Join attempts the spray keeps in flight (it sends the next guess as an answer arrives).
const SPRAY_WINDOW: u64 = 4;

/// Where the password spray goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spray {
    Off,
    /// A password-locked room next door (its own owner, no honest players).
    NextDoor,
    /// The honest room's own join: the honest room is locked (its players, and the flooding
    /// guest, know the password) and a socket of the attacker guesses.
    Same,
}

/// The attack's components and bounds (`bench attack --help` lists the flags).
#[derive(Debug, Clone)]
pub struct Plan {
    /// (a) Note-off / CC64 batches as fast as the socket takes them, at most this many in all
    /// (0 = no flood).
    pub flood_batches: u64,
    /// Events per flood batch (note-offs and sustain-pedal CC64s, alternating; 1–300).
    pub flood_events: usize,
    /// (b) Extra sockets opened with the attacker's token into the honest room (0 = none).
    pub extra_sockets: usize,
    /// The extra sockets that joined flood too (sharing `flood_batches`).
    pub extra_flood: bool,
    /// (c) The password spray and its bound.
    pub spray: Spray,
    pub spray_max: u64,
    /// (d) Sockets (other guests, the attacker's network) that join the honest room and never
    /// read, with a 4 KiB receive buffer.
    pub slow_readers: usize,
}

impl Plan {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.flood_batches > 0 {
            parts.push(format!(
                "(a) note-off/CC64 flood: ≤ {} batches of {} events, as fast as the socket takes them",
                self.flood_batches, self.flood_events
            ));
        }
        if self.extra_sockets > 0 {
            parts.push(format!(
                "(b) {} extra sockets with the attacker's token{}",
                self.extra_sockets,
                if self.extra_flood {
                    ", each flooding too"
                } else {
                    ", joined and reading"
                }
            ));
        }
        match self.spray {
            Spray::Off => {}
            Spray::NextDoor => parts.push(format!(
                "(c) password spray (a second guest token): ≤ {} wrong passwords against a locked room next door, {SPRAY_WINDOW} in flight",
                self.spray_max
            )),
            Spray::Same => parts.push(format!(
                "(c) password spray (a second guest token): ≤ {} wrong passwords against the honest (locked) room's join, {SPRAY_WINDOW} in flight",
                self.spray_max
            )),
        }
        if self.slow_readers > 0 {
            parts.push(format!(
                "(d) {} slow readers (other guests from the attacker's address: join, then never read; 4 KiB receive buffer)",
                self.slow_readers
            ));
        }
        if parts.is_empty() {
            "none (every component switched off)".into()
        } else {
            parts.join("; ")
                + "; the flooder joins first, the other sockets then, and the flood and the spray start once every join had its answer (≤ 3 s each)"
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "flood_batches": self.flood_batches,
            "flood_events": self.flood_events,
            "extra_sockets": self.extra_sockets,
            "extra_flood": self.extra_flood,
            "spray": match self.spray { Spray::Off => "off", Spray::NextDoor => "next", Spray::Same => "same" },
            "spray_max": self.spray_max,
            "slow_readers": self.slow_readers,
        })
    }
}

/// Counts of labelled events ("closed 1008", "Error RATE_LIMITED", "upgrade refused HTTP 429").
pub type Tally = BTreeMap<String, u64>;

fn bump(t: &mut Tally, label: impl Into<String>, n: u64) {
    *t.entry(label.into()).or_default() += n;
}

/// What the server did to each component.
#[derive(Debug, Default)]
pub struct Report {
    pub flood: Tally,
    pub flood_sent: u64,
    /// From the first flood batch to the last one written.
    pub flood_time: Duration,
    pub extra: Tally,
    pub spray: Tally,
    pub spray_sent: u64,
    pub slow: Tally,
    /// Bytes the slow readers found waiting when they read again after the attack (≤ 3 s each).
    pub slow_backlog_bytes: u64,
}

impl Report {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "flood": { "batches_sent": self.flood_sent, "seconds": self.flood_time.as_secs_f64(), "server_did": self.flood },
            "extra_sockets": self.extra,
            "spray": { "guesses_sent": self.spray_sent, "server_did": self.spray },
            "slow_readers": { "server_did": self.slow, "backlog_bytes_read_after": self.slow_backlog_bytes },
        })
    }
}

/// Codes a bench built before issue 13's protocol does not know, named as the shared spec
/// names them (so a newer server's answers read the same whichever proto the bench has).
fn newer_code(kind: &str, code: i32) -> String {
    match (kind, code) {
        ("error", 13) => "TOO_MANY_CONNECTIONS".into(),
        ("error", 14) => "TOO_MANY_SUBSCRIPTIONS".into(),
        ("join", 7) => "RATE_LIMITED".into(),
        ("join", 8) => "TOO_MANY_CONNECTIONS".into(),
        _ => code.to_string(),
    }
}

/// One label per thing the server may say to an attacker (other messages are not counted).
fn label(msg: &server_message::Msg) -> Option<String> {
    Some(match msg {
        server_message::Msg::Error(e) => format!(
            "Error {}",
            proto::ErrorCode::try_from(e.code)
                .map(|c| c.as_str_name().trim_start_matches("ERROR_CODE_").to_owned())
                .unwrap_or_else(|_| newer_code("error", e.code))
        ),
        server_message::Msg::JoinFailed(f) => format!(
            "JoinFailed {}",
            proto::JoinFailure::try_from(f.reason)
                .map(|c| c
                    .as_str_name()
                    .trim_start_matches("JOIN_FAILURE_")
                    .to_owned())
                .unwrap_or_else(|_| newer_code("join", f.reason))
        ),
        server_message::Msg::NotesDropped(d) => format!(
            "NotesDropped {}",
            proto::NotesDroppedReason::try_from(d.reason)
                .map(|c| {
                    c.as_str_name()
                        .trim_start_matches("NOTES_DROPPED_REASON_")
                        .to_owned()
                })
                .unwrap_or_else(|_| d.reason.to_string())
        ),
        server_message::Msg::Kicked(_) => "Kicked".into(),
        server_message::Msg::Joined(_) => "Joined".into(),
        _ => return None,
    })
}

fn close_label(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("closed {}", u16::from(f.code)),
        None => "closed (no code)".into(),
    }
}

/// Opens a WebSocket to `url` from `source`. `small` gives the socket a 4 KiB kernel receive
/// buffer and small client buffers (the slow readers). The error is a label for the tally.
pub async fn connect(source: Ipv4Addr, url: &str, small: bool) -> Result<Ws, String> {
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .ok_or("bad url")?;
    let server: std::net::SocketAddr = authority.parse().map_err(|_| "bad address")?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if small {
        let _ = socket.set_recv_buffer_size(4096);
    }
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect failed: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let config = if small {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
    } else {
        WebSocketConfig::default()
    };
    let handshake = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(stream),
        Some(config),
    );
    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Err(_) => Err("upgrade timed out".into()),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            Err(format!("upgrade refused HTTP {}", resp.status().as_u16()))
        }
        Ok(Err(e)) => Err(format!("upgrade failed: {e}")),
    }
}

pub fn join_frame(password: &str, create: Option<proto::UpdateSettings>) -> Message {
    let join = ClientMessage {
        msg: Some(client_message::Msg::Join(proto::Join {
            password: password.into(),
            create_settings: create,
        })),
        ..Default::default()
    };
    Message::Binary(join.encode_to_vec().into())
}

/// Sends Join and waits (≤ 10 s) for the answer: Ok on Joined, else the label of what came.
pub async fn join(
    ws: &mut Ws,
    password: &str,
    create: Option<proto::UpdateSettings>,
) -> Result<(), String> {
    join_once(ws, password, create).await.map_err(|(l, _)| l)
}

/// As [`join`], as a well-behaved client joins: a `JoinFailed RATE_LIMITED` (e.g. a room-wide
/// cap on password checks reached while many join at once) waits its `retry_after_ms` (at least
/// 100 ms, at most 5 s) and tries again, up to 20 times. Counts the retries in `retries`.
pub async fn join_patiently(
    ws: &mut Ws,
    password: &str,
    create: Option<proto::UpdateSettings>,
    retries: &AtomicU64,
) -> Result<(), String> {
    let mut tries = 0;
    loop {
        match join_once(ws, password, create.clone()).await {
            Err((l, after)) if l == "JoinFailed RATE_LIMITED" && tries < 20 => {
                tries += 1;
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(after.clamp(100, 5000))).await;
            }
            other => return other.map_err(|(l, _)| l),
        }
    }
}

/// Join once: Ok on Joined, else the label of the answer and its `retry_after_ms` (0 if none).
async fn join_once(
    ws: &mut Ws,
    password: &str,
    create: Option<proto::UpdateSettings>,
) -> Result<(), (String, u64)> {
    ws.send(join_frame(password, create))
        .await
        .map_err(|e| (format!("send failed: {e}"), 0))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(("no answer to Join within 10 s".into(), 0)),
            Ok(None) => return Err(("closed (no code)".into(), 0)),
            Ok(Some(Err(e))) => return Err((format!("connection error: {e}"), 0)),
            Ok(Some(Ok(Message::Close(f)))) => return Err((close_label(f.as_ref()), 0)),
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
        };
        match ServerMessage::decode(&msg[..]).ok().and_then(|m| m.msg) {
            Some(server_message::Msg::Joined(_)) => return Ok(()),
            Some(m @ server_message::Msg::JoinFailed(_)) => {
                let after = match &m {
                    server_message::Msg::JoinFailed(f) => f.retry_after_ms,
                    _ => 0,
                };
                return Err((label(&m).unwrap_or_default(), after));
            }
            Some(m @ server_message::Msg::Error(_)) => {
                return Err((label(&m).unwrap_or_default(), 0));
            }
            _ => {}
        }
    }
}

/// The room's creation settings: room for everyone, and the password where the room is locked.
pub fn create_settings(password: &str) -> proto::UpdateSettings {
    proto::UpdateSettings {
        max_players: Some(99),
        password: (!password.is_empty()).then(|| password.to_owned()),
        ..Default::default()
    }
}

/// One flood batch: `events` note-offs and sustain-pedal (CC64) changes, alternating. None of
/// them is a note-on, so the note quota (before issue 13) never charged them.
fn flood_frame(events: usize) -> Message {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let events = (0..events.clamp(1, 300))
        .map(|k| proto::NoteEvent {
            delay: 0,
            kind: Some(if k % 2 == 0 {
                note_event::Kind::NoteOff(proto::NoteOff {
                    note: (k / 2 % 88 + 21) as u32,
                    channel: 0,
                })
            } else {
                note_event::Kind::ControlChange(proto::ControlChange {
                    control: 64,
                    value: if k / 2 % 2 == 0 { 127 } else { 0 },
                    channel: 0,
                })
            }),
        })
        .collect();
    let msg = ClientMessage {
        msg: Some(client_message::Msg::Notes(proto::NoteBatch {
            time: now,
            events,
            sender_id: String::new(),
        })),
        ..Default::default()
    };
    Message::Binary(msg.encode_to_vec().into())
}

/// Floods until `until` or until `budget` (shared by every flooding socket) is spent; returns
/// the batches written and when the last one was.
async fn flood(
    sink: &mut SplitSink<Ws, Message>,
    until: Instant,
    budget: &AtomicU64,
    events: usize,
) -> (u64, Option<Instant>) {
    let mut frame = flood_frame(events);
    let mut sent = 0u64;
    let mut last = None;
    let until_t: tokio::time::Instant = until.into();
    while Instant::now() < until {
        if budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            break;
        }
        // A fresh batch time now and then: the server refuses batch times ±10 s off its clock.
        if sent % 256 == 255 {
            frame = flood_frame(events);
        }
        // Buffered, flushed every 32 batches: "as fast as the socket takes them"; a socket the
        // server stopped reading blocks here until the phase ends.
        match tokio::time::timeout_at(until_t, sink.feed(frame.clone())).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        sent += 1;
        if sent.is_multiple_of(32) {
            match tokio::time::timeout_at(until_t, sink.flush()).await {
                Ok(Ok(())) => last = Some(Instant::now()),
                _ => break,
            }
            tokio::task::yield_now().await;
        }
    }
    if let Ok(Ok(())) = tokio::time::timeout_at(until_t, sink.flush()).await {
        last = Some(Instant::now());
    }
    (sent, last)
}

/// Reads a joined attacker socket until `until`, tallying what the server says and how the
/// socket ends ("open at end" when it outlived the attack).
async fn watch(mut stream: SplitStream<Ws>, until: Instant, tally: Arc<std::sync::Mutex<Tally>>) {
    let mut local = Tally::new();
    let ended = loop {
        match tokio::time::timeout_at(until.into(), stream.next()).await {
            Err(_) => break "open at end".to_owned(),
            Ok(None) => break "closed (no code)".to_owned(),
            Ok(Some(Err(_))) => break "connection error".to_owned(),
            Ok(Some(Ok(Message::Close(f)))) => break close_label(f.as_ref()),
            // Relayed note batches are large; notices are small (and not decoding the flood
            // keeps the load generator's share of the CPUs down).
            Ok(Some(Ok(Message::Binary(b)))) if b.len() > 256 => {}
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Some(l) = ServerMessage::decode(&b[..])
                    .ok()
                    .and_then(|m| m.msg)
                    .as_ref()
                    .and_then(label)
                {
                    bump(&mut local, l, 1);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    };
    bump(&mut local, ended, 1);
    if let Ok(mut t) = tally.lock() {
        for (k, v) in local {
            bump(&mut t, k, v);
        }
    }
}

/// The locked room next door and its owner (joined before the run, kept reading).
pub struct NextDoor {
    pub room: String,
    owner: tokio::task::JoinHandle<()>,
}

impl Drop for NextDoor {
    fn drop(&mut self) {
        self.owner.abort();
    }
}

/// Before the measurement: the spray's locked room next door, created by its owner.
pub async fn prepare(
    plan: &Plan,
    url: &GuestUrl,
    room_base: &str,
) -> Result<Option<NextDoor>, String> {
    if plan.spray != Spray::NextDoor {
        return Ok(None);
    }
    let room = format!("{room_base}-locked");
    let mut ws = connect(
        Ipv4Addr::new(127, 0, 0, 9),
        &url(&room, "guest:bench-locked-owner"),
        false,
    )
    .await
    .map_err(|e| format!("the locked room's owner: {e}"))?;
    join_patiently(
        &mut ws,
        PASSWORD,
        Some(create_settings(PASSWORD)),
        &AtomicU64::new(0),
    )
    .await
    .map_err(|e| format!("the locked room's owner: {e}"))?;
    let owner = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    Ok(Some(NextDoor { room, owner }))
}

/// The attack on `room` (the honest room) from now until `until`; every component at once.
/// Returns once every component stopped (slow readers are drained for up to 3 s after `until`
/// to see whether the server closed them).
pub async fn run(
    plan: &Plan,
    url: &GuestUrl,
    room: &str,
    next_door: Option<&NextDoor>,
    until: Instant,
) -> Report {
    let password = if plan.spray == Spray::Same {
        PASSWORD
    } else {
        ""
    };
    let budget = Arc::new(AtomicU64::new(plan.flood_batches));
    let flood_tally = Arc::new(std::sync::Mutex::new(Tally::new()));
    let extra_tally = Arc::new(std::sync::Mutex::new(Tally::new()));
    let started = Instant::now();
    let mut floods = Vec::new();
    // The flood and the spray start once every joining component had its answer (≤ 3 s): the
    // slow readers are in the room before the flood, and the spray's wrong passwords (which may
    // delay the joins of its network's guests) come after the attacker's own joins.
    let joiners = usize::from(plan.flood_batches > 0) + plan.extra_sockets + plan.slow_readers;
    let (arrived_tx, arrived_rx) = tokio::sync::watch::channel(0usize);
    // The flooder connects first (the per-user socket cap admits the first few sockets of a
    // user: the flooding one is among them); the others follow its join answer (≤ 3 s).
    let (flooder_tx, flooder_rx) = tokio::sync::watch::channel(plan.flood_batches == 0);
    let after_flooder = move || {
        let mut rx = flooder_rx.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|d| *d)).await;
        }
    };
    let arrived_tx = Arc::new(arrived_tx);
    let all_joined = move || {
        let mut rx = arrived_rx.clone();
        async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|n| *n >= joiners)).await;
        }
    };

    // (a) The flooding guest: joins, then floods while its reader tallies the notices.
    if plan.flood_batches > 0 {
        let (url, budget, tally) = (url(room, ATTACKER), budget.clone(), flood_tally.clone());
        let events = plan.flood_events;
        let (arrival, wait) = (Arrival(arrived_tx.clone()), all_joined());
        floods.push(tokio::spawn(async move {
            let mut ws = match connect(ATTACKER_ADDR, &url, false).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = flooder_tx.send(true);
                    bump(&mut tally.lock().unwrap_or_else(|p| p.into_inner()), e, 1);
                    return (0, None);
                }
            };
            let joined = join(&mut ws, password, None).await;
            let _ = flooder_tx.send(true);
            if let Err(e) = joined {
                bump(
                    &mut tally.lock().unwrap_or_else(|p| p.into_inner()),
                    format!("join: {e}"),
                    1,
                );
                return (0, None);
            }
            drop(arrival);
            let (mut sink, stream) = ws.split();
            let reader = tokio::spawn(watch(stream, until, tally));
            wait.await;
            let out = flood(&mut sink, until, &budget, events).await;
            let _ = reader.await;
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            out
        }));
    }

    // (b) Extra sockets with the same token, all at once.
    let mut extras = Vec::new();
    for _ in 0..plan.extra_sockets {
        let (url, budget, tally) = (url(room, ATTACKER), budget.clone(), extra_tally.clone());
        let (events, floods_too) = (
            plan.flood_events,
            plan.extra_flood && plan.flood_batches > 0,
        );
        let (arrival, first) = (Arrival(arrived_tx.clone()), after_flooder());
        extras.push(tokio::spawn(async move {
            first.await;
            let note = |l: String| bump(&mut tally.lock().unwrap_or_else(|p| p.into_inner()), l, 1);
            let mut ws = match connect(ATTACKER_ADDR, &url, false).await {
                Ok(ws) => ws,
                Err(e) => {
                    note(e);
                    return (0, None);
                }
            };
            note("upgrade accepted".into());
            let joined = join(&mut ws, password, None).await;
            drop(arrival);
            match joined {
                Ok(()) => note("join: Joined".into()),
                Err(e) => {
                    note(format!("join: {e}"));
                    if e.starts_with("closed") || e.starts_with("connection") {
                        return (0, None);
                    }
                }
            }
            let (mut sink, stream) = ws.split();
            let reader = tokio::spawn(watch(stream, until, tally.clone()));
            let out = if floods_too {
                flood(&mut sink, until, &budget, events).await
            } else {
                (0, None)
            };
            let _ = reader.await;
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            out
        }));
    }

    // (c) The password spray.
    let spray = match (plan.spray, next_door) {
        (Spray::Off, _) | (Spray::NextDoor, None) => None,
        (Spray::Same, _) => Some(url(room, SPRAYER)),
        (Spray::NextDoor, Some(n)) => Some(url(&n.room, SPRAYER)),
    }
    .map(|u| {
        let wait = all_joined();
        let max = plan.spray_max;
        tokio::spawn(async move {
            wait.await;
            spray_run(u, max, until).await
        })
    });

    // (d) Slow readers.
    let slow: Vec<_> = (0..plan.slow_readers)
        .map(|k| {
            let u = url(room, &format!("guest:bench-attack-slow-{k}"));
            let (arrival, first) = (Arrival(arrived_tx.clone()), after_flooder());
            tokio::spawn(async move {
                first.await;
                slow_reader(u, password, until, arrival).await
            })
        })
        .collect();

    let mut report = Report::default();
    let mut last: Option<Instant> = None;
    for h in floods.into_iter().chain(extras) {
        if let Ok((n, l)) = h.await {
            report.flood_sent += n;
            last = last.max(l);
        }
    }
    report.flood_time = last.map(|l| l - started).unwrap_or_default();
    report.flood = std::mem::take(&mut *flood_tally.lock().unwrap_or_else(|p| p.into_inner()));
    report.extra = std::mem::take(&mut *extra_tally.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(h) = spray
        && let Ok((sent, tally)) = h.await
    {
        report.spray_sent = sent;
        report.spray = tally;
    }
    for h in slow {
        if let Ok((l, bytes)) = h.await {
            bump(&mut report.slow, l, 1);
            report.slow_backlog_bytes += bytes;
        }
    }
    report
}

/// One joining component's answer is in (dropped after its join attempt, or on giving up).
struct Arrival(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Arrival {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n += 1);
    }
}

/// Wrong passwords as fast as the server answers ([`SPRAY_WINDOW`] in flight), until `until`
/// or `max` guesses. A guess unanswered for 1 s is given up on (a server may drop them).
async fn spray_run(url: String, max: u64, until: Instant) -> (u64, Tally) {
    let mut tally = Tally::new();
    let mut ws = match connect(ATTACKER_ADDR, &url, false).await {
        Ok(ws) => ws,
        Err(e) => {
            bump(&mut tally, e, 1);
            return (0, tally);
        }
    };
    let (mut sent, mut in_flight) = (0u64, 0u64);
    let ended = loop {
        if Instant::now() >= until {
            break "open at end".to_owned();
        }
        while in_flight < SPRAY_WINDOW && sent < max {
            if ws
                .feed(join_frame(&format!("guess-{sent}"), None))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
            in_flight += 1;
        }
        if ws.flush().await.is_err() {
            break "connection error".to_owned();
        }
        let wait = (Instant::now() + Duration::from_secs(1)).min(until);
        match tokio::time::timeout_at(wait.into(), ws.next()).await {
            Err(_) => {
                if in_flight > 0 && Instant::now() < until {
                    bump(&mut tally, "guesses unanswered after 1 s", in_flight);
                }
                in_flight = 0;
                if sent >= max && Instant::now() < until {
                    // Every guess spent: wait out the phase with the socket open.
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            Ok(None) => break "closed (no code)".to_owned(),
            Ok(Some(Err(_))) => break "connection error".to_owned(),
            Ok(Some(Ok(Message::Close(f)))) => break close_label(f.as_ref()),
            Ok(Some(Ok(Message::Binary(b)))) => {
                let msg = ServerMessage::decode(&b[..]).ok().and_then(|m| m.msg);
                if let Some(l) = msg.as_ref().and_then(label) {
                    let answer = matches!(
                        msg,
                        Some(server_message::Msg::JoinFailed(_) | server_message::Msg::Error(_))
                    );
                    if answer {
                        in_flight = in_flight.saturating_sub(1);
                    }
                    bump(&mut tally, l, 1);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    };
    bump(&mut tally, ended, 1);
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    (sent, tally)
}

/// A guest that joins and never reads until `until`; then reads for up to 3 s to learn whether
/// the server closed it (its close frame) or still had a backlog for it. Returns a label and
/// the bytes read meanwhile.
async fn slow_reader(
    url: String,
    password: &str,
    until: Instant,
    arrival: Arrival,
) -> (String, u64) {
    let mut ws = match connect(ATTACKER_ADDR, &url, true).await {
        Ok(ws) => ws,
        Err(e) => return (e, 0),
    };
    let joined = join(&mut ws, password, None).await;
    drop(arrival);
    if let Err(e) = joined {
        return (format!("join: {e}"), 0);
    }
    tokio::time::sleep_until(until.into()).await;
    let drain_end = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut bytes = 0u64;
    let label = loop {
        match tokio::time::timeout_at(drain_end, ws.next()).await {
            Err(_) => break "not closed by the server (open 3 s after the attack)".to_owned(),
            Ok(None) => break "closed (no code)".to_owned(),
            Ok(Some(Err(_))) => break "connection error".to_owned(),
            Ok(Some(Ok(Message::Close(f)))) => break close_label(f.as_ref()),
            Ok(Some(Ok(m))) => bytes += m.len() as u64,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    (label, bytes)
}
