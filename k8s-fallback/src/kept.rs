//! What a room keeps so dropped players can resume after its memory is gone (a restart, a
//! drain, a failover): the core's [`Keep`] effects carried out, and handed back as [`Kept`] to
//! `Room::restore_with` (docs/resume.md §4). Never mirrored to MongoDB.
//!
//! - **SQLite** (standalone): `kept_sessions` (room, conn) → the `Session` as JSON, and
//!   `kept_replay` (room, seq) → `ReplayEntry::to_bytes()`; written by the store's thread in
//!   the room's write order (`store.rs`).
//! - **Redis** (cluster): `piano:room:{name}:sessions`, a hash conn → `Session` JSON, and
//!   `piano:room:{name}:replay`, a sorted set of entries scored by seq. Written through the
//!   room's publisher (`room_task/lease.rs`), in one ordered pipeline with the broadcasts for
//!   other replicas: an entry is in Redis before any other replica is sent its frame.

use crate::redis_handle::RedisHandle;
use piano_core::room::{Keep, Kept, ReplayEntry, Session};

/// How long Redis keeps a room's kept state after its last write: a room that never starts
/// again leaves nothing behind for good (live rooms write far more often).
const REDIS_TTL_MS: u64 = 24 * 3600 * 1000;

pub const SQL_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kept_sessions (room TEXT NOT NULL, conn INTEGER NOT NULL, session TEXT NOT NULL, PRIMARY KEY (room, conn));
CREATE TABLE IF NOT EXISTS kept_replay (room TEXT NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL, PRIMARY KEY (room, seq));";

/// Conn ids and seqs stay below 2^63 (ids below 2^53, seqs `now × 1000`): stored as i64.
fn i(n: u64) -> i64 {
    n as i64
}

pub fn sql_keep(conn: &rusqlite::Connection, room: &str, keep: Keep) -> rusqlite::Result<()> {
    match keep {
        Keep::Session(s) => {
            let json = serde_json::to_string(&s).unwrap_or_default();
            conn.prepare_cached(
                "INSERT OR REPLACE INTO kept_sessions (room, conn, session) VALUES (?1, ?2, ?3)",
            )?
            .execute((room, i(s.record.conn), json))?;
        }
        Keep::SessionGone(c) => {
            conn.prepare_cached("DELETE FROM kept_sessions WHERE room = ?1 AND conn = ?2")?
                .execute((room, i(c)))?;
        }
        Keep::Replay(e) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO kept_replay (room, seq, entry) VALUES (?1, ?2, ?3)",
            )?
            .execute((room, i(e.seq), e.to_bytes()))?;
        }
        Keep::ReplayTrim(below) => {
            conn.prepare_cached("DELETE FROM kept_replay WHERE room = ?1 AND seq < ?2")?
                .execute((room, i(below)))?;
        }
        Keep::ReplayClear => {
            conn.prepare_cached("DELETE FROM kept_replay WHERE room = ?1")?
                .execute([room])?;
        }
    }
    Ok(())
}

/// The room's kept replay entries go once no session is left (its storage is discarded).
pub fn sql_forget(conn: &rusqlite::Connection, room: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM kept_replay WHERE room = ?1 AND NOT EXISTS (SELECT 1 FROM kept_sessions WHERE room = ?1)",
    )?
    .execute([room])
    .map(drop)
}

pub fn sql_load(conn: &rusqlite::Connection, room: &str) -> rusqlite::Result<Kept> {
    let mut stmt = conn.prepare_cached("SELECT session FROM kept_sessions WHERE room = ?1")?;
    let sessions = stmt
        .query_map([room], |r| r.get::<_, String>(0))?
        .filter_map(|r| {
            r.ok()
                .and_then(|s| serde_json::from_str::<Session>(&s).ok())
        })
        .collect();
    let mut stmt =
        conn.prepare_cached("SELECT entry FROM kept_replay WHERE room = ?1 ORDER BY seq")?;
    let replay = stmt
        .query_map([room], |r| r.get::<_, Vec<u8>>(0))?
        .filter_map(|r| r.ok().and_then(|b| ReplayEntry::from_bytes(&b)))
        .collect();
    Ok(Kept { sessions, replay })
}

pub fn sessions_key(room: &str) -> String {
    format!("piano:room:{room}:sessions")
}

pub fn replay_key(room: &str) -> String {
    format!("piano:room:{room}:replay")
}

/// Adds one [`Keep`] to a pipeline (results ignored).
pub fn redis_keep(pipe: &mut redis::Pipeline, room: &str, keep: Keep) {
    let (sessions, replay) = (sessions_key(room), replay_key(room));
    match keep {
        Keep::Session(s) => {
            let json = serde_json::to_string(&s).unwrap_or_default();
            pipe.hset(&sessions, s.record.conn, json).ignore();
            pipe.pexpire(&sessions, REDIS_TTL_MS as i64).ignore();
        }
        Keep::SessionGone(c) => {
            pipe.hdel(&sessions, c).ignore();
        }
        Keep::Replay(e) => {
            pipe.zadd(&replay, e.to_bytes(), e.seq).ignore();
            pipe.pexpire(&replay, REDIS_TTL_MS as i64).ignore();
        }
        Keep::ReplayTrim(below) => {
            pipe.zrembyscore(&replay, "-inf", format!("({below}"))
                .ignore();
        }
        Keep::ReplayClear => {
            pipe.del(&replay).ignore();
        }
    }
}

/// Deletes the room's replay entries if no session is left (in the pipeline's order).
pub fn redis_forget(pipe: &mut redis::Pipeline, room: &str) {
    pipe.cmd("EVAL")
        .arg("if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end return 0")
        .arg(2)
        .arg(sessions_key(room))
        .arg(replay_key(room))
        .ignore();
}

pub async fn redis_load(conn: &RedisHandle, room: &str) -> redis::RedisResult<Kept> {
    let mut pipe = redis::pipe();
    pipe.hvals(sessions_key(room))
        .zrange(replay_key(room), 0, -1);
    let (sessions, replay): (Vec<String>, Vec<Vec<u8>>) = conn.pipe(&pipe).await?;
    Ok(Kept {
        sessions: sessions
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect(),
        replay: replay
            .iter()
            .filter_map(|b| ReplayEntry::from_bytes(b))
            .collect(),
    })
}
