//! The fidelity scenario's client: the web client's rules (`web/src/net.ts`) and the resume
//! contract's client side (`docs/resume.md` §5), in Rust.
//!
//! - Clock: Ping/Pong; of the last 16 samples, the one with the smallest round trip gives the
//!   offset (`offset = server_time + rtt/2 − now`); a ping at each open, then one every 250 ms
//!   for the first four seconds, then one every ten (as `startPings`). The client's clock is the
//!   system clock in microseconds (a browser's `Date.now()` is whole milliseconds: up to 1 ms
//!   more rounding there).
//! - A driver task owns the socket: it sends what the role queues, reads, answers pongs, and on a
//!   drop reconnects at once (then 250 ms, 500 ms, … up to 4 s), sends `Resume{token, last_seq}`
//!   and re-sends, in order, the numbered messages the room has not acknowledged; on
//!   `ResumeFailed` it sends `Join` and re-sends them all (the room then sees them as new).

use futures_util::{SinkExt, StreamExt};
use piano_core::proto::{self, ClientMessage, ServerMessage, client_message, server_message};
use prost::Message as _;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Clock samples kept, and pings in the first burst (as `web/src/net.ts`).
const CLOCK_SAMPLES: usize = 16;

type Ws = crate::load::Ws;

/// Milliseconds on the system clock, with microseconds.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[derive(Debug, Default)]
pub struct Clock {
    samples: VecDeque<(f64, f64)>,
    pub offset: f64,
    pub synced: bool,
}

impl Clock {
    fn pong(&mut self, client_time: f64, server_time: u64) {
        let now = now_ms();
        let rtt = now - client_time;
        self.samples
            .push_back((rtt, server_time as f64 + rtt / 2.0 - now));
        if self.samples.len() > CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        if let Some(best) = self.samples.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
            self.offset = best.1;
            self.synced = true;
        }
    }
}

/// What a driver saw, for the report.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Sockets that ended under us (not closed by us).
    pub drops: u32,
    pub resumed: u32,
    /// `Resumed{complete: false}`: a snapshot instead of the missed messages.
    pub snapshots: u32,
    /// `ResumeFailed`, then a new `Join`.
    pub rejoined: u32,
    /// Numbered messages sent again after a resume or rejoin.
    pub resent: u32,
    /// Drop to back in the room (Resumed or Joined), ms.
    pub reconnect_ms: Vec<f64>,
    /// `NotesDropped` notices (the quota, the budgets): events the room refused.
    pub notes_refused: u64,
    pub errors: Vec<String>,
}

/// What the role hands the driver.
pub enum Out {
    /// A message numbered for re-sending (note batches).
    Numbered(client_message::Msg),
}

pub struct Client {
    pub clock: Arc<Mutex<Clock>>,
    pub out: mpsc::UnboundedSender<Out>,
    /// Note batches received: (arrival on our clock in ms, the batch).
    pub notes: mpsc::UnboundedReceiver<(f64, proto::NoteBatch)>,
    pub driver: tokio::task::JoinHandle<Stats>,
}

struct Driver {
    url: String,
    ws: Option<Ws>,
    token: String,
    last_seq: u64,
    next_client_seq: u64,
    unacked: VecDeque<(u64, Vec<u8>)>,
    clock: Arc<Mutex<Clock>>,
    notes: mpsc::UnboundedSender<(f64, proto::NoteBatch)>,
    stats: Stats,
}

fn encode(msg: client_message::Msg, seq: u64) -> Vec<u8> {
    ClientMessage {
        msg: Some(msg),
        seq,
    }
    .encode_to_vec()
}

fn join_msg() -> client_message::Msg {
    client_message::Msg::Join(proto::Join {
        password: String::new(),
        create_settings: Some(proto::UpdateSettings {
            max_players: Some(99),
            ..Default::default()
        }),
    })
}

