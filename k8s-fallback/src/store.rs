//! Where rooms keep what outlives their connections ([`Stored`]: settings, password hash, crown,
//! bans, mutes, chat), written as the core reports each [`Change`] and read back when a room
//! starts, on this replica or, after a failover, on another one.
//!
//! - **SQLite** (no configuration): `DATA_DIR/rooms.sqlite3`, the same shape as the Durable
//!   Object's storage (`durable-objects/src/storage.rs`): one JSON value per room and key, and
//!   one row per chat message, so a chat message is one small insert. A single thread owns the
//!   connection; the async side sends it commands, so the runtime never blocks on disk.
//! - **Redis** (with `REDIS_URL`, so every replica sees the same rooms):
//!   `piano:room:{name}:state` holds the `Stored` document without its chat as JSON, and
//!   `piano:room:{name}:chat` is a list of the last 100 messages (JSON each, oldest first).
//!
//! Writes of one room go through one ordered queue ([`Writer`]) so they land in the order the
//! room made them; a failed write is retried a few times, then counted and logged, and the
//! room keeps playing.

use crate::metrics::{METRICS, redis_error};
use crate::redis_handle::RedisHandle;
use piano_core::room::stored::{CHAT_HISTORY, Change, ChatRecord, RoomKind, Stored};
use piano_core::room::{Keep, Kept};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::{mpsc, oneshot};

/// Commands the SQLite thread may have queued (all rooms). It fills only if the disk stalls;
/// then writes that do not fit are dropped and counted (`piano_store_errors_total`) rather than
/// blocking rooms or growing memory.
const SQL_QUEUE: usize = 16_384;
/// Members' totals reads queued for the read connection (`GET /api/users/{id}/stats` is public):
/// a flood of reads fills this queue and is refused, never the room writes' queue above.
const READ_QUEUE: usize = 64;
/// Changes one room's Redis writer may have queued. It fills only while Redis does not answer;
/// then the room's lease cannot be renewed either and the room stops within a lease TTL.
const REDIS_QUEUE: usize = 4096;

#[derive(Clone)]
pub enum Store {
    /// The writer thread's queue, and the read connection's (members' totals).
    Sqlite(
        std::sync::mpsc::SyncSender<SqlCmd>,
        std::sync::mpsc::SyncSender<SqlCmd>,
    ),
    /// With the prefix of members' totals (`crate::user_stats::redis_key_base`).
    Redis(RedisHandle, std::sync::Arc<str>),
}

pub enum SqlCmd {
    Load(String, oneshot::Sender<Result<Option<Stored>, String>>),
    Write(String, Change),
    /// Resume state (`crate::kept`): a [`Keep`], forgetting it, reading it back.
    Keep(String, Keep),
    ForgetKept(String),
    LoadKept(String, oneshot::Sender<Result<Kept, String>>),
    Flush(oneshot::Sender<()>),
    /// Members' activity (`crate::user_stats`).
    AddUserStats(Vec<(String, piano_core::room::StatsDelta)>),
    UserStats(
        String,
        oneshot::Sender<Result<Option<crate::user_stats::Totals>, String>>,
    ),
}

/// The ordered write queue of one room.
#[derive(Clone)]
pub enum Writer {
    Sqlite(String, std::sync::mpsc::SyncSender<SqlCmd>),
    Redis(mpsc::Sender<RedisWrite>),
}

pub enum RedisWrite {
    Change(Change),
    Flush(oneshot::Sender<()>),
}

