//! The fan-out load: clients, their send schedule, and what they measure. The protobuf
//! clients join and frame their messages through the client crate (`piano-client`), then drive
//! the socket themselves (a timed sender and a reader per socket; the baseline and MPP clients
//! share that path, so every server is measured by the same client).

use futures_util::{SinkExt, StreamExt};
use piano_client::conn::{Connection, Dial, decode, frame};
use piano_core::proto::{self, ClientMessage, client_message, note_event, server_message};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How the load's clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Our protocol: protobuf in binary frames.
    Protobuf,
    /// Multiplayer Piano JSON in text frames (`mpp_wire`).
    Mpp,
}

/// Where one simulated player connects, and how it gets into its room.
pub struct Endpoint {
    pub url: String,
    pub enter: Enter,
}

pub enum Enter {
    /// The baseline: connected is in (it relays every frame as it is).
    Connected,
    /// Our protocol: `Join` after the `Welcome`.
    Join,
    /// MPP: `hi` (with our token, if any), then `ch` into `room`.
    Mpp { room: String, token: Option<String> },
}

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
    /// Join storms: the part of each join's latency spent before the WebSocket was open
    /// (TCP, the upgrade, the token check and the hop to the room), the rest being the room's
    /// answer to `Join`.
    pub connect_us: Vec<u64>,
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
        percentile_ms(&self.latencies_us, q)
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
            "connect_ms": (!self.connect_us.is_empty()).then(|| serde_json::json!({
                "p50": percentile_ms(&self.connect_us, 0.50),
                "p99": percentile_ms(&self.connect_us, 0.99),
            })),
        })
    }
}

/// Percentile `q` of microsecond samples, in milliseconds (q = 1.0 is the maximum).
pub fn percentile_ms(us: &[u64], q: f64) -> Option<f64> {
    if us.is_empty() {
        return None;
    }
    let mut v = us.to_vec();
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i] as f64 / 1000.0)
}

