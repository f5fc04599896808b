//! The room directory on this host: the replica's copy of every room's report, pushed to
//! subscribed rooms as one coalesced delta per tick; the shared copy in Redis (cluster mode),
//! written by one task that keeps only the newest report per room; the per-user cap on
//! room-list subscriptions; and the sweep of rooms nobody runs any more.

use crate::cluster::{self, Cluster};
use crate::hub::{Hub, lock};
use crate::metrics::redis_error;
use crate::now_ms;
use piano_core::lobby::{MAX_SUBSCRIBED_ROOMS_PER_USER, PUSH_TICK_MS, Report};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// KEYS: the user's set of subscribed rooms. ARGV: room, cap, TTL (ms). 1 if subscribed.
const SUBSCRIBE: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
  redis.call('SADD', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";
/// A user's subscription set outlives a replica that died holding it by at most this long.
const SUBSCRIPTION_TTL_MS: u64 = 60 * 60 * 1000;

impl Hub {
    /// May `user` follow the room list from `room`? At most
    /// [`MAX_SUBSCRIBED_ROOMS_PER_USER`] rooms per user: in this process standalone, across the
    /// deployment in Redis (`piano:subs:{user}`, a set of rooms, expiring after an hour unless
    /// renewed). If Redis fails the subscription is allowed (the per-connection subscribe budget
    /// still applies).
    pub async fn subscribe_user(&self, room: &str, user: &str) -> bool {
        let Some(c) = &self.cluster else {
            return lock(&self.subscribers).subscribe(room, Some(user)).is_ok();
        };
        let script = redis::Script::new(SUBSCRIBE);
        let mut call = script.key(format!("piano:subs:{user}"));
        call.arg(room)
            .arg(MAX_SUBSCRIBED_ROOMS_PER_USER)
            .arg(SUBSCRIPTION_TTL_MS);
        let allowed: redis::RedisResult<i64> = c.conn.script(&call).await;
        match allowed {
            Ok(n) => n == 1,
            Err(e) => {
                redis_error("counting a user's subscriptions", &e);
                true
            }
        }
    }

    /// `user`'s last subscribed socket in `room` went (others there still follow the list).
    pub async fn unsubscribe_user(&self, room: &str, user: &str) {
        let Some(c) = &self.cluster else {
            lock(&self.subscribers).unsubscribe_user(room, user);
            return;
        };
        let mut srem = redis::cmd("SREM");
        srem.arg(format!("piano:subs:{user}")).arg(room);
        if let Err(e) = c.conn.cmd::<i64>(&srem).await {
            redis_error("ending a subscription", &e);
        }
    }

    /// Nobody in `room` follows the room list any more (or the room stopped): these users'
    /// subscriptions there end.
    pub async fn unsubscribe_room(&self, room: &str, users: Vec<String>) {
        let Some(c) = &self.cluster else {
            lock(&self.subscribers).remove_room(room);
            return;
        };
        let mut pipe = redis::pipe();
        for user in &users {
            pipe.srem(format!("piano:subs:{user}"), room).ignore();
        }
        if let Err(e) = c.conn.pipe::<()>(&pipe).await {
            redis_error("ending subscriptions", &e);
        }
    }
}

/// Every [`PUSH_TICK_MS`], the directory's coalesced change goes to the rooms (so ten settings
/// toggles in a tick are one push, not ten).
pub(crate) async fn push_deltas(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_millis(PUSH_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hub.push_delta();
    }
}

/// Directory reports not written yet, the newest per room.
#[derive(Default)]
pub(crate) struct PendingReports {
    reports: Mutex<HashMap<String, Report>>,
    wake: tokio::sync::Notify,
}

impl PendingReports {
    pub(crate) fn put(&self, report: Report) {
        let mut pending = lock(&self.reports);
        match pending.get(&report.summary.name) {
            // Versions only grow per room; an older one arriving late changes nothing.
            Some(old) if old.version > report.version => {}
            _ => {
                pending.insert(report.summary.name.clone(), report);
            }
        }
        drop(pending);
        self.wake.notify_one();
    }

    async fn take(&self) -> Vec<Report> {
        loop {
            let batch: Vec<Report> = lock(&self.reports).drain().map(|(_, r)| r).collect();
            if !batch.is_empty() {
                return batch;
            }
            self.wake.notified().await;
        }
    }
}

/// Writes room reports to the shared directory, in order, and tells every replica.
pub(crate) async fn directory_writer(hub: Arc<Hub>, pending: Arc<PendingReports>) {
    let Some(c) = &hub.cluster else { return };
    let keys = piano_backends::layout::Keys {
        prefix: hub.cfg.redis_key_prefix.clone(),
    };
    loop {
        for report in pending.take().await {
            write_report(&hub, c, &keys, report).await;
        }
    }
}

async fn write_report(
    hub: &Arc<Hub>,
    c: &Cluster,
    keys: &piano_backends::layout::Keys,
    report: Report,
) {
    let Ok(json) = serde_json::to_string(&report) else {
        return;
    };
    let mut pipe = redis::pipe();
    if report.summary.players == 0 {
        pipe.hdel(cluster::DIRECTORY, &report.summary.name);
    } else {
        pipe.hset(cluster::DIRECTORY, &report.summary.name, &json);
    }
    pipe.publish(cluster::DIRECTORY, &json);
    // The edge's room index across deployments (`{REDIS_KEY_PREFIX}rooms:<deployment>`).
    for index in crate::network::index_commands(keys, &hub.cfg.deployment_id, &report.summary) {
        if let Some((name, args)) = index.split_first() {
            let cmd = pipe.cmd(name);
            for a in args {
                cmd.arg(a);
            }
        }
    }
    if let Err(e) = c.conn.pipe::<()>(&pipe).await {
        redis_error("writing the directory", &e);
        // Still apply it here, so at least this replica's list is right.
        hub.apply_report(report);
    }
}

/// Directory entries of rooms that nobody runs any more (their holder died and no player came
/// back) would stay listed forever: entries not refreshed for two lease lifetimes whose room
/// has no lease are reported empty, which removes them everywhere. A room that starts again
/// reports with a newer version (its clock) and is listed again.
pub(crate) async fn sweep_directory(hub: &Hub, c: &Cluster) {
    let now = now_ms();
    let grace = 2 * c.lease_ttl.as_millis() as u64;
    let old: Vec<Report> = lock(&hub.directory)
        .reports()
        .filter(|r| r.received_at.saturating_add(grace) <= now)
        .cloned()
        .collect();
    if old.is_empty() {
        return;
    }
    let names: Vec<String> = old.iter().map(|r| r.summary.name.clone()).collect();
    let holders = match c.holders(&names).await {
        Ok(h) => h,
        Err(e) => return redis_error("sweeping the directory", &e),
    };
    for (mut report, holder) in old.into_iter().zip(holders) {
        if holder.is_none() {
            tracing::info!(
                room = report.summary.name,
                "directory entry of a room nobody runs: removing"
            );
            report.summary.players = 0;
            report.users.clear();
            report.version += 1;
            hub.report(report);
        }
    }
}