impl Store {
    pub fn sqlite(data_dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("DATA_DIR {}: {e}", data_dir.display()))?;
        let path = data_dir.join("rooms.sqlite3");
        let conn =
            rusqlite::Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS room_meta (room TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (room, key));
             CREATE TABLE IF NOT EXISTS chat (room TEXT NOT NULL, id INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (room, id));",
        )
        .and_then(|()| conn.execute_batch(crate::user_stats::SQL_SCHEMA))
        .and_then(|()| conn.execute_batch(crate::kept::SQL_SCHEMA))
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<SqlCmd>(SQL_QUEUE);
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                for cmd in rx {
                    match cmd {
                        SqlCmd::Load(room, reply) => {
                            let _ = reply.send(sql_load(&conn, &room).map_err(|e| e.to_string()));
                        }
                        SqlCmd::Write(room, change) => {
                            if let Err(e) = sql_write(&conn, &room, change) {
                                METRICS.store_errors.fetch_add(1, Relaxed);
                                tracing::error!(room, error = %e, "sqlite write failed");
                            }
                        }
                        SqlCmd::Keep(room, keep) => {
                            if let Err(e) = crate::kept::sql_keep(&conn, &room, keep) {
                                METRICS.store_errors.fetch_add(1, Relaxed);
                                tracing::error!(room, error = %e, "sqlite resume state write failed");
                            }
                        }
                        SqlCmd::ForgetKept(room) => {
                            if let Err(e) = crate::kept::sql_forget(&conn, &room) {
                                METRICS.store_errors.fetch_add(1, Relaxed);
                                tracing::error!(room, error = %e, "sqlite resume state delete failed");
                            }
                        }
                        SqlCmd::LoadKept(room, reply) => {
                            let got = crate::kept::sql_load(&conn, &room);
                            let _ = reply.send(got.map_err(|e| e.to_string()));
                        }
                        SqlCmd::Flush(reply) => {
                            let _ = reply.send(());
                        }
                        SqlCmd::AddUserStats(rows) => {
                            if let Err(e) = crate::user_stats::sql_add(&conn, &rows) {
                                METRICS.store_errors.fetch_add(1, Relaxed);
                                tracing::error!(error = %e, "sqlite user stats write failed");
                            }
                        }
                        // Answered by the read connection (`stats_reader`).
                        SqlCmd::UserStats(..) => {}
                    }
                }
            })
            .map_err(|e| format!("could not start the sqlite thread: {e}"))?;
        Ok(Store::Sqlite(tx, stats_reader(&path)?))
    }

    /// The room's durable state, `None` if it was never written.
    pub async fn load(&self, room: &str) -> Result<Option<Stored>, String> {
        match self {
            // A failure here gives the player 1011; they may reconnect.
            Store::Sqlite(tx, _) => ask(tx, |reply| SqlCmd::Load(room.to_owned(), reply)).await,
            Store::Redis(conn, _) => redis_load(conn.clone(), room).await.map_err(|e| {
                redis_error("loading a room", &e);
                e.to_string()
            }),
        }
    }

    /// What the room kept for resuming (`crate::kept`); empty if nothing.
    pub async fn load_kept(&self, room: &str) -> Result<Kept, String> {
        match self {
            Store::Sqlite(tx, _) => ask(tx, |reply| SqlCmd::LoadKept(room.to_owned(), reply)).await,
            Store::Redis(conn, _) => crate::kept::redis_load(conn, room).await.map_err(|e| {
                redis_error("loading a room's resume state", &e);
                e.to_string()
            }),
        }
    }

    /// Starts the write queue of a room whose current state is `current`.
    pub fn writer(&self, room: &str, current: Stored) -> Writer {
        match self {
            Store::Sqlite(tx, _) => Writer::Sqlite(room.to_owned(), tx.clone()),
            Store::Redis(conn, _) => {
                let (tx, rx) = mpsc::channel(REDIS_QUEUE);
                tokio::spawn(redis_writer(conn.clone(), room.to_owned(), current, rx));
                Writer::Redis(tx)
            }
        }
    }
}

/// Members' activity totals (`crate::user_stats`).
impl Store {
    /// Adds a hand-over's activity to members' totals, never waiting.
    pub fn add_user_stats(
        &self,
        stats: &std::collections::BTreeMap<String, piano_core::room::StatsDelta>,
    ) {
        let rows = crate::user_stats::members(stats);
        if rows.is_empty() {
            return;
        }
        match self {
            Store::Sqlite(tx, _) => {
                if tx.try_send(SqlCmd::AddUserStats(rows)).is_err() {
                    METRICS.store_errors.fetch_add(1, Relaxed);
                    METRICS.queue_full.fetch_add(1, Relaxed);
                }
            }
            Store::Redis(conn, base) => {
                let (conn, base) = (conn.clone(), base.clone());
                tokio::spawn(async move { crate::user_stats::redis_add(&conn, &base, rows).await });
            }
        }
    }

    /// A member's totals (`None`: nothing recorded).
    pub async fn user_stats(
        &self,
        user: &str,
    ) -> Result<Option<crate::user_stats::Totals>, String> {
        match self {
            Store::Sqlite(_, reads) => {
                ask(reads, |reply| SqlCmd::UserStats(user.to_owned(), reply)).await
            }
            Store::Redis(conn, base) => crate::user_stats::redis_get(conn, base, user)
                .await
                .map_err(|e| {
                    redis_error("reading user stats", &e);
                    e.to_string()
                }),
        }
    }
}

/// A second connection (WAL: reads run beside the writer) and thread answering members' totals.
fn stats_reader(path: &Path) -> Result<std::sync::mpsc::SyncSender<SqlCmd>, String> {
    let conn = rusqlite::Connection::open(path)
        .and_then(|c| c.execute_batch("PRAGMA query_only = ON;").map(|()| c))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<SqlCmd>(READ_QUEUE);
    std::thread::Builder::new()
        .name("sqlite-read".into())
        .spawn(move || {
            for cmd in rx {
                if let SqlCmd::UserStats(user, reply) = cmd {
                    let got = crate::user_stats::sql_get(&conn, &user);
                    let _ = reply.send(got.map_err(|e| e.to_string()));
                }
            }
        })
        .map_err(|e| format!("could not start the sqlite read thread: {e}"))?;
    Ok(tx)
}

