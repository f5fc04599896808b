//! The fidelity scenario's client, on the client crate (`piano-client`): the web client's rules
//! (`sdk/src/connection.ts`) and the resume contract's client side (`docs/resume.md` §5).
//!
//! - Clock: the crate's `Clock` (Ping/Pong; of the last 16 samples, the one with the smallest
//!   round trip gives the offset; a burst of pings at each open, then one every ten seconds).
//!   The client's clock is the system clock in microseconds (a browser's `Date.now()` is whole
//!   milliseconds: up to 1 ms more rounding there).
//! - A driver task owns the crate's `Room`: it sends what the role queues (numbered, kept until
//!   acknowledged), reads, and on a drop reconnects at once (then 250 ms, 500 ms, … up to 4 s),
//!   resumes and re-sends, in order, the numbered messages the room has not acknowledged; on
//!   `ResumeFailed` it joins afresh and re-sends what never left.

use piano_client::{Connection, Dial, JoinOptions, Reentry, Room};
use piano_core::proto::{self, client_message, server_message};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub use piano_client::clock::{Clock, now_ms};

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
    room: Room,
    clock: Arc<Mutex<Clock>>,
    notes: mpsc::UnboundedSender<(f64, proto::NoteBatch)>,
    stats: Stats,
}

fn join_options() -> JoinOptions {
    JoinOptions {
        password: String::new(),
        settings: Some(proto::UpdateSettings {
            max_players: Some(99),
            ..Default::default()
        }),
    }
}

/// Connects, joins (creating the room), and starts the driver.
pub async fn start(url: String) -> Result<Client, String> {
    let conn = Connection::connect(Dial::new(&url))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut room = Room::new(conn);
    room.join(join_options())
        .await
        .map_err(|e| format!("join: {e}"))?;
    let clock = Arc::new(Mutex::new(Clock::default()));
    let (notes_tx, notes) = mpsc::unbounded_channel();
    let (out, out_rx) = mpsc::unbounded_channel();
    let d = Driver {
        room,
        clock: clock.clone(),
        notes: notes_tx,
        stats: Stats::default(),
    };
    let driver = tokio::spawn(d.run(out_rx));
    Ok(Client {
        clock,
        out,
        notes,
        driver,
    })
}

impl Driver {
    /// Until the role drops its sender: send, read, ping; reconnect and resume on a drop.
    async fn run(mut self, mut out: mpsc::UnboundedReceiver<Out>) -> Stats {
        loop {
            let broken = tokio::select! {
                biased;
                o = out.recv() => match o {
                    Some(Out::Numbered(msg)) => self.room.send_kept(msg).await.is_err(),
                    None => {
                        self.stats.resent = u32::try_from(self.room.resent).unwrap_or(u32::MAX);
                        self.room.close().await;
                        return self.stats;
                    }
                },
                // The room runs its pings meanwhile.
                m = self.room.next(Duration::from_secs(1)) => match m {
                    Ok(Some(m)) => {
                        self.read(m);
                        false
                    }
                    Ok(None) => false,
                    Err(_) => true,
                },
            };
            if broken {
                self.reconnect().await;
            }
        }
    }

    fn read(&mut self, m: server_message::Msg) {
        let arrival = now_ms();
        match m {
            server_message::Msg::Notes(n) => {
                let _ = self.notes.send((arrival, n));
            }
            server_message::Msg::Pong(_) => {
                if let Ok(mut c) = self.clock.lock() {
                    *c = self.room.clock.clone();
                }
            }
            server_message::Msg::NotesDropped(d) => {
                self.stats.notes_refused += u64::from(d.dropped);
            }
            server_message::Msg::Error(e) => {
                self.stats.errors.push(format!("error: {}", e.message));
            }
            _ => {}
        }
    }

    /// After a drop: a new socket, then Resume (or Join), at once and then with backoff.
    async fn reconnect(&mut self) {
        self.stats.drops += 1;
        let dropped = now_ms();
        loop {
            match self.room.reconnect(u32::MAX).await {
                Ok(Reentry::Resumed(r)) => {
                    self.stats.resumed += 1;
                    if !r.complete {
                        self.stats.snapshots += 1;
                    }
                }
                Ok(Reentry::Rejoined(_)) => {
                    self.stats.rejoined += 1;
                    self.stats
                        .errors
                        .push("resume failed: joined afresh".into());
                }
                Err(e) => {
                    self.stats.errors.push(format!("reconnect: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            self.stats.reconnect_ms.push(now_ms() - dropped);
            return;
        }
    }
}
