//! The room directory on this host: the replica's copy of every room's report, pushed to
//! subscribed rooms as one coalesced delta per tick; the shared copy in Redis (cluster mode),
//! written by one task that keeps only the newest report per room; the per-user cap on
//! room-list subscriptions; and the sweep of rooms nobody runs any more.
//!
//! The hub owns one [`RoomDirectory`] and hands it to the room tasks (their reports, their
//! subscribers' caps); pushing each tick's delta to the rooms is the hub's ([`crate::hub`]).

use crate::cluster::{self, Cluster};
use crate::metrics::redis_error;
use crate::{lock, now_ms};
use piano_core::lobby::{
    Delta, Directory, MAX_SUBSCRIBED_ROOMS_PER_USER, PUSH_TICK_MS, Report, Subscribers, Summary,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// This replica's room directory (see the module comment).
pub struct RoomDirectory {
    directory: Mutex<Directory>,
    /// Who follows the room list from which rooms (standalone; in Redis with `REDIS_URL`).
    subscribers: Mutex<Subscribers>,
    /// Reports waiting to be written to the shared directory (cluster mode): the latest per
    /// room only (a report is the room's whole summary), so the backlog is bounded by the
    /// number of rooms however slow Redis is.
    pending: Option<PendingReports>,
    cluster: Option<Arc<Cluster>>,
}

impl RoomDirectory {
    pub fn new(cluster: Option<Arc<Cluster>>) -> RoomDirectory {
        RoomDirectory {
            directory: Mutex::new(Directory::new().coalesce_every(PUSH_TICK_MS)),
            subscribers: Mutex::new(Subscribers::new()),
            pending: cluster.is_some().then(PendingReports::default),
            cluster,
        }
    }

    /// A room's report: applied here (single process) or published to every replica.
    pub fn report(&self, report: Report) {
        match &self.pending {
            Some(p) => p.put(report),
            None => self.apply_report(report),
        }
    }

    pub fn apply_report(&self, report: Report) {
        // Listing changes are gathered and pushed as one net delta per tick (`Hub::push_delta`).
        lock(&self.directory).report(report, now_ms());
    }

    /// The net change since the last call, if any.
    pub fn take_delta(&self) -> Option<Delta> {
        lock(&self.directory).take_delta(now_ms())
    }

    pub fn listing(&self) -> Vec<Summary> {
        lock(&self.directory).listing()
    }

    /// Players in `room` as last reported (0 if unknown).
    pub fn players(&self, room: &str) -> u32 {
        lock(&self.directory)
            .get(room)
            .map(|r| r.summary.players)
            .unwrap_or(0)
    }

    /// The lobby `user` should join (`POST /api/lobby/next`). With Redis, the seat count must be
    /// shared by every replica or each would fill `lobby` on its own: the same rule as
    /// [`Directory::next_lobby`] runs as one atomic script over the shared directory hash and
    /// one reservation set per lobby.
    pub async fn next_lobby(&self, user: &str) -> String {
        if let Some(c) = &self.cluster {
            let script = redis::Script::new(cluster::NEXT_LOBBY);
            let mut call = script.prepare_invoke();
            call.arg(user)
                .arg(now_ms())
                .arg(piano_core::lobby::RESERVATION_MS)
                .arg(piano_core::lobby::LOBBY_CAPACITY);
            let placed: redis::RedisResult<String> = c.conn.script(&call).await;
            match placed {
                Ok(lobby) => return lobby,
                Err(e) => redis_error("placing a player in a lobby", &e),
            }
        }
        lock(&self.directory).next_lobby(user, now_ms())
    }

    /// Rebuilds the directory copy from the shared hash (after (re)subscribing).
    pub async fn load(&self) {
        let Some(c) = &self.cluster else { return };
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(cluster::DIRECTORY);
        let all: redis::RedisResult<HashMap<String, String>> = c.conn.cmd(&cmd).await;
        match all {
            Ok(all) => {
                let reports = all
                    .values()
                    .filter_map(|v| serde_json::from_str::<Report>(v).ok());
                *lock(&self.directory) =
                    Directory::from_reports(reports).coalesce_every(PUSH_TICK_MS);
            }
            Err(e) => redis_error("loading the directory", &e),
        }
    }

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

/// Directory reports not written yet, the newest per room.
#[derive(Default)]
struct PendingReports {
    reports: Mutex<HashMap<String, Report>>,
    wake: tokio::sync::Notify,
}

impl PendingReports {
    fn put(&self, report: Report) {
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

/// Writes room reports to the shared directory, in order, and tells every replica (cluster
/// mode; `keys`/`deployment`: the edge's room index beside it).
pub async fn directory_writer(
    dir: Arc<RoomDirectory>,
    keys: piano_backends::layout::Keys,
    deployment: String,
) {
    let (Some(c), Some(pending)) = (&dir.cluster, &dir.pending) else {
        return;
    };
    loop {
        for report in pending.take().await {
            write_report(&dir, c, &keys, &deployment, report).await;
        }
    }
}

async fn write_report(
    dir: &RoomDirectory,
    c: &Cluster,
    keys: &piano_backends::layout::Keys,
    deployment: &str,
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
    for index in crate::network::index_commands(keys, deployment, &report.summary) {
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
        dir.apply_report(report);
    }
}

/// Directory entries of rooms that nobody runs any more (their holder died and no player came
/// back) would stay listed forever: entries not refreshed for two lease lifetimes whose room
/// has no lease are reported empty, which removes them everywhere. A room that starts again
/// reports with a newer version (its clock) and is listed again.
pub async fn sweep_directory(dir: &RoomDirectory, c: &Cluster) {
    let now = now_ms();
    let grace = 2 * c.lease_ttl.as_millis() as u64;
    let old: Vec<Report> = lock(&dir.directory)
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
            dir.report(report);
        }
    }
}