/// One question to the SQLite thread. Never blocks the runtime: a full queue is answered as
/// an error.
async fn ask<T>(
    tx: &std::sync::mpsc::SyncSender<SqlCmd>,
    cmd: impl FnOnce(oneshot::Sender<Result<T, String>>) -> SqlCmd,
) -> Result<T, String> {
    let (reply, rx) = oneshot::channel();
    tx.try_send(cmd(reply))
        .map_err(|_| "the sqlite thread is stopped or overloaded".to_string())?;
    rx.await
        .map_err(|_| "the sqlite thread stopped".to_string())?
}

impl Writer {
    pub fn write(&self, change: Change) {
        let sent = match self {
            Writer::Sqlite(room, tx) => tx.try_send(SqlCmd::Write(room.clone(), change)).is_ok(),
            Writer::Redis(tx) => tx.try_send(RedisWrite::Change(change)).is_ok(),
        };
        self.sent(sent);
    }

    /// Standalone: a [`Keep`] in the room's write order. (In cluster mode the room's
    /// publisher writes them, ordered with its broadcasts: `room_task/lease.rs`.)
    pub fn keep(&self, keep: Keep) {
        if let Writer::Sqlite(room, tx) = self {
            self.sent(tx.try_send(SqlCmd::Keep(room.clone(), keep)).is_ok());
        }
    }

    /// Standalone: forget the room's kept replay entries if no session is left.
    pub fn forget_kept(&self) {
        if let Writer::Sqlite(room, tx) = self {
            self.sent(tx.try_send(SqlCmd::ForgetKept(room.clone())).is_ok());
        }
    }

    fn sent(&self, sent: bool) {
        if !sent {
            METRICS.store_errors.fetch_add(1, Relaxed);
            METRICS.queue_full.fetch_add(1, Relaxed);
            tracing::error!(
                "room store writer is gone or its queue is full; a change was not saved"
            );
        }
    }

    /// Waits until every change queued so far is written (or given up on).
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        let sent = match self {
            Writer::Sqlite(_, tx) => {
                // Waits for room in the queue off the runtime's threads.
                let (tx, cmd) = (tx.clone(), SqlCmd::Flush(reply));
                tokio::task::spawn_blocking(move || tx.send(cmd).is_ok())
                    .await
                    .unwrap_or(false)
            }
            Writer::Redis(tx) => tx.send(RedisWrite::Flush(reply)).await.is_ok(),
        };
        if sent {
            let _ = rx.await;
        }
    }
}

// -- SQLite --------------------------------------------------------------------------------

fn parse<T: DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_str(s).ok()
}

