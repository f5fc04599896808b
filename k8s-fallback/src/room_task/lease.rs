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

/// What the room's publisher writes to Redis, in this order.
pub(super) enum Pub {
    /// A message for another replica's channel.
    Frame(String, Bytes),
    /// Resume state (`crate::kept`): ordered with the frames, so a replay entry is in Redis
    /// before its broadcast reaches another replica (whose players may then resume on a new
    /// holder after this one dies, from what they received).
    Keep(Box<Keep>),
    /// Forget the room's replay entries if no session is left.
    ForgetKept,
    /// Answered once everything before it was written.
    Flush(oneshot::Sender<()>),
}

/// Most items written in one pipeline.
const PIPELINE: usize = 256;

pub(super) async fn publish_loop(c: Arc<Cluster>, room: String, mut rx: mpsc::Receiver<Pub>) {
    let mut batch = Vec::with_capacity(PIPELINE);
    while rx.recv_many(&mut batch, PIPELINE).await > 0 {
        // What queued up meanwhile goes in one pipeline: Redis runs it in order.
        let mut pipe = redis::pipe();
        let mut flushed = Vec::new();
        for item in batch.drain(..) {
            match item {
                Pub::Frame(channel, payload) => {
                    pipe.publish(channel, payload.as_ref()).ignore();
                }
                Pub::Keep(k) => crate::kept::redis_keep(&mut pipe, &room, *k),
                Pub::ForgetKept => crate::kept::redis_forget(&mut pipe, &room),
                Pub::Flush(reply) => flushed.push(reply),
            }
        }
        if pipe.cmd_iter().next().is_some()
            && let Err(e) = c.conn.pipe::<()>(&pipe).await
        {
            redis_error("publishing to a replica", &e);
        }
        for reply in flushed {
            let _ = reply.send(());
        }
    }
}
