//! Load generator and benchmarks (issue 9): fan-out, the large room and the join storm.
//!
//! `cargo run --release -p bench -- <scenario> [options]` runs, in one invocation and on this
//! machine, the same load against:
//! 1. the **baseline**: a bare tokio WebSocket broadcast server (`baseline.rs`, no room logic,
//!    no protobuf decoding), in a process of its own — this machine's fan-out floor;
//! 2. the **edge**: the real worker and Room objects in `wrangler dev` (started like the e2e suite
//!    does, with its own key and storage).
//!
//! Scenarios: `fanout` (R rooms × P players, each sending F note batches per second for S s),
//! `large-room` (one soloist and L listeners, default 1,000), `join-storm` (N new players per
//! second, connect-to-Joined latency). Each batch is recognised by its receivers (sender and
//! sequence number travel in the batch), so latency is the send-to-receive time on one clock, in
//! microseconds. Results: `bench/results/<scenario>-<unix time>.md` and `.json`, and the table
//! on stdout. Not part of the test suite.

mod baseline;
mod load;

use load::{Load, Outcome};
use std::time::Duration;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

const USAGE: &str = "usage: bench fanout [--rooms R] [--players P] [--rate F] [--seconds S]
       bench large-room [--listeners L] [--rate F] [--seconds S]
       bench join-storm [--rate N] [--seconds S]";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).cloned().unwrap_or_default();
    if scenario == "baseline-serve" {
        let addr = baseline::start().await;
        println!("{addr}");
        std::future::pending::<()>().await;
    }
    let seconds = Duration::from_secs(arg(&args, "--seconds", 10));
    let load = match scenario.as_str() {
        "fanout" => {
            let players = arg(&args, "--players", 20) as usize;
            Load {
                rooms: arg(&args, "--rooms", 1) as usize,
                players,
                rate: arg(&args, "--rate", 5) as u32,
                senders: players,
                duration: seconds,
            }
        }
        "large-room" => {
            let listeners = arg(&args, "--listeners", 1000) as usize;
            Load {
                rooms: 1,
                players: listeners + 1,
                rate: arg(&args, "--rate", 5) as u32,
                senders: 1,
                duration: seconds,
            }
        }
        "join-storm" => Load {
            rooms: 0,
            players: 0,
            rate: arg(&args, "--rate", 20) as u32,
            senders: 0,
            duration: seconds,
        },
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    eprintln!("bench: {scenario} {load:?}");
    let storm = scenario == "join-storm";

    // The baseline runs in its own process, as the real server does, so it does not share this
    // process's runtime with the load generator.
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("baseline-serve")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the baseline server");
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt;
        let out = child.stdout.take().expect("baseline stdout");
        tokio::io::BufReader::new(out)
            .read_line(&mut line)
            .await
            .expect("baseline address");
    }
    let base_addr = line.trim().to_owned();
    eprintln!("bench: baseline on {base_addr}");
    let base_url = |room: usize, _: usize| format!("ws://{base_addr}/{room}");
    let base = if storm {
        load::join_storm(load.rate, load.duration.as_secs(), base_url, false).await
    } else {
        load::run(&load, base_url, false).await
    };
    let _ = child.kill().await;

    let server = tokio::task::spawn_blocking(e2e_tests::Server::start_edge)
        .await
        .expect("start wrangler dev");
    let edge = {
        let s = &server;
        let run_id = std::process::id();
        let scenario = scenario.clone();
        let edge_url = move |room: usize, player: usize| {
            let mut claims = s.claims(
                &format!("guest:bench-{room}-{player}"),
                &format!("B{player}"),
            );
            // Admins may open rooms above 99 players (the large room).
            claims.roles = vec!["guest".into(), "admin".into()];
            format!(
                "{}?token={}",
                s.ws_url(&format!("bench-{scenario}-{run_id}-{room}")),
                s.sign(&claims)
            )
        };
        if storm {
            load::join_storm(load.rate, load.duration.as_secs(), edge_url, true).await
        } else {
            load::run(&load, edge_url, true).await
        }
    };
    drop(server);

    let table = report(
        &scenario,
        &load,
        &[
            ("baseline (bare tokio broadcast)", &base),
            ("edge (wrangler dev, Room object)", &edge),
        ],
    );
    println!("{table}");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = e2e_tests::repo_root().join("bench/results");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::json!({
        "scenario": scenario,
        "load": { "rooms": load.rooms, "players": load.players, "senders": load.senders, "rate": load.rate, "seconds": load.duration.as_secs() },
        "machine": machine(),
        "baseline": base.to_json(),
        "edge": edge.to_json(),
    });
    let _ = std::fs::write(dir.join(format!("{scenario}-{stamp}.md")), &table);
    let _ = std::fs::write(
        dir.join(format!("{scenario}-{stamp}.json")),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    eprintln!("bench: wrote bench/results/{scenario}-{stamp}.md and .json");
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs, {model}")
}

fn report(scenario: &str, load: &Load, rows: &[(&str, &Outcome)]) -> String {
    let base = rows[0].1.delivered_per_sec();
    let title = match scenario {
        "large-room" => format!(
            "Large room: 1 soloist and {} listeners, {} batches/s",
            load.players - 1,
            load.rate
        ),
        "join-storm" => format!(
            "Join storm: {} joins/s into rooms of 50 (latency: connect to Joined; sent = attempts, delivered = joined, lost = failed)",
            load.rate
        ),
        _ => format!(
            "Fan-out: {} rooms × {} players, {} batches/s each",
            load.rooms, load.players, load.rate
        ),
    };
    let mut t = format!(
        "{title}, {} s. Machine: {}.\n\n\
         | target | sent | delivered | delivered/s | vs baseline | p50 ms | p95 ms | p99 ms | max ms | lost |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        load.duration.as_secs(),
        machine()
    );
    for (name, o) in rows {
        let p = |q: f64| {
            o.percentile(q)
                .map(|v| format!("{v:.2}"))
                .unwrap_or("-".into())
        };
        t += &format!(
            "| {name} | {} | {} | {:.0} | {:.0}% | {} | {} | {} | {} | {} |\n",
            o.sent,
            o.latencies_us.len(),
            o.delivered_per_sec(),
            100.0 * o.delivered_per_sec() / base.max(1.0),
            p(0.50),
            p(0.95),
            p(0.99),
            p(1.0),
            o.lost(),
        );
    }
    t
}
