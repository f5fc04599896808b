//! Scale-out through Redis (docs/architecture.md §6): room leases, replica channels and the shared directory.
//!
//! - **Lease** `piano:lease:{room}` = the replica id running the room, `SET NX PX` with a short
//!   TTL (`LEASE_TTL_MS`, 3 s) renewed every third of it by the holder only (a compare-and-
//!   extend script). If the holder dies, the lease lapses and the next replica with a player
//!   for that room takes it and restores the room from the shared store.
//! - **Replica channel** `piano:replica:{id}`: every replica subscribes to its own channel
//!   before it may take any lease, so followers can always reach a holder. `PUBLISH` returns
//!   how many subscribers got the message: 0 means the holder is gone (a killed process's
//!   connections are closed by the kernel at once), which lets followers act in milliseconds
//!   instead of waiting for the lease to lapse.
//! - **Directory** `piano:directory`: a hash of room name → latest report (JSON), and a channel
//!   of the same reports, which every replica applies to its own copy of the directory.

use crate::metrics::{METRICS, redis_error};
use crate::redis_handle::RedisHandle;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

pub const DIRECTORY: &str = "piano:directory";

pub fn replica_channel(replica: &str) -> String {
    format!("piano:replica:{replica}")
}

pub fn lease_key(room: &str) -> String {
    format!("piano:lease:{room}")
}

/// `Directory::next_lobby` (piano-core) over shared state: occupants of `lobby`, `lobby-2`, …
/// are the users in the lobby's latest report (the directory hash) plus the seats reserved in
/// `piano:lobby-seats:{lobby}` (a sorted set scored by expiry). Atomic, so two replicas cannot
/// hand out the same last seat. ARGV: user, now (ms), reservation ms, default capacity.
pub const NEXT_LOBBY: &str = r"
local user, now, ttl, default_cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for n = 1, 100000 do
  local name = 'lobby'
  if n > 1 then name = 'lobby-' .. n end
  local seats = 'piano:lobby-seats:' .. name
  redis.call('ZREMRANGEBYSCORE', seats, '-inf', now)
  local occupants, count, cap = {}, 0, default_cap
  local report = redis.call('HGET', 'piano:directory', name)
  if report then
    local r = cjson.decode(report)
    cap = tonumber(r.summary.capacity) or default_cap
    for _, u in ipairs(r.users or {}) do
      if not occupants[u] then occupants[u] = true; count = count + 1 end
    end
  end
  for _, u in ipairs(redis.call('ZRANGE', seats, 0, -1)) do
    if not occupants[u] then occupants[u] = true; count = count + 1 end
  end
  if occupants[user] then return name end
  if count < cap then
    redis.call('ZADD', seats, now + ttl, user)
    redis.call('PEXPIRE', seats, ttl)
    return name
  end
end
return 'lobby'";

/// Extends the lease only while it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes the lease only if `ARGV[1]` holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

pub struct Cluster {
    pub replica: String,
    pub client: redis::Client,
    pub conn: RedisHandle,
    pub lease_ttl: Duration,
    /// Longest any one Redis command may take here: a hung Redis must not hang placement or
    /// renewals longer than this.
    pub op_timeout: Duration,
    renew: redis::Script,
    release: redis::Script,
}

pub enum Lease {
    Mine,
    HeldBy(String),
}

impl Cluster {
    pub async fn connect(
        url: &str,
        replica: String,
        lease_ttl: Duration,
    ) -> Result<Cluster, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        let op_timeout = (lease_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let conn = RedisHandle::connect(client.clone(), op_timeout)
            .await
            .map_err(|e| format!("could not connect to Redis at REDIS_URL: {e}"))?;
        Ok(Cluster {
            replica,
            client,
            conn,
            lease_ttl,
            op_timeout,
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
        })
    }

    /// Takes the room's lease if nobody holds it; otherwise says who does.
    pub async fn acquire(&self, room: &str) -> redis::RedisResult<Lease> {
        let key = lease_key(room);
        for _ in 0..5 {
            let mut set_nx = redis::cmd("SET");
            set_nx
                .arg(&key)
                .arg(&self.replica)
                .arg("NX")
                .arg("PX")
                .arg(self.lease_ttl.as_millis() as u64);
            let set: Option<String> = self.conn.cmd(&set_nx).await?;
            if set.is_some() {
                METRICS.leases_acquired.fetch_add(1, Relaxed);
                return Ok(Lease::Mine);
            }
            let mut get = redis::cmd("GET");
            get.arg(&key);
            let holder: Option<String> = self.conn.cmd(&get).await?;
            match holder {
                Some(h) if h == self.replica => return Ok(Lease::Mine),
                Some(h) => return Ok(Lease::HeldBy(h)),
                // Lapsed between the two commands: try again.
                None => continue,
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::TryAgain,
            "lease keeps changing hands",
        )))
    }

    /// Extends our lease; `Ok(false)` when it is no longer ours.
    pub async fn renew(&self, room: &str) -> redis::RedisResult<bool> {
        let mut call = self.renew.key(lease_key(room));
        call.arg(&self.replica)
            .arg(self.lease_ttl.as_millis() as u64);
        let n: i64 = self.conn.script(&call).await?;
        Ok(n == 1)
    }

    /// Gives up the lease if `holder` has it (ourselves on shutdown, or a holder that is gone).
    pub async fn release_if(&self, room: &str, holder: &str) {
        let mut call = self.release.key(lease_key(room));
        call.arg(holder);
        let r: redis::RedisResult<i64> = self.conn.script(&call).await;
        if let Err(e) = r {
            redis_error("releasing a lease", &e);
        }
    }

    /// Publishes to a channel; the number of subscribers that received it.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> redis::RedisResult<usize> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload.as_ref());
        self.conn.cmd(&cmd).await
    }

    /// How many subscribers each replica's channel has (0: the replica is gone).
    pub async fn alive(&self, replicas: &[String]) -> redis::RedisResult<Vec<bool>> {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB");
        for r in replicas {
            cmd.arg(replica_channel(r));
        }
        let pairs: Vec<(String, i64)> = self.conn.cmd(&cmd).await?;
        Ok(replicas
            .iter()
            .map(|r| {
                let ch = replica_channel(r);
                pairs.iter().any(|(c, n)| *c == ch && *n > 0)
            })
            .collect())
    }

    /// Current holders of these rooms' leases.
    pub async fn holders(&self, rooms: &[String]) -> redis::RedisResult<Vec<Option<String>>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for r in rooms {
            cmd.arg(lease_key(r));
        }
        self.conn.cmd(&cmd).await
    }

    pub async fn ping(&self) -> bool {
        let cmd = redis::cmd("PING");
        self.conn.cmd::<String>(&cmd).await.is_ok()
    }
}
