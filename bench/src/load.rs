//! The fan-out load: clients, their send schedule, and what they measure.

use futures_util::{SinkExt, StreamExt};
use piano_core::proto::{
    self, ClientMessage, ServerMessage, client_message, note_event, server_message,
};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, Clone)]
pub struct Load {
    pub rooms: usize,
    pub players: usize,
    /// Batches per second per sending player.
    pub rate: u32,
    /// How many players of each room send (the first ones); the rest only listen.
    pub senders: usize,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    pub expected: u64,
    pub latencies_us: Vec<u64>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn delivered_per_sec(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.latencies_us.len() as u64)
    }

    /// Latency percentile in milliseconds (q = 1.0 is the maximum).
    pub fn percentile(&self, q: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i] as f64 / 1000.0)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent_batches": self.sent,
            "expected_deliveries": self.expected,
            "delivered": self.latencies_us.len(),
            "delivered_per_sec": self.delivered_per_sec(),
            "lost": self.lost(),
            "latency_ms": {
                "p50": self.percentile(0.50), "p95": self.percentile(0.95),
                "p99": self.percentile(0.99), "max": self.percentile(1.0),
            },
        })
    }
}

/// Which batch this is: who sent it and its sequence number, carried in the events themselves
/// so the bare baseline (which relays bytes untouched) is measured exactly like the real server.
fn batch(player: usize, seq: u32) -> proto::NoteBatch {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let cc = |control: u32, value: u32| proto::NoteEvent {
        delay: 0,
        kind: Some(note_event::Kind::ControlChange(proto::ControlChange {
            control,
            value,
            channel: 0,
        })),
    };
    proto::NoteBatch {
        time: now,
        events: vec![
            proto::NoteEvent {
                delay: 0,
                kind: Some(note_event::Kind::NoteOn(proto::NoteOn {
                    note: seq % 128,
                    velocity: 1 + (seq / 128) % 127,
                    channel: 0,
                })),
            },
            cc(20, (seq / (128 * 127)) % 128),
            cc(21, (player % 128) as u32),
            cc(22, (player / 128 % 128) as u32),
        ],
        sender_id: String::new(),
    }
}

