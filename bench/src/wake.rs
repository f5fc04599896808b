//! `bench wake` (issue 16): what waking a hibernated room costs its players. In each of R rooms
//! two players join; one plays a note batch the other receives (warm: the room is awake), then
//! nobody sends anything for `--idle` seconds, long enough for the runtime to evict the Room
//! object (`wrangler dev` evicts an idle object after about 10 s; its sockets stay open), and
//! the first batch after that is timed again: send to receive, through the wake (the object is
//! rebuilt from its storage and its sockets' attachments). Whether each room really was evicted
//! is checked, not assumed: the room's `GET /api/rooms/{name}` reports when its instance started
//! (the edge; the fallback never evicts a room with players, so its rows are the warm path
//! twice). Rooms are woken one after another so the wakes do not queue behind each other.

use crate::load;
use piano_client::{Connection, Event};
use piano_core::proto::{client_message, server_message};
use std::time::{Duration, Instant};

/// What one target measured.
#[derive(Debug, Default)]
pub struct Wake {
    pub rooms: usize,
    /// Rooms whose instance started anew during the idle time.
    pub evicted: usize,
    pub warm_us: Vec<u64>,
    pub wake_us: Vec<u64>,
}

impl Wake {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rooms": self.rooms,
            "evicted": self.evicted,
            "warm_ms": ms_summary(&self.warm_us),
            "wake_ms": ms_summary(&self.wake_us),
        })
    }
}

fn ms_summary(us: &[u64]) -> serde_json::Value {
    serde_json::json!({ "p50": load::percentile_ms(us, 0.5), "max": load::percentile_ms(us, 1.0) })
}

/// Sends batch `seq` from `from` and waits until `to` has it: the time in microseconds.
async fn relay_time(from: &mut Connection, to: &mut Connection, seq: u32) -> Option<u64> {
    let sent = Instant::now();
    from.send(client_message::Msg::Notes(load::batch(0, seq)))
        .await
        .ok()?;
    let deadline = sent + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match to.next_event(left).await? {
            Event::Msg(server_message::Msg::Notes(n)) if load::identify(&n) == Some((0, seq)) => {
                return Some(sent.elapsed().as_micros() as u64);
            }
            Event::Msg(_) => continue,
            _ => return None,
        }
    }
}

/// When the room's current instance started (the edge reports it; `None` elsewhere).
async fn instance_started(ws_url: &str) -> Option<u64> {
    let base = ws_url.replacen("ws://", "http://", 1);
    let info = base.split("/ws?").next()?;
    let body: serde_json::Value = reqwest::get(info).await.ok()?.json().await.ok()?;
    body["instance_started_at"].as_u64()
}

pub async fn run(
    rooms: usize,
    idle: Duration,
    url: &(dyn Fn(usize, usize) -> String + Sync),
) -> Wake {
    let mut out = Wake {
        rooms,
        ..Default::default()
    };
    let mut pairs = Vec::new();
    for room in 0..rooms {
        let a = load::connect_joined(&url(room, 0)).await;
        let b = load::connect_joined(&url(room, 1)).await;
        pairs.push((a, b));
    }
    let mut started = Vec::new();
    for (room, (a, b)) in pairs.iter_mut().enumerate() {
        // Let the joins' broadcasts pass, then time a batch while the room is awake.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(us) = relay_time(a, b, 1).await {
            out.warm_us.push(us);
        }
        started.push(instance_started(&url(room, 0)).await);
    }
    eprintln!("bench: wake: {rooms} rooms idle for {idle:?}");
    // Idle: nothing is sent, but the clients answer the server's pings (tungstenite does when
    // read), as real clients do.
    let readers: Vec<_> = pairs
        .into_iter()
        .map(|(a, b)| {
            tokio::spawn(async move {
                let (mut a, mut b) = (a, b);
                let until = tokio::time::Instant::now() + idle;
                let _ = tokio::time::timeout_at(until, async {
                    loop {
                        let ended = |e: Option<Event>| {
                            matches!(e, Some(Event::Closed(_) | Event::Broken(_)))
                        };
                        tokio::select! {
                            e = a.next_event(idle) => if ended(e) { break },
                            e = b.next_event(idle) => if ended(e) { break },
                        }
                    }
                })
                .await;
                (a, b)
            })
        })
        .collect();
    let mut pairs = Vec::new();
    for r in readers {
        if let Ok(p) = r.await {
            pairs.push(p);
        }
    }
    for (room, (a, b)) in pairs.iter_mut().enumerate() {
        if let Some(us) = relay_time(a, b, 2).await {
            out.wake_us.push(us);
        }
        let now = instance_started(&url(room, 0)).await;
        if now.is_some() && now != started.get(room).copied().flatten() {
            out.evicted += 1;
        }
    }
    for (a, b) in pairs {
        a.close().await;
        b.close().await;
    }
    out
}
