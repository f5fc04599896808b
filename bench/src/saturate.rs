//! `bench saturate` (issue 16): how much each target carries. The fan-out load (R rooms × P
//! players, every player sending) is offered at rising rates, each step in rooms of its own, until
//! a step misses the service level (p99 over 50 ms, or more than 0.1% of deliveries lost); the
//! target's capacity is the most deliveries per second of a step that met it, reported as a
//! ratio to the baseline's. Each step also records the CPU use of the load generator and of the
//! target's processes (`/proc/<pid>/stat` over the step's wall time, in cores): they share the
//! machine, so when together they near its cores the machine, not the target's design, is the
//! limit.
//!
//! A real server refuses a player's note batches beyond its budget (the core's
//! `budget::NOTE_BATCHES`, 50/s sustained): offering more measures that rule, not the server
//! (a first version of this ramp did, and read the refusals as lost deliveries). So servers are
//! offered only rates within it; a shape whose every step met the service level up to the budget
//! is capped by design there, and a room with more players measures further.

use crate::load::{self, Endpoint, Enter, Load, Outcome, Wire};
use std::time::{Duration, Instant};

/// The service level a step must meet.
pub const P99_LIMIT_MS: f64 = 50.0;
pub const LOSS_LIMIT: f64 = 0.001;

/// One offered rate on one target.
#[derive(Debug)]
pub struct Step {
    pub rate: u32,
    pub outcome: Outcome,
    /// The load generator's CPU use during the step, in cores.
    pub generator_cores: f64,
    /// The target's processes' CPU use during the step, in cores.
    pub target_cores: f64,
}

impl Step {
    pub fn loss(&self) -> f64 {
        self.outcome.lost() as f64 / (self.outcome.expected.max(1)) as f64
    }

    pub fn met(&self) -> bool {
        self.outcome
            .percentile(0.99)
            .is_some_and(|p| p <= P99_LIMIT_MS)
            && self.loss() <= LOSS_LIMIT
    }
}

/// The most deliveries per second of a step that met the service level.
pub fn capacity(steps: &[Step]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.met())
        .map(|s| s.outcome.delivered_per_sec())
        .reduce(f64::max)
}

/// CPU seconds used so far by these processes (the target's, or the generator's own).
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| crate::procs::cpu_seconds(*p))
        .sum()
}

/// The most note batches per second a server lets one player send, sustained.
pub fn budget_per_player() -> u32 {
    piano_core::room::budget::NOTE_BATCHES.sustained_per_second()
}

/// Ramps `rates` on one target (`server`: the real protocol, offered no rate over
/// [`budget_per_player`]; else the baseline), stopping after the first step that misses the
/// service level.
pub async fn ramp(
    rooms: usize,
    players: usize,
    rates: &[u32],
    seconds: Duration,
    url: &(dyn Fn(usize, usize) -> String + Sync),
    server: bool,
    target_pids: &[u32],
) -> Vec<Step> {
    let me = [std::process::id()];
    let mut steps = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        if server && rate > budget_per_player() {
            break;
        }
        let offered = Load {
            rooms,
            players,
            rate,
            senders: players,
            duration: seconds,
        };
        // Rooms of its own for every step: nothing of the last step's closing sockets.
        let endpoint = |room: usize, player: usize| Endpoint {
            url: url(i * rooms + room, player),
            enter: if server {
                Enter::Join
            } else {
                Enter::Connected
            },
        };
        let (mine, theirs, t0) = (cpu_seconds(&me), cpu_seconds(target_pids), Instant::now());
        let outcome = load::run(&offered, endpoint, Wire::Protobuf).await;
        let wall = t0.elapsed().as_secs_f64().max(1e-9);
        let step = Step {
            rate,
            outcome,
            generator_cores: (cpu_seconds(&me) - mine) / wall,
            target_cores: (cpu_seconds(target_pids) - theirs) / wall,
        };
        eprintln!(
            "bench: saturate: {rate} batches/s per player: {:.0} delivered/s, p99 {:?} ms, loss {:.3}%, generator {:.2} cores, target {:.2}",
            step.outcome.delivered_per_sec(),
            step.outcome.percentile(0.99),
            100.0 * step.loss(),
            step.generator_cores,
            step.target_cores
        );
        let met = step.met();
        steps.push(step);
        if !met {
            break;
        }
        // Let the last step's sockets go before the next.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    steps
}
