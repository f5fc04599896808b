//! "Room under attack" (issue 13): one room of P honest players, each sending F note batches
//! per second (the fan-out scenario's batches and latency: send to receive, one clock), measured
//! for S seconds without an attacker and then S seconds with one (`attacker.rs`), on one server
//! in one invocation. The honest players stay connected throughout; a batch belongs to the phase
//! it was sent in. Each honest player comes from its own loopback address (127.0.0.10 and up),
//! the attacker from 127.0.0.2, so per-address limits see different networks.
//!
//! Timeline: joins, settle (1 s + 2 ms per player), calm phase (S), a 2 s gap (the calm
//! backlog drains; its batches are not counted), attack phase (S; every attack component starts
//! at its start and stops at its end), then the honest players keep reading until every batch of
//! the attack phase arrived or 10 s passed. A batch still missing then is lost, and counts as
//! infinitely late in the percentiles (so a p99 cannot look good by losing the slow tail).

use crate::attacker::{self, GuestUrl, Plan, Report, Spray, Tally};
use futures_util::{SinkExt, StreamExt};
use piano_core::proto::{ClientMessage, ServerMessage, client_message, server_message};
use prost::Message as _;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Between the phases: long enough for the calm phase's batches to arrive.
const GAP: Duration = Duration::from_secs(2);
/// How long the honest players wait for the attack phase's last batches after it ended.
const DRAIN: Duration = Duration::from_secs(10);
/// Frames above this size are not an honest batch (4 events, ~60 bytes with the sender's id):
/// counted as the attacker's, not decoded, so the load generator spends little on them.
const HONEST_FRAME_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct Config {
    pub players: usize,
    pub rate: u32,
    pub phase: Duration,
    pub plan: Plan,
}

/// One phase's honest traffic and the server's (and this process's) use of the machine.
#[derive(Debug, Default)]
pub struct Phase {
    pub sent: u64,
    pub expected: u64,
    pub latencies_us: Vec<u64>,
    /// CPU seconds (user + system) the server's processes and this load generator used.
    pub server_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub rss_start_kib: u64,
    pub rss_max_kib: u64,
    /// Frames larger than an honest batch the honest players received (the attacker's).
    pub foreign_frames: u64,
}

impl Phase {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.latencies_us.len() as u64)
    }

    /// Latency percentile in ms over the expected deliveries, a lost one counting as infinitely
    /// late (`f64::INFINITY` when the percentile falls among them); q = 1.0 is the maximum.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let n = self.expected.max(self.latencies_us.len() as u64) as usize;
        if n == 0 {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        Some(v.get(i).map_or(f64::INFINITY, |us| *us as f64 / 1000.0))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let p = |q| self.percentile(q).filter(|v: &f64| v.is_finite());
        serde_json::json!({
            "sent_batches": self.sent,
            "expected_deliveries": self.expected,
            "delivered": self.latencies_us.len(),
            "lost": self.lost(),
            "latency_ms": { "p50": p(0.50), "p95": p(0.95), "p99": p(0.99), "max": p(1.0) },
            "latency_note": "over expected deliveries; null = the percentile falls among lost ones",
            "server_cpu_seconds": self.server_cpu_s,
            "bench_cpu_seconds": self.bench_cpu_s,
            "server_rss_start_kib": self.rss_start_kib,
            "server_rss_max_kib": self.rss_max_kib,
            "attacker_frames_received_by_honest_players": self.foreign_frames,
        })
    }
}

#[derive(Debug, Default)]
pub struct Measured {
    pub calm: Phase,
    pub attack: Phase,
    /// How honest sockets ended before the drain was over ("closed 1013": count).
    pub honest_closes: Tally,
    pub attacker: Report,
    /// Set when the run could not be measured (honest players could not join).
    pub failed: Option<String>,
    /// Joins the honest players retried after `JoinFailed RATE_LIMITED` (before the phases).
    pub honest_join_retries: u64,
}