/// Which batch this is: who sent it and its sequence number, carried in the events themselves
/// so the bare baseline (which relays bytes untouched) is measured exactly like the real server.
pub(crate) fn batch(player: usize, seq: u32) -> proto::NoteBatch {
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

pub(crate) fn identify(b: &proto::NoteBatch) -> Option<(usize, u32)> {
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
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Join-or-create a room of `capacity` on an upgraded socket, through the client crate (the
/// Welcome, then Joined, at most [`JOIN_WITHIN`]); `None` when the room refused, the socket
/// ended or the time passed.
async fn join(ws: Ws, capacity: u32) -> Option<Ws> {
    let mut conn = Connection::adopt(ws, Dial::default());
    let settings = proto::UpdateSettings {
        max_players: Some(capacity),
        ..Default::default()
    };
    let join = proto::Join {
        password: String::new(),
        create_settings: Some(settings),
    };
    conn.join(join, JOIN_WITHIN).await?.ok()?;
    Some(conn.into_ws())
}

/// The longest a join may take (a saturated server answers late, not never).
const JOIN_WITHIN: Duration = Duration::from_secs(60);

/// MPP's `hi` and `ch`, and the `ch` answer that says we are in.
async fn enter_mpp(ws: &mut Ws, room: &str, token: Option<&str>, capacity: u32) -> Option<()> {
    let (hi, ch) = crate::mpp_wire::enter(room, token, capacity);
    ws.send(Message::Text(hi.into())).await.ok()?;
    wait_text(ws, |t| crate::mpp_wire::holds(t, "hi", room)).await?;
    ws.send(Message::Text(ch.into())).await.ok()?;
    wait_text(ws, |t| crate::mpp_wire::holds(t, "ch", room)).await
}

/// Waits (at most 15 s) for a text frame `done` accepts; `None` on a refusal (MPP servers
/// refuse a sign-in or a room with a `notification`, not a close), the socket's end or the time.
async fn wait_text(ws: &mut Ws, done: impl Fn(&str) -> bool) -> Option<()> {
    let wait = async {
        loop {
            let Message::Text(t) = ws.next().await?.ok()? else {
                continue;
            };
            if done(&t) {
                return Some(());
            }
            if crate::mpp_wire::refused(&t) {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .ok()
        .flatten()
}

/// A protobuf client joined to the room of `url` (the wake scenario's players): the client
/// crate's connection, which sends nothing by itself (no pings: an idle room may hibernate).
pub(crate) async fn connect_joined(url: &str) -> Connection {
    let mut conn = Connection::connect(Dial::new(url))
        .await
        .expect("bench client connects");
    let join = proto::Join {
        password: String::new(),
        create_settings: Some(proto::UpdateSettings {
            max_players: Some(99),
            ..Default::default()
        }),
    };
    let joined = conn.join(join, JOIN_WITHIN).await;
    assert!(
        matches!(joined, Some(Ok(_))),
        "bench client joins: {joined:?}"
    );
    conn
}

/// Gets a connected client into its room as `enter` says; `None` when the room refused or the
/// socket ended.
async fn enter(mut ws: Ws, enter: &Enter, capacity: u32) -> Option<Ws> {
    match enter {
        Enter::Connected => Some(ws),
        Enter::Join => join(ws, capacity).await,
        Enter::Mpp { room, token } => {
            enter_mpp(&mut ws, room, token.as_deref(), capacity).await?;
            Some(ws)
        }
    }
}

/// Connects player `index` of the load (the steady loads expect every connection to open).
async fn connect(url: &str, wire: Wire, index: usize) -> Ws {
    connect_as(url, wire, index)
        .await
        .expect("bench client connects")
}

/// Connects player `index`. MPP clients each come from a loopback address of their own
/// (127.0.0.2 and up) when the server is on loopback: many MPP servers take one address for
/// one participant.
async fn connect_as(url: &str, wire: Wire, index: usize) -> Option<Ws> {
    // Plain ws:// to an IPv4 loopback address (an IP or `localhost`): the only case where
    // binding another loopback source address works.
    let loopback_v4 = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| {
            let (host, _) = authority.rsplit_once(':')?;
            Some(host == "localhost" || host.parse::<std::net::Ipv4Addr>().ok()?.is_loopback())
        })
        .unwrap_or(false);
    if wire == Wire::Mpp && loopback_v4 {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (index % 250) as u8);
        return connect_from(source, url, None).await;
    }
    tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// Runs the load against `endpoint(room, player)`, speaking `wire`.
pub async fn run(load: &Load, endpoint: impl Fn(usize, usize) -> Endpoint, wire: Wire) -> Outcome {
    let sent: Sent = Arc::default();
    let mut sockets = Vec::new();
    // Room for everyone (the default capacity is 20; above 99 the creator must be an admin,
    // which the bench's tokens are).
    let capacity = load.players.max(99) as u32;
    let mut server = true;
    for room in 0..load.rooms {
        for player in 0..load.players {
            let Endpoint { url, enter: how } = endpoint(room, player);
            let ws = connect(&url, wire, room * load.players + player).await;
            server &= !matches!(how, Enter::Connected);
            let ws = enter(ws, &how, capacity)
                .await
                .expect("bench client enters its room");
            sockets.push((room, player, ws));
        }
    }

    // Everyone's joins were broadcast to the others (a 1,000-listener room queues ~500,000
    // ParticipantJoined frames): the receivers start now and drain that backlog, and the senders
    // start once it had time to settle, so latency is the steady state's, not the joins'.
    let settle = Duration::from_millis(1000 + 2 * (load.rooms * load.players) as u64);
    let started = Instant::now() + settle;
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
            tokio::time::sleep_until(
                (started + interval.mul_f64((player as f64 * 0.37) % 1.0)).into(),
            )
            .await;
            let mut tick = tokio::time::interval(interval);
            let mut seq = 0u32;
            let mut count = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                let frame = match wire {
                    Wire::Protobuf => frame(client_message::Msg::Notes(batch(player, seq)), 0),
                    Wire::Mpp => Message::Text(crate::mpp_wire::batch(player, seq).into()),
                };
                if let Ok(mut s) = sent_w.lock() {
                    s.insert((room, player, seq), Instant::now());
                }
                if sink.send(frame).await.is_err() {
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
                let received = Instant::now();
                for (from, seq) in batches_in(&msg, server) {
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

/// The (sender, seq) of the batches in a received frame: the real server's `ServerMessage`s or
/// MPP `n` messages, or for the baseline (`server` false) the senders' own frames.
fn batches_in(msg: &Message, server: bool) -> Vec<(usize, u32)> {
    let notes = match msg {
        Message::Text(t) => return crate::mpp_wire::identify(t),
        Message::Binary(_) if server => match decode(msg).and_then(|m| m.msg) {
            Some(server_message::Msg::Notes(n)) => n,
            _ => return Vec::new(),
        },
        Message::Binary(b) => match ClientMessage::decode(&b[..]).ok().and_then(|m| m.msg) {
            Some(client_message::Msg::Notes(n)) => n,
            _ => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    identify(&notes).into_iter().collect()
}

/// Join storm: `rate` new players per second for `seconds`, into rooms of at most 50. Measures
/// the time from starting to connect to having joined (the server's Joined, or for the baseline
/// the WebSocket handshake), and counts failures. Connections stay open to the end.
pub async fn join_storm(
    rate: u32,
    seconds: u64,
    endpoint: impl Fn(usize, usize) -> Endpoint,
    wire: Wire,
) -> Outcome {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = rate as usize * seconds as usize;
    let mut tick = tokio::time::interval(interval);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let Endpoint { url, enter: how } = endpoint(i / 50, i % 50);
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let ws = connect_as(&url, wire, i).await?;
            let open = t0.elapsed().as_micros() as u64;
            let ws = enter(ws, &how, 99).await?;
            Some((t0.elapsed().as_micros() as u64, open, ws))
        }));
    }
    let mut out = Outcome {
        sent: total as u64,
        expected: total as u64,
        ..Default::default()
    };
    let mut open = Vec::new();
    for t in tasks {
        if let Ok(Some((us, connect, ws))) = t.await {
            out.latencies_us.push(us);
            out.connect_us.push(connect);
            open.push(ws);
        }
    }
    out.elapsed = started.elapsed();
    eprintln!(
        "bench: join-storm: open p50 {:?} ms p99 {:?} ms; the whole join p50 {:?} ms p99 {:?} ms",
        percentile_ms(&out.connect_us, 0.5),
        percentile_ms(&out.connect_us, 0.99),
        out.percentile(0.5),
        out.percentile(0.99),
    );
    for mut ws in open {
        let _ = ws.close(None).await;
    }
    out
}

/// What the connection-scale scenario measured on one server.
#[derive(Debug, Default)]
pub struct Scale {
    pub wanted: usize,
    pub opened: usize,
    pub failed: usize,
    /// Source addresses the clients were bound to (127.0.0.2 and up).
    pub sources: usize,
    pub open_time: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// The processes measured, e.g. `k8s-fallback[1234]`.
    pub measured: String,
}

impl Scale {
    /// Server memory per open connection, in KiB.
    pub fn kib_per_connection(&self) -> Option<f64> {
        (self.opened > 0)
            .then(|| (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.opened as f64)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "wanted": self.wanted,
            "opened": self.opened,
            "failed": self.failed,
            "source_addresses": self.sources,
            "open_seconds": self.open_time.as_secs_f64(),
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "kib_per_connection": self.kib_per_connection(),
            "measured": self.measured,
        })
    }
}

/// Opens one client connection from `source` (a loopback address of its own, so more than one
/// address's ~28k ephemeral ports are available) to the server in `url`, with `config` (the
/// default client's when `None`: the traffic loads compare protocols on equal clients).
async fn connect_from(
    source: std::net::Ipv4Addr,
    url: &str,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
) -> Option<Ws> {
    let authority = url.split("://").nth(1)?.split('/').next()?;
    let server: std::net::SocketAddr = match authority.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(authority)
            .await
            .ok()?
            .find(std::net::SocketAddr::is_ipv4)?,
    };
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((source, 0).into()).ok()?;
    let stream = socket.connect(server).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(stream), config)
            .await
            .ok()?;
    Some(ws)
}

/// Connection scale: opens `count` connections (64 at a time, each joined to a room of 50 on the
/// real servers) spread over several source addresses, keeps them open and read (idle players
/// still receive the others' joins and answer pings), and measures the summed `VmRSS` of `pids`
/// before and after. Stops opening new connections after `budget`.
pub async fn connections(
    count: usize,
    endpoint: &(dyn Fn(usize, usize) -> Endpoint + Sync),
    pids: &[u32],
    budget: Duration,
) -> Scale {
    let sources = count.div_ceil(20_000).clamp(4, 250);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut out = Scale {
        wanted: count,
        sources,
        rss_before_kib: crate::procs::total_rss_kib(pids),
        measured: pids
            .iter()
            .map(|p| crate::procs::describe(*p))
            .collect::<Vec<_>>()
            .join(" + "),
        ..Default::default()
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        if started.elapsed() > budget {
            eprintln!("bench: connection budget of {budget:?} spent after {i} connections");
            break;
        }
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let Endpoint { url, enter: how } = endpoint(i / 50, i % 50);
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
        let task = tokio::spawn(async move {
            let ws = async {
                // Small client buffers: the load generator holds every connection too.
                let lean = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let ws = connect_from(source, &url, Some(lean)).await?;
                enter(ws, &how, 50).await
            }
            .await;
            drop(permit);
            let Some(mut ws) = ws else {
                let _ = ready_tx.send(false);
                return;
            };
            let _ = ready_tx.send(true);
            // Idle, but a client all the same: read what arrives until told to stop.
            while let Some(Ok(_)) = ws.next().await {}
        });
        tasks.push((task, ready_rx));
        if (i + 1) % 2000 == 0 {
            eprintln!(
                "bench: {} connections started after {:.1}s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let mut handles = Vec::with_capacity(tasks.len());
    for (task, ready) in tasks {
        if ready.await.unwrap_or(false) {
            out.opened += 1;
        } else {
            out.failed += 1;
        }
        handles.push(task);
    }
    out.open_time = started.elapsed();
    // Let the server settle (queued joins broadcast, buffers drained), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    out.rss_after_kib = crate::procs::total_rss_kib(pids);
    for h in &handles {
        h.abort();
    }
    for h in handles {
        let _ = h.await;
    }
    out
}
