//! The optional HTTP analytics sink (`ANALYTICS_URL`): rooms hand their events over without
//! waiting ([`Sink::send`], a bounded channel; a full one drops and counts), one task batches them
//! with the core's [`Batcher`] (by count and by time) and POSTs each batch as NDJSON. A batch
//! that fails is dropped and counted: analytics never hold a room back and are never retried.
//!
//! `http://` (an in-cluster collector or sidecar) or `https://`: the POSTs go through the same
//! HTTP client library as error reports (`reqwest` with rustls, `crate::telemetry`).

use crate::config::AnalyticsTarget as Target;
use crate::metrics::METRICS;
use piano_core::analytics::{Batch, BatchLimits, Batcher, Event, Source};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Hand-overs the channel holds before rooms' events are dropped (the batcher holds more).
const CHANNEL: usize = 1024;
/// One POST, connect included.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What rooms hold: the sending side of the sink's channel.
pub struct Sink {
    tx: mpsc::Sender<Msg>,
}

enum Msg {
    Events(Vec<Event>),
    /// Deliver everything queued now, then answer (the process is stopping).
    Flush(oneshot::Sender<()>),
}

impl Sink {
    /// Starts the delivery task.
    pub fn start(target: Target, src: Source, limits: BatchLimits) -> Sink {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()
            .unwrap_or_default();
        tokio::spawn(deliver(client, target, Batcher::new(src, limits), rx));
        Sink { tx }
    }

    /// Hands events over, never waiting: a full channel drops them (counted).
    pub fn send(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        if self.tx.try_send(Msg::Events(events)).is_err() {
            METRICS.analytics_dropped.fetch_add(n, Relaxed);
        }
    }

    /// Delivers what is queued, waiting at most `within` (after the rooms stopped, so their
    /// last hand-overs are in).
    pub async fn drain(&self, within: Duration) {
        let (reply, done) = oneshot::channel();
        let flushed = async {
            if self.tx.send(Msg::Flush(reply)).await.is_ok() {
                let _ = done.await;
            }
        };
        if tokio::time::timeout(within, flushed).await.is_err() {
            tracing::warn!("analytics: not every event was delivered before stopping");
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    target: Target,
    mut batcher: Batcher,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut open = true;
    let mut flush: Option<oneshot::Sender<()>> = None;
    while open || !batcher.is_empty() {
        let now = crate::now_ms();
        let wait = batcher
            .poll_timeout()
            .map(|d| Duration::from_millis(d.saturating_sub(now)));
        tokio::select! {
            got = rx.recv(), if open => match got {
                Some(Msg::Events(events)) => push(&mut batcher, events),
                Some(Msg::Flush(reply)) => flush = Some(reply),
                None => open = false,
            },
            _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => {}
        }
        // Whatever is due now, one batch after another (the channel waits meanwhile).
        let now_please = !open || flush.is_some();
        while let Some(batch) = batcher.poll_batch(crate::now_ms(), now_please) {
            match post(&client, &target, &batch).await {
                Ok(()) => {
                    batcher.delivered(&batch);
                    METRICS
                        .analytics_delivered
                        .fetch_add(batch.events as u64, Relaxed);
                }
                Err(e) => {
                    batcher.failed(&batch);
                    METRICS
                        .analytics_dropped
                        .fetch_add(batch.events as u64, Relaxed);
                    METRICS.analytics_failed_batches.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, events = batch.events, "analytics batch dropped");
                }
            }
        }
        METRICS
            .analytics_queued
            .store(batcher.len() as u64, Relaxed);
        if let Some(reply) = flush.take() {
            let _ = reply.send(());
        }
    }
}

fn push(batcher: &mut Batcher, events: Vec<Event>) {
    let before = batcher.counters.dropped;
    batcher.push(events, crate::now_ms());
    let dropped = batcher.counters.dropped - before;
    if dropped > 0 {
        METRICS.analytics_dropped.fetch_add(dropped, Relaxed);
    }
}

/// One POST of `application/x-ndjson`; `Ok` on a 2xx answer.
async fn post(client: &reqwest::Client, target: &Target, batch: &Batch) -> Result<(), String> {
    let resp = client
        .post(target.url.clone())
        .header("content-type", "application/x-ndjson")
        .body(batch.body.clone())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn http_and_https_urls_are_accepted() {
        let t = Target::parse(" http://collector:9000/ingest ").unwrap();
        assert_eq!(t.url.as_str(), "http://collector:9000/ingest");
        assert!(Target::parse("https://c.example/x").is_ok());
        assert!(Target::parse("ftp://c/x").is_err());
        assert!(Target::parse("http://").is_err());
        assert!(Target::parse("https://user:pw@c/x").is_err());
        assert!(Target::parse("collector:9000").is_err());
    }
}
