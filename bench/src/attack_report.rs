//! `bench attack`: the "room under attack" scenario's command line, its tables and its JSON
//! (`bench/results/attack-<unix time>.md` and `.json`).

use crate::attack::{self, Measured, Phase};
use crate::attacker::{Plan, Spray, Tally};
use crate::{Target, arg, arg_str, machine, start};
use std::time::Duration;

pub const USAGE: &str =
    "bench attack [--players P] [--rate F] [--seconds S] [--targets fallback,edge]
              [--flood N] [--flood-events E] [--extra-sockets N] [--extra-flood]
              [--spray same|next|off] [--spray-max N] [--slow-readers N] [--note TEXT]
  P honest players (20) sending F batches/s (5), S s without and S s with the attacker (10);
  the attack: (a) --flood N note-off/CC64 batches at most (10000; 0 = off) of E events (100),
  (b) --extra-sockets N more sockets with the attacker's token (20; 0 = off; --extra-flood:
  they flood too), (c) --spray: wrong passwords against the honest room's own join (same,
  the default; the honest room is then locked) or a locked room next door (next), at most
  --spray-max N (5000), (d) --slow-readers N guests that join and never read (5; 0 = off).
  --note TEXT goes under the table's title and into the JSON (e.g. which code was measured).";

fn plan(args: &[String]) -> Plan {
    Plan {
        flood_batches: arg(args, "--flood", 10_000),
        flood_events: arg(args, "--flood-events", 100).clamp(1, 300) as usize,
        extra_sockets: arg(args, "--extra-sockets", 20) as usize,
        extra_flood: args.iter().any(|a| a == "--extra-flood"),
        spray: match arg_str(args, "--spray").as_deref() {
            None | Some("same") => Spray::Same,
            Some("next") => Spray::NextDoor,
            Some("off") => Spray::Off,
            Some(other) => {
                eprintln!("--spray {other:?}: same, next or off\nusage: {USAGE}");
                std::process::exit(2);
            }
        },
        spray_max: arg(args, "--spray-max", 5_000),
        slow_readers: arg(args, "--slow-readers", 5) as usize,
    }
}

pub async fn main(args: &[String]) {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: {USAGE}");
        return;
    }
    let fds = crate::procs::raise_fd_limit();
    let cfg = attack::Config {
        players: arg(args, "--players", 20).max(2) as usize,
        rate: arg(args, "--rate", 5).max(1) as u32,
        phase: Duration::from_secs(arg(args, "--seconds", 10).max(1)),
        plan: plan(args),
    };
    let targets: Vec<Target> = arg_str(args, "--targets")
        .unwrap_or_else(|| "fallback,edge".into())
        .split(',')
        .map(|t| match t.trim() {
            "fallback" => Target::Fallback,
            "edge" => Target::Edge,
            "external" => Target::External,
            other => {
                eprintln!("attack: target {other:?} (fallback, edge or external; the baseline has no rooms)\nusage: {USAGE}");
                std::process::exit(2);
            }
        })
        .collect();
    eprintln!(
        "bench: attack {cfg:?}, targets {targets:?}, fd limit {}",
        fds.0
    );
    let load_avg = crate::load_average();
    let run_id = std::process::id();
    let mut rows = Vec::new();
    for &target in &targets {
        let running = start(target, "attack", args).await;
        let Some(url) = running.guest_url.clone() else {
            continue;
        };
        let mut pids = running.pids.clone();
        if target == Target::External && pids.is_empty() {
            pids = local_server_pids(args);
        }
        let la = crate::load_average();
        let m = attack::run(&cfg, url, &pids, &format!("bench-attack-{run_id}")).await;
        drop(running);
        if let Some(f) = &m.failed {
            eprintln!("bench: attack on {}: {f}", target.key());
        }
        rows.push((target, la, m));
    }
    let note = arg_str(args, "--note");
    let table = report(&cfg, note.as_deref(), &load_avg, &rows);
    println!("{table}");
    let mut json = serde_json::json!({
        "scenario": "attack",
        "load": { "rooms": 1, "players": cfg.players, "senders": cfg.players, "rate": cfg.rate, "seconds": cfg.phase.as_secs(), "attack": cfg.plan.to_json() },
        "machine": machine(),
        "load_average_at_start": load_avg,
        "note": note,
    });
    for (target, la, m) in &rows {
        json[target.key()] = m.to_json();
        json[target.key()]["load_average_at_start"] = la.clone().into();
    }
    crate::write_results("attack", &table, &json);
}

