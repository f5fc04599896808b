//! The room's lease in cluster mode (renewed in the background, so the room never waits on
//! Redis) and the publisher of its frames for other replicas.

use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseView {
    /// Until when the lease is surely ours (the last renewal's send time plus the TTL).
    pub(super) valid_until: Instant,
    /// Redis said another replica holds it.
    pub(super) lost: bool,
}

/// Renews the room's lease every third of its TTL, off the room's task, and publishes what it
/// knows. Ends when the lease is lost or the room stops (the receiver is gone).
pub(super) async fn keep_lease(c: Arc<Cluster>, room: String, view: watch::Sender<LeaseView>) {
    let mut tick = tokio::time::interval(c.lease_ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        if view.is_closed() {
            return;
        }
        let sent = Instant::now();
        match c.renew(&room).await {
            Ok(true) => {
                let _ = view.send(LeaseView {
                    valid_until: sent + c.lease_ttl,
                    lost: false,
                });
            }
            Ok(false) => {
                view.send_modify(|v| v.lost = true);
                return;
            }
            Err(e) => redis_error("renewing a lease", &e),
        }
    }
}

pub(super) async fn publish_loop(c: Arc<Cluster>, mut rx: mpsc::Receiver<(String, Bytes)>) {
    while let Some((channel, payload)) = rx.recv().await {
        if let Err(e) = c.publish(&channel, payload).await {
            redis_error("publishing to a replica", &e);
        }
    }
}