/// Connects, joins (creating the room), and starts the driver.
pub async fn start(url: String) -> Result<Client, String> {
    let clock = Arc::new(Mutex::new(Clock::default()));
    let (notes_tx, notes) = mpsc::unbounded_channel();
    let (out, out_rx) = mpsc::unbounded_channel();
    let mut d = Driver {
        url,
        ws: None,
        token: String::new(),
        last_seq: 0,
        next_client_seq: 1,
        unacked: VecDeque::new(),
        clock: clock.clone(),
        notes: notes_tx,
        stats: Stats::default(),
    };
    let (ws, _) = tokio_tungstenite::connect_async(&d.url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    d.ws = Some(ws);
    d.enter(false).await?;
    let driver = tokio::spawn(d.run(out_rx));
    Ok(Client {
        clock,
        out,
        notes,
        driver,
    })
}

impl Driver {
    async fn send(&mut self, frame: Vec<u8>) -> bool {
        match self.ws.as_mut() {
            Some(ws) => ws.send(Message::Binary(frame.into())).await.is_ok(),
            None => false,
        }
    }

    async fn ping(&mut self) -> bool {
        let ping = client_message::Msg::Ping(proto::Ping {
            client_time: now_ms(),
        });
        self.send(encode(ping, 0)).await
    }

    /// Gets this socket into the room: `Resume` when we hold a token, else (or when refused)
    /// `Join`. Messages after the answer (a resume's replay) are
    /// left for the main loop.
    async fn enter(&mut self, resume: bool) -> Result<(), String> {
        let mut resuming = resume && !self.token.is_empty();
        let first = if resuming {
            client_message::Msg::Resume(proto::Resume {
                token: self.token.clone(),
                last_seq: self.last_seq,
            })
        } else {
            join_msg()
        };
        if !self.send(encode(first, 0)).await {
            return Err("send failed".into());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ws = self.ws.as_mut().ok_or("no socket")?;
            let frame = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| "no answer to Join/Resume in 10 s".to_owned())?
                .ok_or("socket ended")?
                .map_err(|e| e.to_string())?;
            let Message::Binary(b) = frame else { continue };
            let Ok(m) = ServerMessage::decode(&b[..]) else {
                continue;
            };
            match m.msg {
                Some(server_message::Msg::Joined(j)) => {
                    self.token = j.resume_token;
                    self.last_seq = self.last_seq.max(j.seq);
                    if resume {
                        // A new participant: the room has none of our numbered messages.
                        self.resend(0).await;
                    }
                    return Ok(());
                }
                Some(server_message::Msg::Resumed(r)) if resuming => {
                    self.token = r.resume_token;
                    self.stats.resumed += 1;
                    if !r.complete {
                        self.stats.snapshots += 1;
                        if let Some(j) = &r.snapshot {
                            self.last_seq = self.last_seq.max(j.seq);
                        }
                    }
                    self.resend(r.last_client_seq).await;
                    return Ok(());
                }
                Some(server_message::Msg::ResumeFailed(f)) if resuming => {
                    self.stats.rejoined += 1;
                    self.stats.errors.push(format!(
                        "resume failed: {:?} {}",
                        f.reason(),
                        f.message
                    ));
                    resuming = false;
                    if !self.send(encode(join_msg(), 0)).await {
                        return Err("send failed".into());
                    }
                }
                Some(server_message::Msg::JoinFailed(f)) => {
                    return Err(format!("join failed: {f:?}"));
                }
                Some(server_message::Msg::Error(e)) => {
                    self.stats.errors.push(format!("error: {}", e.message));
                }
                _ => {}
            }
        }
    }

    /// Re-sends, in order, what the room has not processed (client seq above `after`).
    async fn resend(&mut self, after: u64) {
        self.unacked.retain(|(seq, _)| *seq > after);
        let frames: Vec<Vec<u8>> = self.unacked.iter().map(|(_, f)| f.clone()).collect();
        for f in frames {
            self.stats.resent += 1;
            if !self.send(f).await {
                return;
            }
        }
    }

    /// Until the role drops its sender: send, read, ping; reconnect and resume on a drop.
    async fn run(mut self, mut out: mpsc::UnboundedReceiver<Out>) -> Stats {
        let mut ping_tick = tokio::time::interval(Duration::from_millis(250));
        let mut since_open = 0u32;
        self.ping().await;
        loop {
            let ws = match self.ws.as_mut() {
                Some(ws) => ws,
                None => {
                    self.reconnect().await;
                    since_open = 0;
                    self.ping().await;
                    continue;
                }
            };
            let broken = tokio::select! {
                o = out.recv() => match o {
                    Some(Out::Numbered(msg)) => {
                        let seq = self.next_client_seq;
                        self.next_client_seq += 1;
                        let frame = encode(msg, seq);
                        self.unacked.push_back((seq, frame.clone()));
                        // Kept (bounded as docs/resume.md says) until a Pong acknowledges it.
                        if self.unacked.len() > 1024 {
                            self.unacked.pop_front();
                        }
                        !self.send(frame).await
                    }
                    None => {
                        if let Some(mut ws) = self.ws.take() {
                            let _ = ws.close(None).await;
                        }
                        return self.stats;
                    }
                },
                m = ws.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        self.read(&b);
                        false
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => true,
                    Some(Ok(_)) => false,
                },
                _ = ping_tick.tick() => {
                    since_open += 1;
                    (since_open < CLOCK_SAMPLES as u32 || since_open.is_multiple_of(40))
                        && !self.ping().await
                }
            };
            if broken {
                self.ws = None;
            }
        }
    }

    fn read(&mut self, b: &[u8]) {
        let arrival = now_ms();
        let Ok(m) = ServerMessage::decode(b) else {
            return;
        };
        self.last_seq = self.last_seq.max(m.seq);
        match m.msg {
            Some(server_message::Msg::Notes(n)) => {
                let _ = self.notes.send((arrival, n));
            }
            Some(server_message::Msg::Pong(p)) => {
                if let Ok(mut c) = self.clock.lock() {
                    c.pong(p.client_time, p.server_time);
                }
                self.unacked.retain(|(seq, _)| *seq > p.last_client_seq);
            }
            Some(server_message::Msg::NotesDropped(d)) => {
                self.stats.notes_refused += u64::from(d.dropped);
            }
            Some(server_message::Msg::Error(e)) => {
                self.stats.errors.push(format!("error: {}", e.message));
            }
            _ => {}
        }
    }

    /// After a drop: a new socket, then Resume (or Join), at once and then with backoff.
    async fn reconnect(&mut self) {
        self.stats.drops += 1;
        let dropped = now_ms();
        let mut wait = Duration::ZERO;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).clamp(Duration::from_millis(250), Duration::from_secs(4));
            let Ok((ws, _)) = tokio_tungstenite::connect_async(&self.url).await else {
                continue;
            };
            self.ws = Some(ws);
            match self.enter(true).await {
                Ok(_) => {
                    self.stats.reconnect_ms.push(now_ms() - dropped);
                    return;
                }
                Err(e) => {
                    self.stats.errors.push(format!("reconnect: {e}"));
                    self.ws = None;
                }
            }
        }
    }
}