impl Measured {
    /// p99 under attack / p99 without (∞ when the attack's p99 fell among lost batches).
    pub fn ratio(&self) -> Option<f64> {
        match (self.attack.percentile(0.99), self.calm.percentile(0.99)) {
            (Some(a), Some(c)) if c > 0.0 => Some(a / c),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "without_attack": self.calm.to_json(),
            "with_attack": self.attack.to_json(),
            "p99_ratio": self.ratio().filter(|r| r.is_finite()),
            "goal_met": self.ratio().map(|r| r <= 2.0),
            "honest_sockets_ended": self.honest_closes,
            "honest_join_retries_rate_limited": self.honest_join_retries,
            "attacker": self.attacker.to_json(),
            "failed": self.failed,
        })
    }
}

/// (player, seq) → (sent at, phase: 0 calm, 1 attack, 2 neither).
type Sent = Arc<Mutex<HashMap<(usize, u32), (Instant, u8)>>>;

/// CPU seconds (user + system) of these processes.
fn cpu(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| crate::procs::cpu_seconds(*p))
        .sum()
}

/// Runs the scenario against one server: `url(room, user)` gives a guest-only token's ws URL;
/// `pids` are the server's processes (CPU and memory are read from `/proc`).
pub async fn run(cfg: &Config, url: GuestUrl, pids: &[u32], room_base: &str) -> Measured {
    let mut out = Measured::default();
    let room = format!("{room_base}-0");
    let password = if cfg.plan.spray == Spray::Same {
        attacker::PASSWORD
    } else {
        ""
    };
    let next_door = match attacker::prepare(&cfg.plan, &url, room_base).await {
        Ok(n) => n,
        Err(e) => {
            out.failed = Some(e);
            return out;
        }
    };
    let mut sockets = Vec::new();
    let join_retries = AtomicU64::new(0);
    for player in 0..cfg.players {
        let source = Ipv4Addr::new(127, 0, 0, 10 + (player % 240) as u8);
        let target = url(&room, &format!("guest:bench-honest-{player}"));
        let joined = async {
            let mut ws = attacker::connect(source, &target, false).await?;
            attacker::join_patiently(
                &mut ws,
                password,
                Some(attacker::create_settings(password)),
                &join_retries,
            )
            .await?;
            Ok::<_, String>(ws)
        }
        .await;
        match joined {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                out.failed = Some(format!("honest player {player} could not join: {e}"));
                return out;
            }
        }
    }
    out.honest_join_retries = join_retries.load(Ordering::Relaxed);

    let settle = Duration::from_millis(1000 + 2 * cfg.players as u64);
    let len = cfg.phase;
    let t0 = Instant::now() + settle;
    let t1 = t0 + len + GAP;
    let stop = t1 + len;
    let phase_of = move |at: Instant| -> u8 {
        if at >= t0 && at < t0 + len {
            0
        } else if at >= t1 && at < stop {
            1
        } else {
            2
        }
    };
    let sent: Sent = Arc::default();
    let delivered = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let foreign = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let interval = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (player, ws) in sockets.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let sent_w = sent.clone();
        senders.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + interval.mul_f64((player as f64 * 0.37) % 1.0)).into())
                .await;
            let mut tick = tokio::time::interval(interval);
            let mut counts = [0u64; 3];
            let mut seq = 0u32;
            while Instant::now() < stop {
                tick.tick().await;
                let bytes = ClientMessage {
                    msg: Some(client_message::Msg::Notes(crate::load::batch(player, seq))),
                    ..Default::default()
                }
                .encode_to_vec();
                let now = Instant::now();
                let phase = phase_of(now);
                if let Ok(mut s) = sent_w.lock() {
                    s.insert((player, seq), (now, phase));
                }
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
                counts[phase as usize] += 1;
                seq += 1;
            }
            (counts, sink)
        }));
        let (sent_r, delivered, foreign) = (sent.clone(), delivered.clone(), foreign.clone());
        let mut done = done_rx.clone();
        receivers.push(tokio::spawn(async move {
            let mut lat: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
            let end = stop + DRAIN;
            let ended = loop {
                let msg = tokio::select! {
                    m = tokio::time::timeout_at(end.into(), stream.next()) => m,
                    _ = done.wait_for(|d| *d) => break None,
                };
                let b = match msg {
                    Err(_) => break None,
                    Ok(None) => break Some("ended (no close frame)".to_owned()),
                    Ok(Some(Err(_))) => break Some("connection error".to_owned()),
                    Ok(Some(Ok(Message::Close(f)))) => {
                        break Some(match f {
                            Some(f) => format!("closed {}", u16::from(f.code)),
                            None => "closed (no code)".into(),
                        });
                    }
                    Ok(Some(Ok(Message::Binary(b)))) => b,
                    Ok(Some(Ok(_))) => continue,
                };
                let received = Instant::now();
                if b.len() > HONEST_FRAME_MAX {
                    let p = phase_of(received).min(1) as usize;
                    foreign[p].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(server_message::Msg::Notes(batch)) =
                    ServerMessage::decode(&b[..]).ok().and_then(|m| m.msg)
                else {
                    continue;
                };
                let Some((from, seq)) = crate::load::identify(&batch) else {
                    foreign[phase_of(received).min(1) as usize].fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let at = sent_r
                    .lock()
                    .ok()
                    .and_then(|s| s.get(&(from, seq)).copied());
                if let Some((at, phase @ 0..=1)) = at {
                    lat[phase as usize].push(received.duration_since(at).as_micros() as u64);
                    delivered[phase as usize].fetch_add(1, Ordering::Relaxed);
                }
            };
            (lat, ended)
        }));
    }

    // The machine's view: CPU at each phase boundary, the server's memory every 250 ms.
    let pids_m = pids.to_vec();
    let monitor = tokio::spawn(async move {
        let mut marks = Vec::new();
        let mut rss = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut bounds = vec![stop, t1, t0 + len, t0];
        while Instant::now() < stop + Duration::from_millis(300) {
            tick.tick().await;
            let now = Instant::now();
            rss.push((now, crate::procs::total_rss_kib(&pids_m)));
            while bounds.last().is_some_and(|b| now >= *b) {
                bounds.pop();
                marks.push((cpu(&pids_m), crate::procs::cpu_seconds(std::process::id())));
            }
        }
        (marks, rss)
    });

    // The attack, in its phase.
    tokio::time::sleep_until(t1.into()).await;
    let report = attacker::run(&cfg.plan, &url, &room, next_door.as_ref(), stop).await;
    drop(next_door);

    let mut sinks = Vec::new();
    let mut counts = [0u64; 3];
    for s in senders {
        if let Ok((c, sink)) = s.await {
            for i in 0..3 {
                counts[i] += c[i];
            }
            sinks.push(sink);
        }
    }
    let others = cfg.players.saturating_sub(1) as u64;
    let expected = [counts[0] * others, counts[1] * others];
    // Stop the drain early once everything arrived.
    let waiter = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let end = stop + DRAIN;
            while Instant::now() < end {
                if delivered[0].load(Ordering::Relaxed) >= expected[0]
                    && delivered[1].load(Ordering::Relaxed) >= expected[1]
                {
                    let _ = done_tx.send(true);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for r in receivers {
        if let Ok(([calm, attack], ended)) = r.await {
            out.calm.latencies_us.extend(calm);
            out.attack.latencies_us.extend(attack);
            if let Some(e) = ended {
                *out.honest_closes.entry(e).or_default() += 1;
            }
        }
    }
    waiter.abort();
    for mut sink in sinks {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    out.calm.sent = counts[0];
    out.attack.sent = counts[1];
    out.calm.expected = expected[0];
    out.attack.expected = expected[1];
    out.calm.foreign_frames = foreign[0].load(Ordering::Relaxed);
    out.attack.foreign_frames = foreign[1].load(Ordering::Relaxed);
    out.attacker = report;
    if let Ok((marks, rss)) = monitor.await {
        let phase_stats = |from: usize, to: usize, p: &mut Phase, span: (Instant, Instant)| {
            if let (Some(a), Some(b)) = (marks.get(from), marks.get(to)) {
                p.server_cpu_s = b.0 - a.0;
                p.bench_cpu_s = b.1.unwrap_or(0.0) - a.1.unwrap_or(0.0);
            }
            let inside: Vec<u64> = rss
                .iter()
                .filter(|(at, _)| *at >= span.0 && *at <= span.1 + Duration::from_millis(300))
                .map(|(_, k)| *k)
                .collect();
            p.rss_start_kib = inside.first().copied().unwrap_or(0);
            p.rss_max_kib = inside.iter().copied().max().unwrap_or(0);
        };
        phase_stats(0, 1, &mut out.calm, (t0, t0 + cfg.phase));
        phase_stats(2, 3, &mut out.attack, (t1, stop));
    }
    out
}
