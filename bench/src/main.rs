//! Load generator and benchmarks (issue 9): fan-out, the large room, the join storm and
//! connection scale.
//!
//! `cargo run --release -p bench -- <scenario> [options]` runs, in one invocation and on this
//! machine, the same load against each target in turn (`--targets`, default all three):
//! 1. `baseline`: a bare tokio WebSocket broadcast server (`baseline.rs`, no room logic, no
//!    protobuf decoding), in a process of its own — this machine's fan-out floor;
//! 2. `fallback`: the native host (`k8s-fallback`, standalone: SQLite, no Redis) from
//!    `$CARGO_TARGET_DIR/release/k8s-fallback` (or `--fallback-bin`), started like the e2e
//!    suite starts it (`tests/targets.rs`: own port, throw-away key and data directory);
//! 3. `edge`: the real worker and Room objects in `wrangler dev` (started like the e2e suite
//!    does, with its own key and storage).
//!
//! Scenarios: `fanout` (R rooms × P players, each sending F note batches per second for S s),
//! `large-room` (one soloist and L listeners, default 1,000), `join-storm` (N new players per
//! second, connect-to-Joined latency), `connections` (N idle joined connections in rooms of 50,
//! server memory per connection from `/proc/<pid>/status`). Each batch is recognised by its
//! receivers (sender and sequence number travel in the batch), so latency is the send-to-receive
//! time on one clock, in microseconds. `micro` copies the criterion estimates of
//! `cargo bench -p piano-core --bench room` into the results, and `summary` gathers the result
//! tables into `bench/results/summary.md`. `attack` (issue 13, `attack.rs`) measures a room of
//! honest players without and then with an attacker (flood, extra sockets, password spray, slow
//! readers) on the fallback and the edge. Results: `bench/results/<scenario>-<unix time>.md`
//! and `.json`, and the table on stdout. Not part of the test suite.

mod attack;
mod attack_report;
mod attacker;
mod baseline;
mod cold;
mod fidelity;
mod fidelity_client;
mod load;
mod midi;
mod mpp_wire;
mod procs;
mod proxy;
mod results;
mod saturate;
mod wake;

