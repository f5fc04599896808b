//! `bench fidelity` (issue 19): how faithfully a performance's timing reaches its listeners.
//!
//! A performer replays a MIDI file (`midi.rs`; the shipped piece by default, `--midi FILE` for
//! another) in real time, each event at its instant, through the web client's rules
//! (`fidelity_client.rs`): the first event opens a batch stamped with the server clock
//! (`time`), each event carries its `delay` from that in whole ms, and the batch goes out
//! `BATCH_MS` = 150 ms after its first event. N listeners rebuild each event's time as the web
//! client's `play()` does: `batch.time + delay − offset` is when it was played on their clock,
//! and they schedule it `LATENCY_MS` = 250 ms later (the playout buffer).
//!
//! Every process here reads one real clock, so the truth is known: a client's true offset to
//! the server is 0, and an event's **error** is (rebuilt time − the instant the performance
//! meant it, on the same clock); the constant buffer is not part of it. An event is **late** when
//! it arrives after its scheduled instant (rebuilt + 250 ms): the client would play it late, or
//! drop it if it was replayed after a resume. Lost, duplicated and reordered events are counted
//! per listener against what the performer sent (events are recognised by their batch's time and
//! place in it, which the performer records as it sends).
//!
//! Networks: `loopback` (straight to the server), `jitter` (each client through its own proxy
//! holding every chunk 20 ± 15 ms each way, order kept) and `cut` (each client through its own
//! proxy; the performer's connection is reset at 35% of the piece, listener 1's at 65%: the
//! clients resume as `docs/resume.md` says).

use crate::fidelity_client::{self as client, Out, Stats, now_ms};
use crate::midi::{self, Timed};
use crate::proxy::{self, Jitter, Proxy};
use crate::{Target, arg, arg_str, load, parse_targets, write_results};
use piano_core::proto::{self, client_message};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The web client's batching and playout buffer (sdk/src/connection.ts, sdk/src/scheduler.ts).
const BATCH_MS: f64 = 150.0;
const LATENCY_MS: f64 = BATCH_MS + 100.0;
const MAX_EVENTS: usize = 300;
const JITTER: Jitter = Jitter {
    mean_ms: 20.0,
    spread_ms: 15.0,
};
/// Goals (issue 19).
const LOOPBACK_P99_MS: f64 = 2.0;
const OFFSET_MAX_MS: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    Loopback,
    Jitter,
    Cut,
}

impl Network {
    fn key(self) -> &'static str {
        match self {
            Network::Loopback => "loopback",
            Network::Jitter => "jitter",
            Network::Cut => "cut",
        }
    }
}

/// One play of the piece on one target and network.
#[derive(Debug, Default)]
struct Trial {
    network: &'static str,
    events: usize,
    sent: usize,
    batches: usize,
    listeners: usize,
    /// |rebuilt − intended| per (listener, event), first arrival, µs.
    error_us: Vec<u64>,
    /// Mean of the signed errors, ms.
    error_mean_ms: f64,
    /// |offset| each time a client used its offset (stamping, rebuilding), µs.
    offset_us: Vec<u64>,
    /// Arrival − intended, µs.
    transit_us: Vec<u64>,
    /// The performer's own lateness in emitting (its timer), µs.
    emit_late_us: Vec<u64>,
    lost: usize,
    duplicated: usize,
    reordered: usize,
    late: usize,
    unknown: usize,
    resets: u64,
    stats: Vec<Stats>,
}

impl Trial {
    fn p(v: &[u64], q: f64) -> String {
        load::percentile_ms(v, q)
            .map(|v| format!("{v:.2}"))
            .unwrap_or("-".into())
    }