/// An external target on this machine (`--url http://127.0.0.1:PORT`, e.g. a `wrangler dev`
/// started by hand from another checkout): its processes, found as the edge's are.
fn local_server_pids(args: &[String]) -> Vec<u32> {
    let port = arg_str(args, "--url")
        .filter(|u| u.contains("://127.0.0.1:") || u.contains("://localhost:"))
        .and_then(|u| {
            u.rsplit(':')
                .next()?
                .trim_end_matches('/')
                .parse::<u16>()
                .ok()
        });
    let Some(pid) = port.and_then(crate::procs::listener_pid) else {
        return Vec::new();
    };
    let w = crate::procs::group_members_named(pid, "workerd");
    let pids = if w.is_empty() { vec![pid] } else { w };
    eprintln!(
        "bench: measuring the external target's local processes {}",
        pids.iter()
            .map(|p| crate::procs::describe(*p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    pids
}

/// Milliseconds, "lost" for a percentile that fell among lost batches.
fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        Some(_) => "lost".into(),
        None => "-".into(),
    }
}

pub fn tally(t: &Tally) -> String {
    if t.is_empty() {
        return "-".into();
    }
    t.iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn ratio(m: &Measured) -> String {
    match m.ratio() {
        Some(r) if r.is_finite() => {
            format!("**{r:.1}×** ({})", if r <= 2.0 { "met" } else { "not met" })
        }
        Some(_) => "∞ (lost batches) (not met)".into(),
        None => "-".into(),
    }
}

fn phase_row(host: &str, name: &str, p: &Phase, seconds: f64) -> String {
    let mib = |k: u64| k as f64 / 1024.0;
    format!(
        "| {host} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} → {:.0} |\n",
        p.sent,
        p.latencies_us.len(),
        p.lost(),
        ms(p.percentile(0.50)),
        ms(p.percentile(0.95)),
        ms(p.percentile(0.99)),
        ms(p.percentile(1.0)),
        p.foreign_frames,
        100.0 * p.server_cpu_s / seconds,
        100.0 * p.bench_cpu_s / seconds,
        mib(p.rss_start_kib),
        mib(p.rss_max_kib),
    )
}

fn report(
    cfg: &attack::Config,
    note: Option<&str>,
    load_avg: &str,
    rows: &[(Target, String, Measured)],
) -> String {
    let s = cfg.phase.as_secs();
    let secs = cfg.phase.as_secs_f64();
    let mut t = format!(
        "### Room under attack: 1 room × {} honest players, {} batches/s each, {s} s without and {s} s with the attacker\n\n\
         {}Attack (one guest token, from 127.0.0.2; each honest player from its own loopback address): {}.\n\n\
         Machine: {}; load average at start {load_avg}. **The 2 CPUs are shared** with other work \
         (see the load averages) and with this load generator, which runs the honest players and the \
         attacker: read the ratios, not the absolute times. Latency: send → receive of the honest \
         players' batches, over the expected deliveries (a batch not received within 10 s after the \
         attack is lost and counts as infinitely late: \"lost\").\n\n",
        cfg.players,
        cfg.rate,
        note.map(|n| format!("{n}\n\n")).unwrap_or_default(),
        cfg.plan.describe(),
        machine(),
    );
    t += "| host | p50 ms without | p99 ms without | p50 ms with attack | p99 ms with attack | p99 with / without (goal ≤ 2×) | lost without / with | honest sockets ended early |\n\
          |---|---|---|---|---|---|---|---|\n";
    for (target, _, m) in rows {
        if let Some(f) = &m.failed {
            t += &format!("| {} | not measured: {f} | | | | | | |\n", target.label());
            continue;
        }
        t += &format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
            target.label(),
            ms(m.calm.percentile(0.50)),
            ms(m.calm.percentile(0.99)),
            ms(m.attack.percentile(0.50)),
            ms(m.attack.percentile(0.99)),
            ratio(m),
            m.calm.lost(),
            m.attack.lost(),
            tally(&m.honest_closes),
        );
    }
    let retries: Vec<String> = rows
        .iter()
        .filter(|(_, _, m)| m.honest_join_retries > 0)
        .map(|(t, _, m)| format!("{} {}", t.key(), m.honest_join_retries))
        .collect();
    if !retries.is_empty() {
        t += &format!(
            "\nThe honest players' joins (before the phases) were refused `JoinFailed RATE_LIMITED` and retried after `retry_after_ms`, as a client does: {} times.\n",
            retries.join(", ")
        );
    }
    t += "\nPer phase (CPU: % of one CPU over the phase; RSS: the server's, start → max):\n\n\
          | host | phase | sent | delivered | lost | p50 ms | p95 ms | p99 ms | max ms | attacker frames at honest players | server CPU % | load generator CPU % | server RSS MiB |\n\
          |---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (target, la, m) in rows {
        if m.failed.is_some() {
            continue;
        }
        let host = format!("{} (load avg {la})", target.key());
        t += &phase_row(&host, "without", &m.calm, secs);
        t += &phase_row(&host, "with attack", &m.attack, secs);
    }
    t += "\nWhat the server did to the attacker (counts of what each component saw: closes by code, \
          notices, refusals; \"open at end\" = still connected when the attack stopped):\n\n\
          | host | (a) flood | (b) extra sockets | (c) password spray | (d) slow readers |\n\
          |---|---|---|---|---|\n";
    for (target, _, m) in rows {
        if m.failed.is_some() {
            continue;
        }
        let a = &m.attacker;
        let flood = if cfg.plan.flood_batches > 0 {
            format!(
                "{} batches written in {:.2} s; {}",
                a.flood_sent,
                a.flood_time.as_secs_f64(),
                tally(&a.flood)
            )
        } else {
            "off".into()
        };
        let spray = if cfg.plan.spray == Spray::Off {
            "off".into()
        } else {
            let wrong = a
                .spray
                .get("JoinFailed WRONG_PASSWORD")
                .copied()
                .unwrap_or(0);
            format!(
                "{} guesses sent, {wrong} checked ({:.0}/s); {}",
                a.spray_sent,
                wrong as f64 / secs,
                tally(&a.spray)
            )
        };
        let slow = if cfg.plan.slow_readers > 0 {
            format!(
                "{}; {} KiB read after the attack",
                tally(&a.slow),
                a.slow_backlog_bytes / 1024
            )
        } else {
            "off".into()
        };
        let extra = if cfg.plan.extra_sockets > 0 {
            tally(&a.extra)
        } else {
            "off".into()
        };
        t += &format!(
            "| {} | {flood} | {extra} | {spray} | {slow} |\n",
            target.key()
        );
    }
    t
}