fn identify(b: &proto::NoteBatch) -> Option<(usize, u32)> {
    let mut it = b.events.iter().map(|e| e.kind.as_ref());
    let (
        Some(Some(note_event::Kind::NoteOn(n))),
        Some(Some(note_event::Kind::ControlChange(hi))),
        Some(Some(note_event::Kind::ControlChange(p0))),
        Some(Some(note_event::Kind::ControlChange(p1))),
    ) = (it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    let seq = n.note + 128 * (n.velocity - 1) + 128 * 127 * hi.value;
    Some((p0.value as usize + 128 * p1.value as usize, seq))
}

type Sent = Arc<Mutex<HashMap<(usize, usize, u32), Instant>>>;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Join-or-create a room of `capacity` and wait for Joined (Welcome comes first); `None` when
/// the room refused or the socket ended.
async fn join(ws: &mut Ws, capacity: u32) -> Option<()> {
    let settings = proto::UpdateSettings {
        max_players: Some(capacity),
        ..Default::default()
    };
    let join = proto::Join {
        password: String::new(),
        create_settings: Some(settings),
    };
    let join = ClientMessage {
        msg: Some(client_message::Msg::Join(join)),
    };
    ws.send(Message::Binary(join.encode_to_vec().into()))
        .await
        .ok()?;
    loop {
        let Message::Binary(b) = ws.next().await?.ok()? else {
            continue;
        };
        match ServerMessage::decode(&b[..]).ok().and_then(|m| m.msg) {
            Some(server_message::Msg::Joined(_)) => return Some(()),
            Some(server_message::Msg::JoinFailed(_)) => return None,
            _ => {}
        }
    }
}

/// Runs the load against `url(room, player)`; `protocol` is true for the real server (Welcome,
/// Join, ServerMessage frames), false for the baseline (raw relayed ClientMessage frames).
pub async fn run(load: &Load, url: impl Fn(usize, usize) -> String, protocol: bool) -> Outcome {
    let sent: Sent = Arc::default();
    let mut sockets = Vec::new();
    for room in 0..load.rooms {
        for player in 0..load.players {
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(url(room, player), None, true)
                    .await
                    .expect("bench client connects");
            if protocol {
                // Room for everyone (the default capacity is 20; above 99 the creator must be an
                // admin, which the bench's tokens are).
                join(&mut ws, load.players.max(99) as u32)
                    .await
                    .expect("bench client joins");
            }
            sockets.push((room, player, ws));
        }
    }

    let started = Instant::now();
    let deadline = started + load.duration;
    let interval = Duration::from_secs_f64(1.0 / f64::from(load.rate.max(1)));
    let mut tasks = Vec::new();
    for (room, player, ws) in sockets {
        let (mut sink, mut stream) = ws.split();
        let sent_w = sent.clone();
        let sends = player < load.senders;
        let sender = tokio::spawn(async move {
            if !sends {
                return (0, sink);
            }
            // Spread the players' send times over the interval.
            tokio::time::sleep(interval.mul_f64((player as f64 * 0.37) % 1.0)).await;
            let mut tick = tokio::time::interval(interval);
            let mut seq = 0u32;
            let mut count = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                let bytes = ClientMessage {
                    msg: Some(client_message::Msg::Notes(batch(player, seq))),
                }
                .encode_to_vec();
                if let Ok(mut s) = sent_w.lock() {
                    s.insert((room, player, seq), Instant::now());
                }
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
                seq += 1;
                count += 1;
            }
            (count, sink)
        });
        let sent_r = sent.clone();
        let receiver = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let end = deadline + Duration::from_secs(2);
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(end.into(), stream.next()).await {
                let Message::Binary(b) = msg else { continue };
                let received = Instant::now();
                let batch = if protocol {
                    match ServerMessage::decode(&b[..]).ok().and_then(|m| m.msg) {
                        Some(server_message::Msg::Notes(n)) => n,
                        _ => continue,
                    }
                } else {
                    match ClientMessage::decode(&b[..]).ok().and_then(|m| m.msg) {
                        Some(client_message::Msg::Notes(n)) => n,
                        _ => continue,
                    }
                };
                if let Some((from, seq)) = identify(&batch) {
                    let at = sent_r
                        .lock()
                        .ok()
                        .and_then(|s| s.get(&(room, from, seq)).copied());
                    if let Some(at) = at {
                        latencies.push(received.duration_since(at).as_micros() as u64);
                    }
                }
            }
            latencies
        });
        tasks.push((sender, receiver));
    }
    let mut out = Outcome::default();
    let mut sinks = Vec::new();
    for (s, r) in tasks {
        if let Ok((count, sink)) = s.await {
            out.sent += count;
            sinks.push(sink);
        }
        if let Ok(l) = r.await {
            out.latencies_us.extend(l);
        }
    }
    out.elapsed = load.duration;
    out.expected = out.sent * (load.players.saturating_sub(1)) as u64;
    for mut sink in sinks {
        let _ = sink.close().await;
    }
    out
}

/// Join storm: `rate` new players per second for `seconds`, into rooms of at most 50. Measures
/// the time from starting to connect to having joined (the server's Joined, or for the baseline
/// the WebSocket handshake), and counts failures. Connections stay open to the end.
pub async fn join_storm(
    rate: u32,
    seconds: u64,
    url: impl Fn(usize, usize) -> String,
    protocol: bool,
) -> Outcome {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = rate as usize * seconds as usize;
    let mut tick = tokio::time::interval(interval);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let target = url(i / 50, i % 50);
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(target, None, true)
                .await
                .ok()?;
            if protocol {
                join(&mut ws, 99).await?;
            }
            Some((t0.elapsed().as_micros() as u64, ws))
        }));
    }
    let mut out = Outcome {
        sent: total as u64,
        expected: total as u64,
        ..Default::default()
    };
    let mut open = Vec::new();
    for t in tasks {
        if let Ok(Some((us, ws))) = t.await {
            out.latencies_us.push(us);
            open.push(ws);
        }
    }
    out.elapsed = started.elapsed();
    for mut ws in open {
        let _ = ws.close(None).await;
    }
    out
}
