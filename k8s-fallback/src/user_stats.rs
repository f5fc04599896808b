//! Members' activity totals in the fallback's own store (`GET /api/users/{id}/stats` without
//! MongoDB): one row per member in SQLite (`user_stats` in `rooms.sqlite3`, written by the store's
//! thread) or one hash per member in Redis (`{REDIS_KEY_PREFIX}user-stats:{DEPLOYMENT_ID}:{id}`,
//! so deployments sharing a Redis keep their own totals). Guests keep nothing.
//! Totals only grow; a write lost to a full queue is counted like a room's. The store's thread
//! and queue (`crate::store`) run these.

use crate::metrics::{METRICS, redis_error};
use crate::redis_handle::RedisHandle;
use piano_core::analytics::is_member;
use piano_core::room::StatsDelta;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

/// A member's totals over every room of this deployment (the core's one JSON form).
pub use piano_core::analytics::UserTotals as Totals;

pub const SQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS user_stats (user TEXT PRIMARY KEY, notes INTEGER NOT NULL, chats INTEGER NOT NULL, joins INTEGER NOT NULL, played_ms INTEGER NOT NULL, last_seen INTEGER NOT NULL);";

/// The start of every member's totals key in Redis.
pub fn redis_key_base(redis_key_prefix: &str, deployment_id: &str) -> String {
    format!("{redis_key_prefix}user-stats:{deployment_id}:")
}

/// Adds to a member's totals; `last_seen` only moves forward (replicas' hand-overs may land
/// out of order).
const ADD: &str = "
    redis.call('HINCRBY', KEYS[1], 'notes', ARGV[1])
    redis.call('HINCRBY', KEYS[1], 'chats', ARGV[2])
    redis.call('HINCRBY', KEYS[1], 'joins', ARGV[3])
    redis.call('HINCRBY', KEYS[1], 'played_ms', ARGV[4])
    local seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0') or 0
    if tonumber(ARGV[5]) > seen then redis.call('HSET', KEYS[1], 'last_seen', ARGV[5]) end
    return 1
";

/// Members only (the core's rule): guests' ids are random and their totals would be kept for nobody.
pub fn members(stats: &BTreeMap<String, StatsDelta>) -> Vec<(String, StatsDelta)> {
    stats
        .iter()
        .filter(|(u, _)| is_member(u))
        .map(|(u, d)| (u.clone(), d.clone()))
        .collect()
}

pub fn sql_add(conn: &rusqlite::Connection, rows: &[(String, StatsDelta)]) -> rusqlite::Result<()> {
    for (user, d) in rows {
        conn.execute(
            "INSERT INTO user_stats (user, notes, chats, joins, played_ms, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (user) DO UPDATE SET notes = notes + ?2, chats = chats + ?3, joins = joins + ?4,
               played_ms = played_ms + ?5, last_seen = max(last_seen, ?6)",
            rusqlite::params![user, d.notes as i64, d.chats as i64, d.joins as i64, d.played_ms as i64, d.last_seen as i64],
        )?;
    }
    Ok(())
}

pub fn sql_get(conn: &rusqlite::Connection, user: &str) -> rusqlite::Result<Option<Totals>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT notes, chats, joins, played_ms, last_seen FROM user_stats WHERE user = ?1",
        [user],
        |r| {
            let n = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok(Totals::stored(n(0)?, n(1)?, n(2)?, n(3)?, n(4)?))
        },
    )
    .optional()
}

pub async fn redis_add(conn: &RedisHandle, base: &str, rows: Vec<(String, StatsDelta)>) {
    let mut pipe = redis::pipe();
    for (user, d) in &rows {
        pipe.cmd("EVAL")
            .arg(ADD)
            .arg(1)
            .arg(format!("{base}{user}"))
            .arg(d.notes)
            .arg(d.chats)
            .arg(d.joins)
            .arg(d.played_ms)
            .arg(d.last_seen)
            .ignore();
    }
    if let Err(e) = conn.pipe::<()>(&pipe).await {
        METRICS.store_errors.fetch_add(1, Relaxed);
        redis_error("adding user stats", &e);
    }
}

pub async fn redis_get(
    conn: &RedisHandle,
    base: &str,
    user: &str,
) -> redis::RedisResult<Option<Totals>> {
    let mut pipe = redis::pipe();
    pipe.hgetall(format!("{base}{user}"));
    let (h,): (BTreeMap<String, u64>,) = conn.pipe(&pipe).await?;
    if h.is_empty() {
        return Ok(None);
    }
    let f = |k: &str| h.get(k).copied().unwrap_or(0);
    Ok(Some(Totals::stored(
        f("notes"),
        f("chats"),
        f("joins"),
        f("played_ms"),
        f("last_seen"),
    )))
}
