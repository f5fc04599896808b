//! Servers of their own ("rigs") that trials take turns on: one for the edge and one for the
//! fallback (a cluster's trial uses the fallback's), started at first use and stopped at the
//! end of the run (`drifts.rs`, `reports.rs`).

use crate::Host;
use std::sync::OnceLock;
use tokio::sync::Mutex;

pub struct Rigs<R> {
    rigs: [OnceLock<R>; 2],
    turns: [Mutex<()>; 2],
}

impl<R> Default for Rigs<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> Rigs<R> {
    pub const fn new() -> Rigs<R> {
        Rigs {
            rigs: [OnceLock::new(), OnceLock::new()],
            turns: [Mutex::const_new(()), Mutex::const_new(())],
        }
    }

    fn slot(host: Host) -> usize {
        match host {
            Host::Edge => 0,
            _ => 1,
        }
    }

    /// Runs `trial` with `host`'s rig to itself, starting it with `start` if it is the first.
    pub async fn with<F: std::future::Future<Output = ()>>(
        &'static self,
        host: Host,
        start: impl FnOnce(Host) -> R,
        trial: impl FnOnce(&'static R) -> F,
    ) {
        let i = Self::slot(host);
        let _turn = self.turns[i].lock().await;
        let rig = self.rigs[i].get_or_init(|| start(host));
        trial(rig).await;
    }

    /// `host`'s rig, started with `start` at first use, without taking a turn (a trial that
    /// has the rig to itself by other means).
    pub fn get(&'static self, host: Host, start: impl FnOnce(Host) -> R) -> &'static R {
        self.rigs[Self::slot(host)].get_or_init(|| start(host))
    }

    /// The rigs that were started.
    pub fn started(&self) -> impl Iterator<Item = &R> {
        self.rigs.iter().filter_map(OnceLock::get)
    }
}
