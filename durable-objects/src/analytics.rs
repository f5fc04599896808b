//! The edge's analytics sinks for the core's events (`piano_core::analytics`): Workers Analytics
//! Engine (the `ANALYTICS` binding, one data point per event, written at once: the runtime
//! batches them) and the optional HTTP sink (`ANALYTICS_URL`), one NDJSON POST per hand-over
//! of a room's activity (the room already hands over at most every 5 s while active, once a
//! minute while played), through the core's bounded [`Batcher`]. Failures are dropped and
//! counted in the log line; nothing is retried and a room never waits on them.

use piano_core::Millis;
use piano_core::analytics::{BatchLimits, Batcher, Event, Kind, Source};
use std::cell::{Cell, RefCell};
use worker::*;

/// The Analytics Engine binding's name in `wrangler.toml`.
pub const BINDING: &str = "ANALYTICS";

pub struct Analytics {
    dataset: Option<AnalyticsEngineDataset>,
    url: Option<String>,
    batcher: RefCell<Batcher>,
    /// Data points written, and events the HTTP sink accepted, by this instance (in the logs).
    written: Cell<u64>,
}

impl Analytics {
    pub fn new(env: &Env) -> Analytics {
        let var = |name: &str| {
            env.var(name)
                .ok()
                .map(|v| v.to_string())
                .filter(|v| !v.trim().is_empty())
        };
        let src = Source {
            env: crate::log::environment(env),
            deployment: crate::log::deployment(env),
        };
        let limits = BatchLimits {
            // One hand-over of one room: the room caps its players.
            queue: 2_000,
            batch: 500,
            max_wait_ms: 0,
        };
        Analytics {
            dataset: env.analytics_engine(BINDING).ok(),
            url: var("ANALYTICS_URL"),
            batcher: RefCell::new(Batcher::new(src, limits)),
            written: Cell::new(0),
        }
    }

    /// Whether any sink is configured (else rooms need not derive events).
    pub fn on(&self) -> bool {
        self.dataset.is_some() || self.url.is_some()
    }

    /// Writes the events to Analytics Engine and queues them for the HTTP sink.
    pub fn record(&self, events: Vec<Event>, now: Millis) {
        if let Some(ds) = &self.dataset {
            let (mut ok, mut failed) = (0u64, 0u64);
            for e in &events {
                match ds.write_data_point(&data_point(e, &self.batcher.borrow())) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            self.written.set(self.written.get() + ok);
            if let Some(room) = events.first().map(|e| e.room.as_str()) {
                // Debug when all went in (one line per hand-over per room is too many for
                // production logs), a warning when writes failed. The trial reads it at
                // LOG_LEVEL=debug (wrangler dev's Analytics Engine keeps nothing).
                let at = if failed > 0 {
                    crate::log::warn
                } else {
                    crate::log::debug
                };
                at("analytics_engine")
                    .room(room)
                    .field("written", ok)
                    .field("failed", failed)
                    .emit();
            }
        }
        if self.url.is_some() {
            self.batcher.borrow_mut().push(events, now);
        }
    }

    /// POSTs what is queued (one batch per call at most), then forgets it either way.
    pub async fn deliver(&self, now: Millis) {
        let Some(url) = &self.url else { return };
        let Some(batch) = self.batcher.borrow_mut().poll_batch(now, true) else {
            return;
        };
        let result = post(url, &batch.body).await;
        let mut b = self.batcher.borrow_mut();
        match result {
            Ok(()) => b.delivered(&batch),
            Err(e) => {
                b.failed(&batch);
                crate::log::warn(piano_core::logging::event::BACKEND_ERROR)
                    .error(e)
                    .field("events", batch.events)
                    .field("dropped_so_far", b.counters.dropped)
                    .msg("analytics batch dropped")
                    .emit();
            }
        }
    }
}

/// One event as an Analytics Engine data point: index the room (sampling key); blobs event,
/// environment, deployment, room, user; doubles count, notes, chats, played_ms, guest (0/1).
fn data_point(e: &Event, b: &Batcher) -> AnalyticsEngineDataPoint {
    let (notes, chats, played) = match e.kind {
        Kind::Activity {
            notes,
            chats,
            played_ms,
        } => (notes, chats, played_ms),
        _ => (0, 0, 0),
    };
    let src = b.source();
    AnalyticsEngineDataPointBuilder::new()
        .indexes([truncate(&e.room, 96)])
        .blobs([
            e.kind.name(),
            src.env.as_str(),
            src.deployment.as_str(),
            e.room.as_str(),
            e.user.as_str(),
        ])
        .doubles([
            e.count as f64,
            notes as f64,
            chats as f64,
            played as f64,
            if e.guest() { 1.0 } else { 0.0 },
        ])
        .build()
}

/// At most `max` bytes, on a character boundary (Analytics Engine's index limit is 96 bytes).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn post(url: &str, body: &str) -> Result<()> {
    let headers = Headers::new();
    headers.set("content-type", "application/x-ndjson")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let resp = Fetch::Request(Request::new_with_init(url, &init)?)
        .send()
        .await?;
    if (200..300).contains(&resp.status_code()) {
        Ok(())
    } else {
        Err(Error::RustError(format!("answered {}", resp.status_code())))
    }
}