use load::{Endpoint, Enter, Load, Outcome, Scale, Wire};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn arg_str(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

const USAGE: &str =
    "usage: bench fanout [--rooms R] [--players P] [--rate F] [--seconds S] [--targets T]
       bench large-room [--listeners L] [--rate F] [--seconds S] [--targets T]
       bench join-storm [--rate N] [--seconds S] [--targets T]
       bench connections [--count N] [--seconds BUDGET] [--targets T]
       bench wake [--rooms R] [--idle S] [--targets T]   (hibernated rooms' first relay)
       bench saturate [--rooms R] [--players P] [--rates 20,40,..] [--seconds S] [--targets T]
                        (rising fan-out until p99 > 50 ms or loss > 0.1%: each target's capacity)
       bench cold [--wasm A.wasm,B.wasm] [--samples N]   (V8 compile of the worker's wasm)
       bench fidelity [--listeners N] [--networks loopback,jitter,cut] [--midi FILE]
                      [--seconds S] [--targets T]   (timing fidelity of a replayed performance)
       bench fidelity-piece   (writes the shipped piece, bench/fidelity/bwv846-coda.mid)
       bench attack     (room under attack, issue 13: `bench attack --help`)
       bench micro      (after `cargo bench -p piano-core --bench room`)
       bench summary    (gathers bench/results/*.md into bench/results/summary.md)
  T: comma-separated baseline,fallback,edge,external (default: the first three, in that order)
  external: --url http(s)://host:port --key-pem FILE [--issuer I] [--audience A] (a running
            deployment; tokens signed with its key). With --protocol mpp the key is optional
            (MPP clients are guests) and --mpp-url ws(s)://host:port/path names any MPP server
            (default: --url's /mpp)
  --protocol protobuf|mpp|both: our protocol (default), Multiplayer Piano JSON, or each in
            turn on the same servers, side by side in one table (every scenario but attack)
  --fallback-bin PATH: the k8s-fallback binary (default $CARGO_TARGET_DIR/release/k8s-fallback)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Baseline,
    Fallback,
    Edge,
    /// A deployment already running elsewhere (`--url`), reached with tokens signed by its key
    /// (`--key-pem`): the operator's own token source.
    External,
}

impl Target {
    fn key(self) -> &'static str {
        match self {
            Target::Baseline => "baseline",
            Target::Fallback => "fallback",
            Target::Edge => "edge",
            Target::External => "external",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Baseline => "baseline (bare tokio broadcast)",
            Target::Fallback => "fallback (k8s-fallback, standalone)",
            Target::Edge => "edge (wrangler dev, Room object)",
            Target::External => "external (--url)",
        }
    }
}

type UrlFn = Arc<dyn Fn(usize, usize) -> String + Send + Sync>;
/// Where player (room, player) connects, and how it enters its room (the MPP mode's, or the
/// protobuf one's built from a [`UrlFn`]).
type MppFn = Arc<dyn Fn(usize, usize) -> Endpoint + Send + Sync>;

/// A started server: where to connect, which processes to measure, and what keeps it alive
/// (dropping it stops the server).
struct Running {
    url: UrlFn,
    /// The MPP mode's endpoints (the real servers' `/mpp`, or the baseline's room paths).
    mpp: MppFn,
    /// The ws URL for (room name, user id) with a plain guest's token (no admin role: the
    /// attack scenario's players are guests, as a griefer would be). None for the baseline.
    guest_url: Option<attacker::GuestUrl>,
    pids: Vec<u32>,
    _guard: Guard,
}

enum Guard {
    Child(#[allow(dead_code)] tokio::process::Child),
    Server(#[allow(dead_code)] Arc<e2e_tests::Server>),
    None,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                e2e_tests::repo_root().join(p)
            }
        })
        .unwrap_or_else(|| e2e_tests::repo_root().join("target"))
}

/// `--url http(s)://host:port --key-pem FILE [--issuer I] [--audience A]`: a running
/// deployment (the edge on Cloudflare, a fallback on Kubernetes). Tokens are signed with the
/// deployment's key and carry the admin role (rooms above 99 players); its memory is not
/// measured (no local process).
fn external(scenario: &str, args: &[String]) -> Running {
    let base = arg_str(args, "--url").unwrap_or_else(|| {
        eprintln!("the external target needs --url http(s)://host:port\n{USAGE}");
        std::process::exit(2);
    });
    let pem_path = arg_str(args, "--key-pem");
    if pem_path.is_none() && wires(args).contains(&Wire::Protobuf) {
        eprintln!(
            "the external target needs --key-pem FILE (the deployment's signing key)\n{USAGE}"
        );
        std::process::exit(2);
    }
    let key = pem_path.map(|pem_path| {
        std::fs::read_to_string(&pem_path)
            .map_err(|e| e.to_string())
            .and_then(|pem| {
                piano_core::identity::SigningKey::from_pkcs8_pem(&pem).map_err(|e| e.to_string())
            })
            .unwrap_or_else(|e| {
                eprintln!("cannot use {pem_path} as an Ed25519 PKCS#8 key: {e}");
                std::process::exit(2);
            })
    });
    let issuer = arg_str(args, "--issuer").unwrap_or_else(|| "pianorhythm".into());
    let audience = arg_str(args, "--audience").unwrap_or_else(|| "pianorhythm".into());
    let ws_base = base
        .trim_end_matches('/')
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    eprintln!("bench: external target {ws_base}");
    let run_id = std::process::id();
    let scenario = scenario.to_owned();
    let mpp_url = arg_str(args, "--mpp-url").unwrap_or_else(|| format!("{ws_base}/mpp"));
    // Without a key (the MPP mode only) there are no tokens: MPP clients are guests.
    let sign = Arc::new(move |user: &str, name: &str, roles: &[&str]| {
        let key = key.as_ref()?;
        let now = e2e_tests::now_secs();
        let claims = piano_core::identity::Claims {
            sub: user.into(),
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: now,
            exp: now + 3600,
            nbf: None,
            sid: None,
            generation: None,
            iss: issuer.clone(),
            aud: audience.clone(),
        };
        Some(key.sign(&claims))
    });
    let (sign2, sign3, ws_base2) = (sign.clone(), sign.clone(), ws_base.clone());
    let bench_user =
        |room: usize, player: usize| (format!("guest:bench-{room}-{player}"), format!("B{player}"));
    let room_name = move |wire: Wire, room: usize| match wire {
        Wire::Protobuf => format!("bench-{scenario}-{run_id}-{room}"),
        Wire::Mpp => format!("bench-{scenario}-mpp-{run_id}-{room}"),
    };
    let room_name2 = room_name.clone();
    let url: UrlFn = Arc::new(move |room: usize, player: usize| {
        let (user, name) = bench_user(room, player);
        let token = sign(&user, &name, &["guest", "admin"]).unwrap_or_default();
        let room = piano_core::names::percent_encode(&room_name(Wire::Protobuf, room));
        format!("{ws_base}/api/rooms/{room}/ws?token={token}")
    });
    let guest_url: attacker::GuestUrl = Arc::new(move |room: &str, user: &str| {
        let token = sign2(user, &guest_name(user), &["guest"]).unwrap_or_default();
        let room = piano_core::names::percent_encode(room);
        format!("{ws_base2}/api/rooms/{room}/ws?token={token}")
    });
    let mpp: MppFn = Arc::new(move |room: usize, player: usize| {
        let (user, name) = bench_user(room, player);
        Endpoint {
            url: mpp_url.clone(),
            enter: Enter::Mpp {
                room: room_name2(Wire::Mpp, room),
                token: sign3(&user, &name, &["guest", "admin"]),
            },
        }
    });
    Running {
        url,
        mpp,
        guest_url: Some(guest_url),
        pids: Vec::new(),
        _guard: Guard::None,
    }
}

/// A display name for a bench user id: `guest:bench-honest-3` → `honest-3`.
fn guest_name(user: &str) -> String {
    user.rsplit(':')
        .next()
        .unwrap_or(user)
        .trim_start_matches("bench-")
        .chars()
        .take(24)
        .collect()
}

async fn start(target: Target, scenario: &str, args: &[String]) -> Running {
    match target {
        Target::External => external(scenario, args),
        Target::Baseline => {
            // In its own process, as the real servers are, so it does not share this process's
            // runtime with the load generator.
            let mut child =
                tokio::process::Command::new(std::env::current_exe().expect("own path"))
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
            let addr = line.trim().to_owned();
            eprintln!("bench: baseline on {addr}");
            let pids = child.id().into_iter().collect();
            let addr2 = addr.clone();
            Running {
                url: Arc::new(move |room, _| format!("ws://{addr}/{room}")),
                mpp: Arc::new(move |room, _| Endpoint {
                    url: format!("ws://{addr2}/mpp-{room}"),
                    enter: Enter::Connected,
                }),
                guest_url: None,
                pids,
                _guard: Guard::Child(child),
            }
        }
        Target::Fallback | Target::Edge => {
            let server = if target == Target::Edge {
                tokio::task::spawn_blocking(e2e_tests::Server::start_edge)
                    .await
                    .expect("start wrangler dev")
            } else {
                let bin = arg_str(args, "--fallback-bin")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| target_dir().join("release/k8s-fallback"));
                assert!(
                    bin.is_file(),
                    "{} is missing: cargo build --release -p k8s-fallback (scripts/bench does)",
                    bin.display()
                );
                tokio::task::spawn_blocking(move || {
                    e2e_tests::Server::start_fallback_binary(&bin, &[])
                })
                .await
                .expect("start k8s-fallback")
            };
            let server = Arc::new(server);
            let listener = procs::listener_pid(server.port);
            let pids: Vec<u32> = match (target, listener) {
                // wrangler dev: the memory is workerd's (node only proxies).
                (Target::Edge, Some(pid)) => {
                    let w = procs::group_members_named(pid, "workerd");
                    if w.is_empty() { vec![pid] } else { w }
                }
                (_, Some(pid)) => vec![pid],
                (_, None) => Vec::new(),
            };
            eprintln!(
                "bench: {} on port {}: {}",
                target.key(),
                server.port,
                pids.iter()
                    .map(|p| procs::describe(*p))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let s = server.clone();
            let run_id = std::process::id();
            let scenario = scenario.to_owned();
            let scenario_name = scenario.clone();
            let url: UrlFn = Arc::new(move |room: usize, player: usize| {
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
            });
            let s = server.clone();
            let guest_url: attacker::GuestUrl = Arc::new(move |room: &str, user: &str| {
                let claims = s.claims(user, &guest_name(user));
                format!("{}?token={}", s.ws_url(room), s.sign(&claims))
            });
            let s = server.clone();
            let scenario = scenario_name.clone();
            let mpp: MppFn = Arc::new(move |room: usize, player: usize| {
                let mut claims = s.claims(
                    &format!("guest:bench-{room}-{player}"),
                    &format!("B{player}"),
                );
                claims.roles = vec!["guest".into(), "admin".into()];
                Endpoint {
                    url: format!("ws://127.0.0.1:{}/mpp", s.port),
                    enter: Enter::Mpp {
                        room: format!("bench-{scenario}-mpp-{run_id}-{room}"),
                        token: Some(s.sign(&claims)),
                    },
                }
            });
            Running {
                url,
                mpp,
                guest_url: Some(guest_url),
                pids,
                _guard: Guard::Server(server),
            }
        }
    }
}

enum Measured {
    Traffic(Outcome),
    Scale(Scale),
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).cloned().unwrap_or_default();
    if scenario == "baseline-serve" {
        let addr = baseline::start().await;
        println!("{addr}");
        std::future::pending::<()>().await;
    }
    if scenario == "micro" {
        return results::micro();
    }
    if scenario == "summary" {
        return results::summary();
    }
    if scenario == "attack" {
        return attack_report::main(&args).await;
    }
    if scenario == "wake" {
        return wake_report(&args).await;
    }
    if scenario == "saturate" {
        return saturate_report(&args).await;
    }
    if scenario == "cold" {
        return cold_report(&args);
    }
    if scenario == "fidelity" {
        return fidelity::main(&args).await;
    }
    if scenario == "fidelity-piece" {
        let path = midi::piece_path();
        if let Err(e) = midi::write_piece(&path) {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
        let events = midi::read(&path).unwrap_or_default();
        let span = events.last().map(|e| e.at_us as f64 / 1e6).unwrap_or(0.0);
        let ons = events
            .iter()
            .filter(|e| matches!(e.kind, piano_core::proto::note_event::Kind::NoteOn(_)))
            .count();
        return println!(
            "{}: {} events ({ons} notes) over {span:.1} s",
            path.display(),
            events.len()
        );
    }
    let fds = procs::raise_fd_limit();
    let seconds = Duration::from_secs(arg(&args, "--seconds", 10));
    let count = arg(&args, "--count", 10_000) as usize;
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
        "connections" => Load {
            rooms: count.div_ceil(50),
            players: 50,
            rate: 0,
            senders: 0,
            // The budget for opening them.
            duration: Duration::from_secs(arg(&args, "--seconds", 300)),
        },
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let targets = parse_targets(&args, "baseline,fallback,edge");
    eprintln!(
        "bench: {scenario} {load:?}, targets {targets:?}, fd limit {} (hard limit was {})",
        fds.0, fds.1
    );
    let load_avg = load_average();

    let wires = wires(&args);
    let mut results: Vec<(Target, Wire, Measured)> = Vec::new();
    for &target in &targets {
        let running = start(target, &scenario, &args).await;
        for &wire in &wires {
            let endpoint: MppFn = match wire {
                Wire::Mpp => running.mpp.clone(),
                Wire::Protobuf => {
                    let url = running.url.clone();
                    let server = target != Target::Baseline;
                    Arc::new(move |room, player| Endpoint {
                        url: url(room, player),
                        enter: if server {
                            Enter::Join
                        } else {
                            Enter::Connected
                        },
                    })
                }
            };
            let measured = match scenario.as_str() {
                "join-storm" => Measured::Traffic(
                    load::join_storm(load.rate, load.duration.as_secs(), &*endpoint, wire).await,
                ),
                "connections" => {
                    let n = if target == Target::Edge {
                        count.min(edge_connections(fds.0))
                    } else {
                        count
                    };
                    Measured::Scale(
                        load::connections(n, &*endpoint, &running.pids, load.duration).await,
                    )
                }
                _ => Measured::Traffic(load::run(&load, &*endpoint, wire).await),
            };
            results.push((target, wire, measured));
        }
        drop(running);
    }

    let table = report(&scenario, &load, count, fds.0, &load_avg, &results);
    println!("{table}");
    let mut json = serde_json::json!({
        "scenario": scenario,
        "load": { "rooms": load.rooms, "players": load.players, "senders": load.senders, "rate": load.rate, "seconds": load.duration.as_secs(), "count": (scenario == "connections").then_some(count) },
        "machine": machine(),
        "load_average_at_start": load_avg,
    });
    for (target, wire, m) in &results {
        let key = match wire {
            Wire::Protobuf => target.key().to_owned(),
            Wire::Mpp => format!("{}_mpp", target.key()),
        };
        json[key] = match m {
            Measured::Traffic(o) => o.to_json(),
            Measured::Scale(s) => s.to_json(),
        };
    }
    write_results(&scenario, &table, &json);
}

/// `wrangler dev`'s workerd holds about six descriptors per WebSocket (12,111 at 2,000
/// connections here) and dies at its descriptor limit ("accept: Too many open files"), which it
/// inherits from us: the edge gets as many connections as 90% of that limit allows.
const WORKERD_FDS_PER_CONNECTION: u64 = 6;

/// `bench wake`: the table and JSON of [`wake::run`] on each target (default: fallback, edge).
async fn wake_report(args: &[String]) {
    let rooms = arg(args, "--rooms", 5) as usize;
    let idle = Duration::from_secs(arg(args, "--idle", 15));
    // The baseline has no rooms to evict.
    let mut targets = parse_targets(args, "fallback,edge");
    targets.retain(|t| *t != Target::Baseline);
    let load_avg = load_average();
    let mut t = format!(
        "### Wake: {rooms} rooms of 2 players, idle {} s, then one batch\n\nMachine: {}; load \
         average at start {load_avg}. Warm: a batch's send-to-receive time while the room is awake; \
         wake: the first batch after the idle time. Evicted: rooms whose instance started anew.\n\n\
         | target | rooms | evicted | warm p50 ms | warm max ms | wake p50 ms | wake max ms | wake p50 vs warm |\n\
         |---|---|---|---|---|---|---|---|\n",
        idle.as_secs(),
        machine()
    );
    let mut json =
        serde_json::json!({ "scenario": "wake", "machine": machine(), "idle_s": idle.as_secs() });
    for target in targets {
        let running = start(target, "wake", args).await;
        let w = wake::run(rooms, idle, &*running.url).await;
        let p = |v: &[u64], q| load::percentile_ms(v, q);
        let ratio = match (p(&w.wake_us, 0.5), p(&w.warm_us, 0.5)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
            _ => "-".into(),
        };
        t += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {ratio} |\n",
            target.label(),
            w.rooms,
            w.evicted,
            ms(p(&w.warm_us, 0.5)),
            ms(p(&w.warm_us, 1.0)),
            ms(p(&w.wake_us, 0.5)),
            ms(p(&w.wake_us, 1.0)),
        );
        json[target.key()] = w.to_json();
        drop(running);
    }
    println!("{t}");
    write_results("wake", &t, &json);
}

/// `bench cold`: [`cold::compile_ms`] of each module, with its size.
fn cold_report(args: &[String]) {
    let samples = arg(args, "--samples", 15) as usize;
    let wasms: Vec<std::path::PathBuf> = match arg_str(args, "--wasm") {
        Some(list) => list.split(',').map(std::path::PathBuf::from).collect(),
        None => vec![e2e_tests::repo_root().join("build/index_bg.wasm")],
    };
    let mut t = format!(
        "### Cold isolate: compiling the worker's wasm\n\nMachine: {}; load average at start {}. \
         `WebAssembly.compile` in Debian's Chromium (V8, the engine workerd runs; \
         `bench/cold-compile.mjs`), {samples} samples per module, each with bytes of its own so \
         no cache answers; lazy: V8's default (a function compiles at its first call), eager: \
         every function at once (`--no-wasm-lazy-compilation`). Ratios to the first module.\n\n\
         | module | size | gzip | lazy p50 ms | lazy min–max | eager p50 ms | eager min–max | eager p50 vs first |\n|---|---|---|---|---|---|---|---|\n",
        machine(),
        load_average(),
    );
    let mut json = serde_json::json!({ "scenario": "cold", "machine": machine(), "modules": [] });
    let mut first = None;
    for wasm in &wasms {
        let lazy = cold::compile_ms(wasm, samples, false);
        let eager = cold::compile_ms(wasm, samples, true);
        let (raw, gz) = cold::sizes(wasm).unwrap_or((0, 0));
        let p50 = |v: &[f64]| v.get(v.len() / 2).copied();
        first = first.or(p50(&eager));
        let vs = match (p50(&eager), first) {
            (Some(p), Some(f)) if f > 0.0 => format!("{:.2}×", p / f),
            _ => "-".into(),
        };
        let range = |v: &[f64]| format!("{}–{}", ms(v.first().copied()), ms(v.last().copied()));
        t += &format!(
            "| `{}` | {} KiB | {} KiB | {} | {} | {} | {} | {vs} |\n",
            wasm.display(),
            raw / 1024,
            gz / 1024,
            ms(p50(&lazy)),
            range(&lazy),
            ms(p50(&eager)),
            range(&eager),
        );
        if let Some(list) = json["modules"].as_array_mut() {
            list.push(serde_json::json!({
                "path": wasm.display().to_string(), "bytes": raw, "gzip_bytes": gz,
                "lazy_compile_ms": lazy, "eager_compile_ms": eager,
            }));
        }
    }
    println!("{t}");
    write_results("cold", &t, &json);
}

/// `bench saturate`: [`saturate::ramp`] on each target, a table of every step and one of the
/// capacities, as ratios to the baseline's.
async fn saturate_report(args: &[String]) {
    procs::raise_fd_limit();
    let rooms = arg(args, "--rooms", 1) as usize;
    let players = arg(args, "--players", 50) as usize;
    let seconds = Duration::from_secs(arg(args, "--seconds", 5));
    let rates: Vec<u32> = arg_str(args, "--rates")
        .unwrap_or_else(|| "10,20,40,80,160,320".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let targets = parse_targets(args, "baseline,fallback,edge");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let load_avg = load_average();
    let mut results = Vec::new();
    for target in targets {
        let running = start(target, "saturate", args).await;
        let steps = saturate::ramp(
            rooms,
            players,
            &rates,
            seconds,
            &*running.url,
            target != Target::Baseline,
            &running.pids,
        )
        .await;
        results.push((target, steps));
        drop(running);
    }
    let mut t = format!(
        "### Saturation: {rooms} room(s) × {players} players, every player sending; {} s per \
         offered rate\n\nMachine: {}; load average at start {load_avg}. A step meets the service \
         level with p99 ≤ {} ms and at most {}% of deliveries lost; the ramp stops after the \
         first step that does not. CPU: cores used during the step by the load generator and \
         by the target's processes, which share the machine's {cpus:.0}.\n\n\
         | target | offered batches/s per player | delivered/s | p99 ms | lost | met | generator cores | target cores |\n\
         |---|---|---|---|---|---|---|---|\n",
        seconds.as_secs(),
        machine(),
        saturate::P99_LIMIT_MS,
        saturate::LOSS_LIMIT * 100.0,
    );
    for (target, steps) in &results {
        for s in steps {
            t += &format!(
                "| {} | {} | {:.0} | {} | {:.2}% | {} | {:.2} | {:.2} |\n",
                target.label(),
                s.rate,
                s.outcome.delivered_per_sec(),
                ms(s.outcome.percentile(0.99)),
                100.0 * s.loss(),
                if s.met() { "yes" } else { "**no**" },
                s.generator_cores,
                s.target_cores,
            );
        }
    }
    let base = results
        .iter()
        .find(|(t, _)| *t == Target::Baseline)
        .and_then(|(_, s)| saturate::capacity(s));
    t += "\n| target | capacity: delivered/s at the service level | vs baseline | what stopped the ramp |\n|---|---|---|---|\n";
    let mut json = serde_json::json!({
        "scenario": "saturate", "machine": machine(), "rooms": rooms, "players": players,
        "seconds": seconds.as_secs(), "rates": rates, "load_average_at_start": load_avg,
    });
    for (target, steps) in &results {
        let cap = saturate::capacity(steps);
        let vs = match (cap, base) {
            (Some(c), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * c / b),
            _ => "-".into(),
        };
        let capped =
            *target != Target::Baseline && rates.iter().any(|r| *r > saturate::budget_per_player());
        let stopped = match steps.last() {
            Some(s) if s.met() && capped => format!(
                "the room's budget: every rate offered up to a player's {} note batches/s was met (p99 {} ms at {} batches/s); more would be refused by design",
                saturate::budget_per_player(),
                ms(s.outcome.percentile(0.99)),
                s.rate
            ),
            Some(s) if s.met() => "nothing: the highest rate offered was met".to_owned(),
            Some(s) if s.generator_cores + s.target_cores >= 0.9 * cpus => format!(
                "the machine's CPUs at {} batches/s (generator {:.2} + target {:.2} of {cpus:.0} cores; p99 {} ms, {:.2}% lost)",
                s.rate,
                s.generator_cores,
                s.target_cores,
                ms(s.outcome.percentile(0.99)),
                100.0 * s.loss()
            ),
            Some(s) => {
                let why = if s.target_cores >= 0.9 {
                    "one core's worth of target CPU: a room runs on one thread"
                } else if s.loss() > saturate::LOSS_LIMIT {
                    "the target dropped deliveries with CPU to spare"
                } else {
                    "the target's latency with CPU to spare"
                };
                format!(
                    "{why}, at {} batches/s (generator {:.2} + target {:.2} of {cpus:.0} cores; p99 {} ms, {:.2}% lost)",
                    s.rate,
                    s.generator_cores,
                    s.target_cores,
                    ms(s.outcome.percentile(0.99)),
                    100.0 * s.loss()
                )
            }
            None => "-".into(),
        };
        t += &format!(
            "| {} | {} | {vs} | {stopped} |\n",
            target.label(),
            cap.map(|c| format!("{c:.0}")).unwrap_or("-".into()),
        );
        json[target.key()] = serde_json::json!({
            "capacity_delivered_per_sec": cap,
            "stopped": stopped,
            "steps": steps.iter().map(|s| serde_json::json!({
                "rate": s.rate, "met": s.met(), "loss": s.loss(),
                "generator_cores": s.generator_cores, "target_cores": s.target_cores,
                "outcome": s.outcome.to_json(),
            })).collect::<Vec<_>>(),
        });
    }
    println!("{t}");
    write_results("saturate", &t, &json);
}

/// Writes `bench/results/<scenario>-<unix time>.md` and `.json`.
pub(crate) fn write_results(scenario: &str, table: &str, json: &serde_json::Value) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = e2e_tests::repo_root().join("bench/results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{scenario}-{stamp}.md")), table);
    let _ = std::fs::write(
        dir.join(format!("{scenario}-{stamp}.json")),
        serde_json::to_string_pretty(json).unwrap_or_default(),
    );
    eprintln!("bench: wrote bench/results/{scenario}-{stamp}.md and .json");
}

/// The load average (1, 5, 15 minutes) as `/proc/loadavg` has it, for the result tables.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `--targets`, or `default` (comma-separated target keys).
pub(crate) fn parse_targets(args: &[String], default: &str) -> Vec<Target> {
    arg_str(args, "--targets")
        .unwrap_or_else(|| default.into())
        .split(',')
        .map(|t| match t.trim() {
            "baseline" => Target::Baseline,
            "fallback" => Target::Fallback,
            "edge" => Target::Edge,
            "external" => Target::External,
            other => {
                eprintln!("unknown target {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        })
        .collect()
}

/// `--protocol protobuf|mpp|both`.
fn wires(args: &[String]) -> Vec<Wire> {
    match arg_str(args, "--protocol").as_deref() {
        None | Some("protobuf") => vec![Wire::Protobuf],
        Some("mpp") => vec![Wire::Mpp],
        Some("both") => vec![Wire::Protobuf, Wire::Mpp],
        Some(other) => {
            eprintln!("unknown protocol {other:?}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn edge_connections(fd_limit: u64) -> usize {
    (fd_limit * 9 / 10 / WORKERD_FDS_PER_CONNECTION) as usize
}

/// CPUs, CPU model and memory, as `nproc`, `lscpu` and `/proc/meminfo` tell.
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
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cpus} CPUs, {model}, {mem_gib:.1} GiB RAM")
}

fn wire_label(wire: Wire) -> &'static str {
    match wire {
        Wire::Protobuf => "",
        Wire::Mpp => " · MPP",
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or("-".into())
}

fn report(
    scenario: &str,
    load: &Load,
    count: usize,
    fd_limit: u64,
    load_avg: &str,
    rows: &[(Target, Wire, Measured)],
) -> String {
    let title = match scenario {
        "large-room" => format!(
            "Large room: 1 soloist and {} listeners, {} batches/s, {} s",
            load.players - 1,
            load.rate,
            load.duration.as_secs()
        ),
        "join-storm" => format!(
            "Join storm: {} joins/s into rooms of 50, {} s (latency: connect to Joined; sent = attempts, delivered = joined, lost = failed)",
            load.rate,
            load.duration.as_secs()
        ),
        "connections" => format!(
            "Connection scale: {count} idle joined connections in rooms of 50 (64 opening at a time), server VmRSS after − before, per connection"
        ),
        _ => format!(
            "Fan-out: {} rooms × {} players, {} batches/s each, {} s",
            load.rooms,
            load.players,
            load.rate,
            load.duration.as_secs()
        ),
    };
    let mut t = format!(
        "### {title}\n\nMachine: {}; load average at start {load_avg}.\n\n",
        machine()
    );
    if scenario == "connections" {
        let base = |wire: Wire| {
            rows.iter().find_map(|(target, w, m)| match m {
                Measured::Scale(s) if *target == Target::Baseline && *w == wire => {
                    s.kib_per_connection()
                }
                _ => None,
            })
        };
        t += "| target | opened | failed | source addresses | open time s | RSS before MiB | RSS after MiB | KiB per connection | vs baseline | process |\n\
              |---|---|---|---|---|---|---|---|---|---|\n";
        for (target, wire, m) in rows {
            let Measured::Scale(s) = m else { continue };
            let per = s.kib_per_connection();
            let vs = match (per, base(*wire)) {
                (Some(p), Some(b)) if b > 0.0 => format!("{:.1}×", p / b),
                _ => "-".into(),
            };
            t += &format!(
                "| {}{}{} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |\n",
                target.label(),
                wire_label(*wire),
                if *target == Target::Edge {
                    " (indicative)"
                } else {
                    ""
                },
                s.opened,
                s.failed,
                s.sources,
                s.open_time.as_secs_f64(),
                s.rss_before_kib as f64 / 1024.0,
                s.rss_after_kib as f64 / 1024.0,
                per.map(|p| format!("{p:.1}")).unwrap_or("-".into()),
                vs,
                s.measured,
            );
        }
        if let Some((_, _, Measured::Scale(s))) = rows.iter().find(|(t, _, _)| *t == Target::Edge) {
            t += "\nThe edge row sums workerd's VmRSS under `wrangler dev` (a development runtime, not \
                  Cloudflare's): indicative only.";
            if s.wanted < count {
                t += &format!(
                    " It is measured at {} connections, not {count}: workerd holds ~{WORKERD_FDS_PER_CONNECTION} \
                     descriptors per WebSocket and dies at its descriptor limit (\"accept: Too many open \
                     files\"), here {fd_limit} (this machine's hard limit, which the load generator raises \
                     its soft limit to and wrangler inherits).",
                    s.wanted
                );
            }
            t += "\n";
        }
        if rows.iter().any(|(_, w, _)| *w == Wire::Mpp) {
            t += MPP_NOTE;
        }
        return t;
    }
    // Each protocol is judged against the baseline relaying the same frames.
    let base = |wire: Wire| {
        rows.iter().find_map(|(target, w, m)| match m {
            Measured::Traffic(o) if *target == Target::Baseline && *w == wire => Some(o),
            _ => None,
        })
    };
    t += "| target | sent | delivered | delivered/s | delivered/s vs baseline | p50 ms | p95 ms | p99 ms | p99 vs baseline | max ms | lost |\n\
          |---|---|---|---|---|---|---|---|---|---|---|\n";
    for (target, wire, m) in rows {
        let Measured::Traffic(o) = m else { continue };
        let p = |q: f64| ms(o.percentile(q));
        let (rate_vs, p99_vs) = match base(*wire) {
            Some(b) => (
                format!(
                    "{:.0}%",
                    100.0 * o.delivered_per_sec() / b.delivered_per_sec().max(1e-9)
                ),
                match (o.percentile(0.99), b.percentile(0.99)) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.1}×", x / y),
                    _ => "-".into(),
                },
            ),
            None => ("-".into(), "-".into()),
        };
        t += &format!(
            "| {}{} | {} | {} | {:.0} | {rate_vs} | {} | {} | {} | {p99_vs} | {} | {} |\n",
            target.label(),
            wire_label(*wire),
            o.sent,
            o.latencies_us.len(),
            o.delivered_per_sec(),
            p(0.50),
            p(0.95),
            p(0.99),
            p(1.0),
            o.lost(),
        );
    }
    if rows.iter().any(|(_, w, _)| *w == Wire::Mpp) {
        t += MPP_NOTE;
    }
    t
}

const MPP_NOTE: &str = "\nRows marked MPP: the same load in Multiplayer Piano JSON (text frames; \
    `/mpp` on our servers, `hi` and `ch` into the room), each client from a loopback address of \
    its own; their ratios are to the baseline relaying the same text frames.\n";