    fn goals(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let p99 = load::percentile_ms(&self.error_us, 0.99).unwrap_or(f64::INFINITY);
        if self.network == "loopback" && p99 > LOOPBACK_P99_MS {
            failed.push(format!("p99 {p99:.2} ms > {LOOPBACK_P99_MS} ms"));
        }
        if self.network != "loopback" && self.late > 0 {
            failed.push(format!(
                "{} late past the {LATENCY_MS} ms buffer",
                self.late
            ));
        }
        let off = load::percentile_ms(&self.offset_us, 1.0).unwrap_or(f64::INFINITY);
        if off > OFFSET_MAX_MS {
            failed.push(format!("offset {off:.2} ms > {OFFSET_MAX_MS} ms"));
        }
        if self.lost + self.duplicated + self.reordered + self.unknown > 0 {
            failed.push("events lost, duplicated or reordered".into());
        }
        if self.stats.iter().any(|s| s.notes_refused > 0) {
            failed.push("the room refused events (quota)".into());
        }
        failed
    }

    fn to_json(&self) -> serde_json::Value {
        let ms = |v: &[u64]| {
            serde_json::json!({
                "p50": load::percentile_ms(v, 0.5), "p99": load::percentile_ms(v, 0.99),
                "max": load::percentile_ms(v, 1.0),
            })
        };
        serde_json::json!({
            "events": self.events, "sent": self.sent, "batches": self.batches,
            "listeners": self.listeners, "error_ms": ms(&self.error_us),
            "error_mean_signed_ms": self.error_mean_ms, "offset_error_ms": ms(&self.offset_us),
            "transit_ms": ms(&self.transit_us), "performer_emit_late_ms": ms(&self.emit_late_us),
            "lost": self.lost, "duplicated": self.duplicated, "reordered": self.reordered,
            "late": self.late, "unknown": self.unknown, "connections_reset": self.resets,
            "clients": self.stats.iter().map(|s| serde_json::json!({
                "drops": s.drops, "resumed": s.resumed, "snapshots": s.snapshots,
                "rejoined": s.rejoined, "resent": s.resent, "reconnect_ms": s.reconnect_ms,
                "notes_refused": s.notes_refused, "errors": s.errors,
            })).collect::<Vec<_>>(),
            "goals_failed": self.goals(),
        })
    }
}

/// Waits until `t` (ms, system clock): sleeps to 2 ms before, then yields until it (tokio's
/// timer is millisecond-grained; the performer's instants should not be).
async fn wait_until(t: f64) {
    let d = t - now_ms();
    if d > 2.0 {
        tokio::time::sleep(Duration::from_micros(((d - 2.0) * 1000.0) as u64)).await;
    }
    while now_ms() < t {
        tokio::task::yield_now().await;
    }
}

/// (batch time, place in the batch) → event index: what the performer sent.
type Registry = Arc<Mutex<HashMap<(u64, usize), usize>>>;

struct Heard {
    error_ms: Vec<f64>,
    offset_us: Vec<u64>,
    transit_us: Vec<u64>,
    late: usize,
    duplicated: usize,
    reordered: usize,
    unknown: usize,
    seen: HashSet<usize>,
}

/// A listener: rebuilds each event's time until `stop`.
async fn listen(
    mut c: client::Client,
    registry: Registry,
    intended: Arc<Vec<f64>>,
    kinds: Arc<Vec<Timed>>,
    got: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Heard, client::Client) {
    let mut h = Heard {
        error_ms: Vec::new(),
        offset_us: Vec::new(),
        transit_us: Vec::new(),
        late: 0,
        duplicated: 0,
        reordered: 0,
        unknown: 0,
        seen: HashSet::new(),
    };
    let mut highest: Option<usize> = None;
    loop {
        let (arrival, batch) = tokio::select! {
            n = c.notes.recv() => match n { Some(n) => n, None => break },
            _ = stop.changed() => break,
        };
        let offset = c.clock.lock().map(|c| c.offset).unwrap_or(0.0);
        for (i, ev) in batch.events.iter().enumerate() {
            let id = registry
                .lock()
                .ok()
                .and_then(|r| r.get(&(batch.time, i)).copied());
            let Some(id) = id.filter(|id| Some(&kinds[*id].kind) == ev.kind.as_ref()) else {
                h.unknown += 1;
                continue;
            };
            if !h.seen.insert(id) {
                h.duplicated += 1;
                continue;
            }
            if highest.is_some_and(|hi| id < hi) {
                h.reordered += 1;
            }
            highest = highest.max(Some(id));
            let rebuilt = batch.time as f64 + f64::from(ev.delay) - offset;
            h.error_ms.push(rebuilt - intended[id]);
            h.offset_us.push((offset.abs() * 1000.0) as u64);
            h.transit_us
                .push(((arrival - intended[id]).max(0.0) * 1000.0) as u64);
            if arrival > rebuilt + LATENCY_MS {
                h.late += 1;
            }
        }
        got.store(h.seen.len(), Ordering::Relaxed);
    }
    (h, c)
}

