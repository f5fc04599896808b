//! Load generator and benchmarks (issue 9, first scenario): fan-out.
//!
//! `cargo run --release -p bench -- fanout [--rooms R] [--players P] [--rate F] [--seconds S]`
//! runs, in one invocation and on this machine:
//! 1. the **baseline**: a bare tokio WebSocket broadcast server (`baseline.rs`, no room logic,
//!    no protobuf decoding), in a process of its own — this machine's fan-out limit;
//! 2. the **edge**: the real worker and Room objects in `wrangler dev` (started like the e2e suite
//!    does, with its own key and storage);
//!
//! with the same load: R rooms × P players, each player sending F note batches per second for S
//! seconds. Each batch is recognised by the receivers (sender + a sequence number carried in the
//! batch), so latency is measured from the sender's send to each receiver's receive on one clock,
//! in microseconds. It writes `bench/results/fanout-<unix time>.md` and `.json`, and prints the
//! table. Not part of the test suite.

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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("baseline-serve") {
        let addr = baseline::start().await;
        println!("{addr}");
        std::future::pending::<()>().await;
    }
    if args.get(1).map(String::as_str) != Some("fanout") {
        eprintln!("usage: bench fanout [--rooms R] [--players P] [--rate F] [--seconds S]");
        std::process::exit(2);
    }
    let load = Load {
        rooms: arg(&args, "--rooms", 4) as usize,
        players: arg(&args, "--players", 20) as usize,
        rate: arg(&args, "--rate", 5) as u32,
        duration: Duration::from_secs(arg(&args, "--seconds", 10)),
    };
    eprintln!("bench: {load:?}");

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
    let base = load::run(&load, |room, _| format!("ws://{base_addr}/{room}"), false).await;
    let _ = child.kill().await;

    let server = tokio::task::spawn_blocking(e2e_tests::Server::start_edge)
        .await
        .expect("start wrangler dev");
    let edge = {
        let s = &server;
        load::run(
            &load,
            |room, player| {
                let token = s.sign(&s.claims(
                    &format!("guest:bench-{room}-{player}"),
                    &format!("B{player}"),
                ));
                format!("{}?token={token}", s.ws_url(&format!("bench-{room}")))
            },
            true,
        )
        .await
    };
    drop(server);

    let table = report(
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
        "load": { "rooms": load.rooms, "players": load.players, "rate": load.rate, "seconds": load.duration.as_secs() },
        "machine": machine(),
        "baseline": base.to_json(),
        "edge": edge.to_json(),
    });
    let _ = std::fs::write(dir.join(format!("fanout-{stamp}.md")), &table);
    let _ = std::fs::write(
        dir.join(format!("fanout-{stamp}.json")),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    eprintln!("bench: wrote bench/results/fanout-{stamp}.md and .json");
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

fn report(load: &Load, rows: &[(&str, &Outcome)]) -> String {
    let base = rows[0].1.delivered_per_sec();
    let mut t = format!(
        "Fan-out: {} rooms × {} players, {} batches/s each, {} s. Machine: {}.\n\n\
         | target | sent batches | delivered msgs | delivered/s | vs baseline | p50 ms | p95 ms | p99 ms | max ms | lost |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        load.rooms,
        load.players,
        load.rate,
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