fn sql_load(conn: &rusqlite::Connection, room: &str) -> rusqlite::Result<Option<Stored>> {
    let mut stmt = conn.prepare_cached("SELECT key, value FROM room_meta WHERE room = ?1")?;
    let meta: std::collections::HashMap<String, String> = stmt
        .query_map([room], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare_cached("SELECT record FROM chat WHERE room = ?1 ORDER BY id")?;
    let chat: Vec<ChatRecord> = stmt
        .query_map([room], |r| r.get::<_, String>(0))?
        .filter_map(|r| r.ok().and_then(|s| parse(&s)))
        .collect();
    if meta.is_empty() && chat.is_empty() {
        return Ok(None);
    }
    let mut stored = Stored::new(RoomKind::of(room));
    if let Some(s) = meta.get("settings").and_then(|s| parse(s)) {
        stored.settings = s;
    }
    stored.password = meta.get("password").and_then(|s| parse(s)).unwrap_or(None);
    stored.crown = meta.get("crown").and_then(|s| parse(s)).unwrap_or_default();
    stored.bans = meta.get("bans").and_then(|s| parse(s)).unwrap_or_default();
    stored.mutes = meta.get("mutes").and_then(|s| parse(s)).unwrap_or_default();
    stored.next_chat_id = meta.get("next_chat_id").and_then(|s| parse(s)).unwrap_or(1);
    stored.chat = chat;
    Ok(Some(stored))
}

fn put<T: Serialize>(
    conn: &rusqlite::Connection,
    room: &str,
    key: &str,
    value: &T,
) -> Result<(), String> {
    let json = serde_json::to_string(value).map_err(|e| e.to_string())?;
    conn.prepare_cached(
        "INSERT INTO room_meta (room, key, value) VALUES (?1, ?2, ?3) ON CONFLICT(room, key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute((room, key, json)))
    .map(drop)
    .map_err(|e| e.to_string())
}

fn sql_write(conn: &rusqlite::Connection, room: &str, change: Change) -> Result<(), String> {
    let sql = |q: &str, params: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(q)
            .and_then(|mut s| s.execute(params))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    match change {
        Change::Settings(s) => put(conn, room, "settings", &s),
        Change::Password(p) => put(conn, room, "password", &p),
        Change::Crown(c) => put(conn, room, "crown", &c),
        Change::Bans(b) => put(conn, room, "bans", &b),
        Change::Mutes(m) => put(conn, room, "mutes", &m),
        Change::ChatAppended(r) => {
            let json = serde_json::to_string(&r).map_err(|e| e.to_string())?;
            sql(
                "INSERT OR REPLACE INTO chat (room, id, record) VALUES (?1, ?2, ?3)",
                &[&room, &(r.id as i64), &json],
            )?;
            sql(
                "DELETE FROM chat WHERE room = ?1 AND id NOT IN (SELECT id FROM chat WHERE room = ?1 ORDER BY id DESC LIMIT ?2)",
                &[&room, &(CHAT_HISTORY as i64)],
            )?;
            put(conn, room, "next_chat_id", &(r.id + 1))
        }
        Change::ChatDeleted(id) => sql(
            "DELETE FROM chat WHERE room = ?1 AND id = ?2",
            &[&room, &(id as i64)],
        ),
        Change::ChatCleared => sql("DELETE FROM chat WHERE room = ?1", &[&room]),
        // A room nobody configured and everyone left: nothing of it stays on disk.
        Change::Discard => {
            sql("DELETE FROM room_meta WHERE room = ?1", &[&room])?;
            sql("DELETE FROM chat WHERE room = ?1", &[&room])
        }
    }
}

// -- Redis ---------------------------------------------------------------------------------

pub fn state_key(room: &str) -> String {
    format!("piano:room:{room}:state")
}

pub fn chat_key(room: &str) -> String {
    format!("piano:room:{room}:chat")
}

async fn redis_load(conn: RedisHandle, room: &str) -> redis::RedisResult<Option<Stored>> {
    let mut pipe = redis::pipe();
    pipe.get(state_key(room)).lrange(chat_key(room), 0, -1);
    let (state, chat): (Option<String>, Vec<String>) = conn.pipe(&pipe).await?;
    if state.is_none() && chat.is_empty() {
        return Ok(None);
    }
    let mut stored = state
        .as_deref()
        .and_then(parse::<Stored>)
        .unwrap_or_else(|| Stored::new(RoomKind::of(room)));
    stored.chat = chat.iter().filter_map(|s| parse(s)).collect();
    if let Some(last) = stored.chat.last() {
        stored.next_chat_id = stored.next_chat_id.max(last.id + 1);
    }
    Ok(Some(stored))
}

/// Keeps a mirror of the room's state so each change becomes the smallest Redis write: the
/// state document for settings/crown/bans/mutes, one push and trim for a chat message.
async fn redis_writer(
    conn: RedisHandle,
    room: String,
    mut mirror: Stored,
    mut rx: mpsc::Receiver<RedisWrite>,
) {
    while let Some(msg) = rx.recv().await {
        let change = match msg {
            RedisWrite::Change(c) => c,
            RedisWrite::Flush(reply) => {
                let _ = reply.send(());
                continue;
            }
        };
        let mut pipe = redis::pipe();
        match &change {
            Change::ChatAppended(r) => {
                pipe.rpush(
                    chat_key(&room),
                    serde_json::to_string(r).unwrap_or_default(),
                )
                .ltrim(chat_key(&room), -(CHAT_HISTORY as isize), -1);
            }
            Change::ChatDeleted(id) => {
                if let Some(r) = mirror.chat.iter().find(|r| r.id == *id) {
                    pipe.lrem(
                        chat_key(&room),
                        0,
                        serde_json::to_string(r).unwrap_or_default(),
                    );
                }
            }
            Change::ChatCleared => {
                pipe.del(chat_key(&room));
            }
            Change::Discard => {
                pipe.del(state_key(&room)).del(chat_key(&room));
            }
            _ => {}
        }
        mirror.apply(change.clone());
        if !matches!(
            change,
            Change::ChatDeleted(_) | Change::ChatCleared | Change::Discard
        ) {
            let doc = Stored {
                chat: Vec::new(),
                ..mirror.clone()
            };
            pipe.set(
                state_key(&room),
                serde_json::to_string(&doc).unwrap_or_default(),
            );
        }
        let mut tries = 0;
        loop {
            match conn.pipe::<()>(&pipe).await {
                Ok(()) => break,
                Err(e) => {
                    tries += 1;
                    redis_error("writing room state", &e);
                    if tries >= 5 {
                        METRICS.store_errors.fetch_add(1, Relaxed);
                        tracing::error!(room, "giving up on a room state write");
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await;
                }
            }
        }
    }
}
