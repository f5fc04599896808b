//! The room's durable state in the object's SQLite storage.
//!
//! `room_meta` holds one JSON value per key (name, settings, password hash, crown, bans, mutes,
//! next chat id); `chat` holds the last 100 messages, one row each, so a chat message costs one
//! small insert rather than a rewrite of the history.
//!
//! For resuming (docs/resume.md §4): `resume_sessions` holds each resumable connection's
//! [`Session`] (JSON, by connection id) and `resume_replay` the replay entries the room asks to
//! keep while a connection is suspended (`ReplayEntry::to_bytes`, by seq). Neither is ever
//! mirrored to MongoDB: they only matter to this object within a grace period.

use piano_core::room::stored::{CHAT_HISTORY, Change, ChatRecord, Stored};
use piano_core::room::{Keep, Kept, ReplayEntry, Session};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use worker::{Result, SqlStorage, SqlStorageValue};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS room_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS chat (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS presence (user_id TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS user_stats (
        user_id TEXT PRIMARY KEY, notes INTEGER NOT NULL DEFAULT 0, chats INTEGER NOT NULL DEFAULT 0,
        joins INTEGER NOT NULL DEFAULT 0, last_seen INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS resume_sessions (conn INTEGER PRIMARY KEY, session TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS resume_replay (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL);
";

#[derive(serde::Deserialize)]
struct MetaRow {
    key: String,
    value: String,
}

#[derive(serde::Deserialize)]
struct ChatRow {
    record: String,
}

/// Creates the tables and records the room's name (so a woken object knows it). Runs at the
/// room's first successful Join (or first change to persist); connecting without joining,
/// and merely looking at a room (its info, a lobby refresh), write nothing, so probing random
/// names cannot fill storage.
pub fn init(sql: &SqlStorage, name: &str) -> Result<()> {
    sql.exec(SCHEMA, None)?;
    sql.exec(
        "INSERT OR IGNORE INTO room_meta (key, value) VALUES ('name', ?)",
        vec![serde_json::to_string(name)?.into()],
    )?;
    Ok(())
}

/// Whether this object has ever been a room (its tables exist).
pub fn exists(sql: &SqlStorage) -> Result<bool> {
    crate::table_exists(sql, "room_meta")
}

/// Seeds a new room's state from its shared document (another deployment's room of the same
/// name, docs/architecture.md §5): settings, password hash, crown, bans and mutes; fields that do not parse
/// are skipped. Chat is not imported: each deployment archives its own.
pub fn import(sql: &SqlStorage, doc: &serde_json::Value) -> Result<()> {
    use piano_core::room::stored::{Ban, Crown, MuteEntry, PasswordHash, Settings};
    fn field<T: DeserializeOwned>(doc: &serde_json::Value, key: &str) -> Option<T> {
        serde_json::from_value(doc.get(key)?.clone()).ok()
    }
    if let Some(v) = field::<Settings>(doc, "settings") {
        put(sql, "settings", &v)?;
    }
    if let Some(v) = field::<Option<PasswordHash>>(doc, "password") {
        put(sql, "password", &v)?;
    }
    if let Some(v) = field::<Crown>(doc, "crown") {
        put(sql, "crown", &v)?;
    }
    if let Some(v) = field::<Vec<Ban>>(doc, "bans") {
        put(sql, "bans", &v)?;
    }
    if let Some(v) = field::<Vec<MuteEntry>>(doc, "mutes") {
        put(sql, "mutes", &v)?;
    }
    Ok(())
}

/// Reads the room's name and durable state (defaults for what was never written); read-only.
pub fn load(sql: &SqlStorage, name_hint: Option<&str>) -> Result<(String, Option<Stored>)> {
    if !exists(sql)? {
        return Ok((name_hint.unwrap_or_default().to_owned(), None));
    }
    let meta: HashMap<String, String> = sql
        .exec("SELECT key, value FROM room_meta", None)?
        .to_array::<MetaRow>()?
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    let name = match (meta.get("name"), name_hint) {
        (Some(n), _) => serde_json::from_str(n).unwrap_or_default(),
        (None, hint) => hint.unwrap_or_default().to_owned(),
    };
    let kind = piano_core::room::stored::RoomKind::of(&name);
    let mut stored = Stored::new(kind);
    if let Some(settings) = meta.get("settings").and_then(|s| parse(s)) {
        stored.settings = settings;
    }
    stored.password = meta.get("password").and_then(|s| parse(s)).unwrap_or(None);
    stored.crown = meta.get("crown").and_then(|s| parse(s)).unwrap_or_default();
    stored.bans = meta.get("bans").and_then(|s| parse(s)).unwrap_or_default();
    stored.mutes = meta.get("mutes").and_then(|s| parse(s)).unwrap_or_default();
    stored.next_chat_id = meta.get("next_chat_id").and_then(|s| parse(s)).unwrap_or(1);
    stored.chat = sql
        .exec("SELECT record FROM chat ORDER BY id", None)?
        .to_array::<ChatRow>()?
        .into_iter()
        .filter_map(|r| parse::<ChatRecord>(&r.record))
        .collect();
    Ok((name, Some(stored)))
}

fn parse<T: DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_str(s).ok()
}

fn put<T: Serialize>(sql: &SqlStorage, key: &str, value: &T) -> Result<()> {
    let json = serde_json::to_string(value)?;
    sql.exec(
        "INSERT INTO room_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        vec![key.into(), json.into()],
    )?;
    Ok(())
}

pub fn write(sql: &SqlStorage, change: Change) -> Result<()> {
    match change {
        Change::Settings(s) => put(sql, "settings", &s),
        Change::Password(p) => put(sql, "password", &p),
        Change::Crown(c) => put(sql, "crown", &c),
        Change::Bans(b) => put(sql, "bans", &b),
        Change::Mutes(m) => put(sql, "mutes", &m),
        Change::ChatAppended(r) => {
            let id = r.id as i64;
            sql.exec(
                "INSERT OR REPLACE INTO chat (id, record) VALUES (?, ?)",
                vec![id.into(), serde_json::to_string(&r)?.into()],
            )?;
            sql.exec(
                "DELETE FROM chat WHERE id NOT IN (SELECT id FROM chat ORDER BY id DESC LIMIT ?)",
                vec![(CHAT_HISTORY as i64).into()],
            )?;
            put(sql, "next_chat_id", &(r.id + 1))
        }
        Change::ChatDeleted(id) => {
            sql.exec("DELETE FROM chat WHERE id = ?", vec![(id as i64).into()])?;
            Ok(())
        }
        Change::ChatCleared => {
            sql.exec("DELETE FROM chat", None)?;
            Ok(())
        }
        // The host deletes the whole storage (see `room::host::discard_if_asked`).
        Change::Discard => Ok(()),
    }
}

/// Carries out one [`Keep`] (the core's model: `Kept::apply`).
pub fn keep(sql: &SqlStorage, keep: Keep) -> Result<()> {
    match keep {
        Keep::Session(s) => sql.exec(
            "INSERT INTO resume_sessions (conn, session) VALUES (?, ?)
             ON CONFLICT(conn) DO UPDATE SET session = excluded.session",
            vec![(s.record.conn as i64).into(), to_json(&s)?.into()],
        ),
        Keep::SessionGone(conn) => sql.exec(
            "DELETE FROM resume_sessions WHERE conn = ?",
            vec![(conn as i64).into()],
        ),
        Keep::Replay(e) => sql.exec(
            "INSERT OR REPLACE INTO resume_replay (seq, entry) VALUES (?, ?)",
            vec![(e.seq as i64).into(), e.to_bytes().into()],
        ),
        Keep::ReplayTrim(below) => sql.exec(
            "DELETE FROM resume_replay WHERE seq < ?",
            vec![(below as i64).into()],
        ),
        Keep::ReplayClear => sql.exec("DELETE FROM resume_replay", None),
    }?;
    Ok(())
}

/// What was kept for resuming (nothing for a room never stored). Rows that do not parse are
/// skipped: their connections cannot resume and join again.
pub fn kept(sql: &SqlStorage) -> Result<Kept> {
    #[derive(serde::Deserialize)]
    struct Row {
        session: String,
    }
    if !exists(sql)? {
        return Ok(Kept::default());
    }
    // Rooms stored before these tables existed get them now.
    sql.exec(SCHEMA, None)?;
    let sessions = sql
        .exec("SELECT session FROM resume_sessions", None)?
        .to_array::<Row>()?
        .into_iter()
        .filter_map(|r| from_json::<Session>(&r.session))
        .collect();
    let mut replay = Vec::new();
    for row in sql
        .exec("SELECT entry FROM resume_replay ORDER BY seq", None)?
        .raw()
    {
        if let Some(SqlStorageValue::Blob(b)) = row?.into_iter().next()
            && let Some(e) = ReplayEntry::from_bytes(&b)
        {
            replay.push(e);
        }
    }
    Ok(Kept { sessions, replay })
}

/// JSON by the runtime's `JSON.stringify` (see Cargo.toml: no second serializer in the wasm).
fn to_json<T: Serialize>(value: &T) -> Result<String> {
    let js = serde_wasm_bindgen::to_value(value)?;
    let text = worker::js_sys::JSON::stringify(&js).map_err(worker::Error::from)?;
    Ok(String::from(text))
}

fn from_json<T: DeserializeOwned>(text: &str) -> Option<T> {
    let js = worker::js_sys::JSON::parse(text).ok()?;
    serde_wasm_bindgen::from_value(js).ok()
}

/// Forgets every kept session and replay entry (resuming is off).
pub fn forget_kept(sql: &SqlStorage) -> Result<()> {
    if exists(sql)? {
        sql.exec(SCHEMA, None)?;
        sql.exec("DELETE FROM resume_sessions", None)?;
        sql.exec("DELETE FROM resume_replay", None)?;
    }
    Ok(())
}

/// Adds a user's activity to their running totals in this room and returns the new totals.
pub fn add_stats(
    sql: &SqlStorage,
    user_id: &str,
    d: &piano_core::room::StatsDelta,
) -> Result<piano_backends::layout::StatsTotals> {
    #[derive(serde::Deserialize)]
    struct Totals {
        notes: i64,
        chats: i64,
        joins: i64,
        last_seen: i64,
    }
    let rows: Vec<Totals> = sql
        .exec(
            "INSERT INTO user_stats (user_id, notes, chats, joins, last_seen) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(user_id) DO UPDATE SET notes = notes + excluded.notes,
               chats = chats + excluded.chats, joins = joins + excluded.joins,
               last_seen = MAX(last_seen, excluded.last_seen)
             RETURNING notes, chats, joins, last_seen",
            vec![
                user_id.into(),
                (d.notes as i64).into(),
                (d.chats as i64).into(),
                (d.joins as i64).into(),
                (d.last_seen as i64).into(),
            ],
        )?
        .to_array()?;
    let t = rows
        .first()
        .ok_or_else(|| worker::Error::RustError("no totals".into()))?;
    // Time played has its own table: rooms stored before it existed have `user_stats` without
    // such a column, and a table created when first needed asks no migration of them.
    #[derive(serde::Deserialize)]
    struct Played {
        played_ms: i64,
    }
    sql.exec(
        "CREATE TABLE IF NOT EXISTS user_played (user_id TEXT PRIMARY KEY, played_ms INTEGER NOT NULL)",
        None,
    )?;
    let played: Vec<Played> = sql
        .exec(
            "INSERT INTO user_played (user_id, played_ms) VALUES (?, ?)
             ON CONFLICT(user_id) DO UPDATE SET played_ms = played_ms + excluded.played_ms
             RETURNING played_ms",
            vec![user_id.into(), (d.played_ms as i64).into()],
        )?
        .to_array()?;
    Ok(piano_backends::layout::StatsTotals {
        played_ms: played.first().map_or(0, |p| p.played_ms.max(0) as u64),
        notes_played: t.notes.max(0) as u64,
        chat_messages: t.chats.max(0) as u64,
        joins: t.joins.max(0) as u64,
        last_seen: t.last_seen.max(0) as u64,
    })
}

/// Who this room last reported present in Redis (empty when it never did).
pub fn present(sql: &SqlStorage) -> Result<std::collections::HashSet<String>> {
    #[derive(serde::Deserialize)]
    struct Row {
        user_id: String,
    }
    if !exists(sql)? {
        return Ok(Default::default());
    }
    sql.exec(SCHEMA, None)?;
    Ok(sql
        .exec("SELECT user_id FROM presence", None)?
        .to_array::<Row>()?
        .into_iter()
        .map(|r| r.user_id)
        .collect())
}

/// Records who is now reported present (in the same step as the Redis writes are queued).
pub fn set_present(sql: &SqlStorage, joined: &[String], left: &[String]) -> Result<()> {
    for user in joined {
        sql.exec(
            "INSERT OR IGNORE INTO presence (user_id) VALUES (?)",
            vec![user.as_str().into()],
        )?;
    }
    for user in left {
        sql.exec(
            "DELETE FROM presence WHERE user_id = ?",
            vec![user.as_str().into()],
        )?;
    }
    Ok(())
}
