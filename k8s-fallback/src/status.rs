//! `GET /api/status`: each component's state as the core derives it (`piano_core::status`) from
//! what this replica sees: its outbox backlog per lane, whether Redis answers a PING, whether it
//! is draining. Cached for `CACHE_MS` per replica (one request refreshes, the others get the
//! previous answer meanwhile), so the endpoint (public) cannot be used to hammer Redis or the
//! outbox file.

use crate::hub::Hub;
use piano_core::metrics::LaneBacklog;
use piano_core::outbox::Lane;
use piano_core::status::{Cached, Component, LaneFacts, Lookup, Status, lane};
use std::sync::Mutex;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// The last answer and when it was gathered; one request refreshes it at a time
/// (`piano_core::status::Cached`).
#[derive(Default)]
pub struct Cache(Mutex<Cached<serde_json::Value>>);

/// Clears the refreshing mark when a gathering is cancelled (the client went away).
struct Refreshing<'a>(&'a Cache);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.lock().abandon();
    }
}

/// The outbox's backlog per lane (zeros without MongoDB: the fallback's outbox serves it only).
pub fn backlog(hub: &Hub) -> [LaneBacklog; 2] {
    hub.mongo
        .as_ref()
        .and_then(|m| m.outbox().backlog().ok())
        .unwrap_or_default()
}

impl Cache {
    pub async fn get(&self, hub: &Hub) -> serde_json::Value {
        let now = crate::now_ms();
        let lookup = self.lock().lookup(now);
        if let Lookup::Ready(v) = lookup {
            return v;
        }
        let guard = Refreshing(self);
        let v = serde_json::to_value(gather(hub, now).await).unwrap_or_default();
        std::mem::forget(guard);
        self.lock().store(now, v.clone());
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached<serde_json::Value>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn gather(hub: &Hub, now: u64) -> Status {
    let backlog = backlog(hub);
    let at = |l: Lane| backlog[l.index()];
    let redis_up = match &hub.cluster {
        Some(c) => Some(
            tokio::time::timeout(Duration::from_secs(1), c.ping())
                .await
                .unwrap_or(false),
        ),
        None => None,
    };
    let rooms = if hub.draining.load(SeqCst) {
        Component::down("this replica is shutting down")
    } else {
        Component::up()
    };
    // With Redis, the directory and the accounts live there.
    let shared = match redis_up {
        Some(false) => Component::down("Redis does not answer"),
        _ => Component::up(),
    };
    let mongodb = lane(match hub.mongo {
        Some(_) => LaneFacts::Configured {
            backlog: at(Lane::Mongo),
            reachable: None,
        },
        None => LaneFacts::NotConfigured,
    });
    let redis = lane(match redis_up {
        Some(up) => LaneFacts::Configured {
            backlog: at(Lane::Redis),
            reachable: Some(up),
        },
        None => LaneFacts::NotConfigured,
    });
    Status::new(
        "fallback",
        &hub.cfg.release,
        [rooms, shared.clone(), shared, mongodb, redis],
        now,
    )
}