/// Plays the piece once in room `room` of the target.
async fn play(
    piece: &Arc<Vec<Timed>>,
    url: &(dyn Fn(usize, usize) -> String + Sync),
    room: usize,
    listeners: usize,
    network: Network,
) -> Result<Trial, String> {
    let mut proxies: Vec<Proxy> = Vec::new();
    let mut urls = Vec::new();
    for player in 0..=listeners {
        let u = url(room, player);
        urls.push(match network {
            Network::Loopback => u,
            Network::Jitter | Network::Cut => {
                let jitter = (network == Network::Jitter).then_some(JITTER);
                let p = Proxy::start(proxy::upstream_of(&u), jitter, 0xf1de + player as u64).await;
                let through = p.url(&u);
                proxies.push(p);
                through
            }
        });
    }
    // The performer joins first: it creates the room and holds the crown (the owner's quota).
    let performer = client::start(urls[0].clone()).await?;
    let mut clients = Vec::new();
    for u in &urls[1..] {
        clients.push(client::start(u.clone()).await?);
    }
    // Joins settle and clocks take the web client's first burst (16 pings in 4 s).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let t0 = now_ms() + 200.0;
    let intended: Arc<Vec<f64>> =
        Arc::new(piece.iter().map(|e| t0 + e.at_us as f64 / 1000.0).collect());
    let registry: Registry = Arc::default();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let counts: Vec<Arc<AtomicUsize>> = (0..listeners).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(&counts)
        .map(|(c, got)| {
            tokio::spawn(listen(
                c,
                registry.clone(),
                intended.clone(),
                piece.clone(),
                got.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let duration = piece.last().map(|e| e.at_us as f64 / 1000.0).unwrap_or(0.0);
    // The cuts: the performer at 35% of the piece, listener 1 at 65%.
    let proxies = Arc::new(proxies);
    let cutter = (network == Network::Cut).then(|| {
        let proxies = proxies.clone();
        tokio::spawn(async move {
            for (who, at) in [(0, 0.35), (1, 0.65)] {
                wait_until(t0 + duration * at).await;
                if let Some(p) = proxies.get(who) {
                    eprintln!("bench: fidelity: cutting client {who}'s connection");
                    p.cut();
                }
            }
        })
    });

    // The performer: each event at its instant, batched as the web client batches.
    let mut batch: Option<(f64, Vec<proto::NoteEvent>, Vec<usize>, f64)> = None;
    let (mut sent, mut batches, mut next) = (0usize, 0usize, 0usize);
    let mut trial = Trial {
        network: network.key(),
        events: piece.len(),
        listeners,
        ..Default::default()
    };
    let flush = |b: (f64, Vec<proto::NoteEvent>, Vec<usize>, f64)| {
        let time = b.0.round() as u64;
        if let Ok(mut r) = registry.lock() {
            for (i, id) in b.2.iter().enumerate() {
                r.insert((time, i), *id);
            }
        }
        let n = b.2.len();
        let notes = proto::NoteBatch {
            time,
            events: b.1,
            sender_id: String::new(),
        };
        let _ = performer
            .out
            .send(Out::Numbered(client_message::Msg::Notes(notes)));
        n
    };
    loop {
        let due = intended.get(next).copied();
        let flush_at = batch.as_ref().map(|b| b.3);
        match (due, flush_at) {
            (None, None) => break,
            (Some(at), f) if f.is_none_or(|f| at <= f) => {
                wait_until(at).await;
                let emitted = now_ms();
                trial
                    .emit_late_us
                    .push(((emitted - at).max(0.0) * 1000.0) as u64);
                let offset = performer.clock.lock().map(|c| c.offset).unwrap_or(0.0);
                trial.offset_us.push((offset.abs() * 1000.0) as u64);
                // Stamped with the instant the event was played (as a MIDI input's timestamp
                // gives it), not when this busy machine got round to it: the error measures the
                // protocol and the clocks, `emit_late` this process's scheduling.
                let server_now = at + offset;
                let b = batch.get_or_insert_with(|| {
                    (server_now, Vec::new(), Vec::new(), emitted + BATCH_MS)
                });
                let delay = (server_now - b.0).round().clamp(0.0, 1000.0) as u32;
                b.1.push(proto::NoteEvent {
                    delay,
                    kind: Some(piece[next].kind),
                });
                b.2.push(next);
                next += 1;
                if b.1.len() >= MAX_EVENTS
                    && let Some(b) = batch.take()
                {
                    sent += flush(b);
                    batches += 1;
                }
            }
            (_, f) => {
                let f = f.unwrap_or_else(now_ms);
                tokio::time::sleep(Duration::from_micros(
                    ((f - now_ms()).max(0.0) * 1000.0) as u64,
                ))
                .await;
                if let Some(b) = batch.take() {
                    sent += flush(b);
                    batches += 1;
                }
            }
        }
    }
    if let Some(c) = cutter {
        let _ = c.await;
    }
    // Drain: every listener has every event, or 10 s (a resume in progress).
    let until = now_ms() + 10_000.0;
    while now_ms() < until && counts.iter().any(|c| c.load(Ordering::Relaxed) < sent) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let mut signed = Vec::new();
    for t in tasks {
        let Ok((h, c)) = t.await else { continue };
        trial.lost += sent.saturating_sub(h.seen.len());
        trial.duplicated += h.duplicated;
        trial.reordered += h.reordered;
        trial.late += h.late;
        trial.unknown += h.unknown;
        trial.offset_us.extend(h.offset_us);
        trial.transit_us.extend(h.transit_us);
        trial
            .error_us
            .extend(h.error_ms.iter().map(|e| (e.abs() * 1000.0) as u64));
        signed.extend(h.error_ms);
        drop(c.out);
        if let Ok(s) = c.driver.await {
            trial.stats.push(s);
        }
    }
    drop(performer.out);
    if let Ok(s) = performer.driver.await {
        trial.stats.insert(0, s);
    }
    trial.error_mean_ms = signed.iter().sum::<f64>() / signed.len().max(1) as f64;
    trial.sent = sent;
    trial.batches = batches;
    trial.resets = proxies
        .iter()
        .map(|p| p.resets.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    Ok(trial)
}

pub async fn main(args: &[String]) {
    let listeners = (arg(args, "--listeners", 8) as usize).clamp(1, 14);
    let path = arg_str(args, "--midi")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(midi::piece_path);
    let mut piece = midi::read(&path).unwrap_or_else(|e| {
        eprintln!("bench fidelity: {e}");
        std::process::exit(2);
    });
    let seconds = arg(args, "--seconds", 0);
    if seconds > 0 {
        piece.retain(|e| e.at_us < seconds * 1_000_000);
    }
    let piece = Arc::new(piece);
    let networks: Vec<Network> = arg_str(args, "--networks")
        .unwrap_or_else(|| "loopback,jitter,cut".into())
        .split(',')
        .filter_map(|n| match n.trim() {
            "loopback" => Some(Network::Loopback),
            "jitter" => Some(Network::Jitter),
            "cut" => Some(Network::Cut),
            _ => None,
        })
        .collect();
    let mut targets = parse_targets(args, "fallback,edge");
    // The baseline has no rooms, pongs or resumes.
    targets.retain(|t| *t != Target::Baseline);
    let load_avg = crate::load_average();
    let span = piece.last().map(|e| e.at_us as f64 / 1e6).unwrap_or(0.0);
    let mut t = format!(
        "### Timing fidelity: a {span:.0} s performance ({} events, `{}`) to {listeners} listeners\n\n\
         Machine: {}; load average at start {load_avg}. The performer batches as the web client \
         does (150 ms); listeners rebuild each event at batch time + delay − their clock offset \
         (min-RTT ping sample) and schedule it {LATENCY_MS} ms later. Error: rebuilt − the \
         instant the performance meant, one clock for all (true offset 0). Late: arrived after \
         its scheduled instant. Transit: arrival − the instant played (batching included). \
         Performer timer: how late this process got round to playing each event (not in the \
         error: events are stamped with their instant, as a MIDI input's timestamp). Networks: loopback; jitter, every client through a proxy \
         holding each chunk {} ± {} ms each way; cut, the performer's connection reset at 35% \
         and listener 1's at 65% (no close frame), the clients resuming.\n\n\
         | target | network | error p50 ms | p99 ms | max ms | offset error max ms | lost | duplicated | reordered | late | transit p99 ms | drops / resumed / rejoined | performer timer p99 ms | goals |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        piece.len(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        crate::machine(),
        JITTER.mean_ms,
        JITTER.spread_ms,
    );
    let mut json = serde_json::json!({
        "scenario": "fidelity", "machine": crate::machine(), "load_average_at_start": load_avg,
        "piece": path.display().to_string(), "events": piece.len(), "listeners": listeners,
    });
    for target in targets {
        let running = crate::start(target, "fidelity", args).await;
        for (room, &network) in networks.iter().enumerate() {
            eprintln!("bench: fidelity: {} over {}", target.key(), network.key());
            let trial = match play(&piece, &*running.url, room, listeners, network).await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("bench: fidelity: {} {}: {e}", target.key(), network.key());
                    t += &format!("| {} | {} | failed: {e} |\n", target.label(), network.key());
                    continue;
                }
            };
            let s = |f: fn(&Stats) -> u32| trial.stats.iter().map(f).sum::<u32>();
            let goals = trial.goals();
            t += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |\n",
                target.label(),
                network.key(),
                Trial::p(&trial.error_us, 0.5),
                Trial::p(&trial.error_us, 0.99),
                Trial::p(&trial.error_us, 1.0),
                Trial::p(&trial.offset_us, 1.0),
                trial.lost,
                trial.duplicated,
                trial.reordered,
                trial.late,
                Trial::p(&trial.transit_us, 0.99),
                s(|s| s.drops),
                s(|s| s.resumed),
                s(|s| s.rejoined),
                Trial::p(&trial.emit_late_us, 0.99),
                if goals.is_empty() {
                    "met".to_owned()
                } else {
                    format!("**not met**: {}", goals.join("; "))
                },
            );
            json[format!("{}_{}", target.key(), network.key())] = trial.to_json();
        }
        drop(running);
    }
    t += &format!(
        "\nGoals: loopback p99 error ≤ {LOOPBACK_P99_MS} ms; with jitter and cuts nothing arrives \
         past the {LATENCY_MS} ms buffer; every client's offset within {OFFSET_MAX_MS} ms; no \
         event lost, duplicated or reordered, and none refused by the room's quota.\n"
    );
    println!("{t}");
    write_results("fidelity", &t, &json);
}
