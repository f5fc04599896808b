//! Member accounts, natively: the edge's Account Durable Object (`durable-objects/src/account.rs`)
//! and its worker side (`src/accounts.rs`) in one module, with the same URL paths, JSON shapes,
//! status and error codes, token claims (`sid`, `gen`) and session rules.
//!
//! - **Where**: standalone, `DATA_DIR/accounts.sqlite3` (one connection behind a lock, used
//!   from blocking threads); with `REDIS_URL`, Redis, so every replica sees the same accounts and
//!   sessions: `piano:account:{username}` (the account JSON, created with `SET NX`, so two
//!   concurrent registrations of one name get exactly one 201; later changes compare-and-set),
//!   `piano:session:{username}:{sid}` (a hash: secret hash, generation, created, expires,
//!   revoked; expiring with the session) and `piano:sessions:{username}` (a sorted set of live
//!   sessions by creation time, for `MAX_SESSIONS_PER_ACCOUNT`). Refresh (compare the secret,
//!   bump the generation) and revocation are single Lua scripts.
//! - **Sessions**: a login opens one (generation 1); every refresh rotates the secret (stored
//!   as SHA-256) and bumps the generation; a refresh token presented twice revokes its session.
//!   Every token with a `sid` is checked against its session at every REST and WebSocket use
//!   ([`Accounts::check`]). A `sid` this deployment has never seen (a session of the edge,
//!   given the same signing key) is accepted on its signature, unless the shared revocation
//!   list (`{REDIS_KEY_PREFIX}revoked:<sid>`) names it.
//! - **Shared with the edge**: with Redis, every ended session (logout, reuse, eviction) is also
//!   written to that revocation list (`layout::session_revoked`). With `MONGODB_URL`, every
//!   account save is mirrored to MongoDB `accounts` exactly as the edge writes it
//!   (`layout::account_created` / `account_updated`, the serialized [`AccountData`] plus `usertag`), and a username unknown
//!   here is looked up there (at registration, login, and a signed-in member's own profile)
//!   and imported, so members registered at the edge log in here and the other way round.

use crate::auth::Check;
use crate::config::Config;
use crate::json::{json, json_error, with_header};
use crate::metrics::redis_error;
use crate::mongo::Mongo;
use crate::reach::Reach;
use crate::redis_handle::{RedisHandle, run_redis_op};
use axum::response::Response;
use piano_backends::layout;
use piano_core::identity::Claims;
use piano_core::names;
use piano_core::password::{ACCOUNT_ITERATIONS, PasswordHash};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

// The record, roles and session lifetime are the edge's, from the core: MongoDB's `accounts`
// documents hold this record, so either side reads what the other wrote.
pub use piano_core::account::{AccountData, ROLES, SESSION_TTL_MS};

/// The outcome of presenting a refresh secret.
enum Refreshed {
    NoSession,
    Ended,
    /// A secret that was already rotated away: the session is revoked now.
    Reused,
    /// A secret this session never had: refused, and the session is left alone (a guess
    /// must not be able to end someone's session).
    WrongSecret,
    Rotated(u64),
}

/// How many rotated-away secret hashes a session remembers, to recognise a stolen refresh token
/// presented after its owner refreshed (reuse), as opposed to a made-up one.
const OLD_SECRETS: usize = 8;

enum Backend {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Redis(RedisHandle),
}

pub struct Accounts {
    backend: Backend,
    /// Redis shared with the edge (cluster mode): where ended sessions are announced.
    shared: Option<(RedisHandle, layout::Keys)>,
    mongo: Option<Arc<Mongo>>,
    mongo_writes: Option<crate::mongo::Mirror>,
    /// Session ends and role changes, for the rooms ([`crate::reach`]).
    reach: Option<mpsc::Sender<Reach>>,
    access_ttl_secs: u64,
    /// After a failed MongoDB lookup, later ones are skipped until then (ms), as at the edge.
    lookup_skip_until: AtomicU64,
}

type Failure = String;

fn account_key(key: &str) -> String {
    format!("piano:account:{key}")
}
fn session_key(key: &str, sid: &str) -> String {
    format!("piano:session:{key}:{sid}")
}
fn sessions_key(key: &str) -> String {
    format!("piano:sessions:{key}")
}

/// Replaces the account only if it is still what was read (profile and role changes).
const CAS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// KEYS: session hash, sessions set. ARGV: presented secret hash, new secret hash, now, new
/// expiry, sid, sessions-set TTL, old secrets kept. Returns {0} no session, {1} ended, {2}
/// reused (now revoked), {3, generation}, {4} a secret the session never had (left alone).
const REFRESH: &str = r"
local s = redis.call('HMGET', KEYS[1], 'h', 'e', 'r', 'o')
if not s[1] then return {0} end
if s[3] == '1' or tonumber(s[2]) <= tonumber(ARGV[3]) then return {1} end
local old = s[4] or ''
if s[1] ~= ARGV[1] then
  if string.find(',' .. old .. ',', ',' .. ARGV[1] .. ',', 1, true) then
    redis.call('HSET', KEYS[1], 'r', '1')
    redis.call('ZREM', KEYS[2], ARGV[5])
    return {2}
  end
  return {4}
end
local kept = {}
for h in string.gmatch(old, '[^,]+') do table.insert(kept, h) end
table.insert(kept, s[1])
while #kept > tonumber(ARGV[7]) do table.remove(kept, 1) end
local g = redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HSET', KEYS[1], 'h', ARGV[2], 'e', ARGV[4], 'o', table.concat(kept, ','))
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {3, g}";

/// Logout with a refresh token. KEYS: session hash, sessions set. ARGV: presented secret hash,
/// sid. 1: the session held that secret (now or before) and is revoked now; 0: it did not
/// (or there is no such session), nothing changed.
const LOGOUT: &str = r"
local s = redis.call('HMGET', KEYS[1], 'h', 'o')
if not s[1] then return 0 end
if s[1] ~= ARGV[1] and not string.find(',' .. (s[2] or '') .. ',', ',' .. ARGV[1] .. ',', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], 'r', '1')
redis.call('ZREM', KEYS[2], ARGV[2])
return 1";

/// KEYS: session hash, sessions set. ARGV: sid. 1 if the session existed (and is revoked now).
const REVOKE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'r', '1')
  return 1
end
return 0";

/// KEYS: sessions set. ARGV: session key prefix, max live sessions (0: unlimited), now.
/// Keeps the newest `max` live sessions, revokes the other live ones (returned), and forgets
/// members whose session is gone or revoked.
const LIMIT: &str = r"
local max, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local kept, revoked = 0, {}
for _, sid in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local k = ARGV[1] .. sid
  local s = redis.call('HMGET', k, 'r', 'e')
  if not s[1] or s[1] == '1' then
    redis.call('ZREM', KEYS[1], sid)
  elseif max == 0 or (kept < max and tonumber(s[2]) > now) then
    kept = kept + 1
  else
    redis.call('HSET', k, 'r', '1')
    redis.call('ZREM', KEYS[1], sid)
    table.insert(revoked, sid)
  end
end
return revoked";

const SQL_SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS accounts (key TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS sessions (
        sid TEXT PRIMARY KEY, key TEXT NOT NULL, secret_hash TEXT NOT NULL,
        generation INTEGER NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS sessions_by_key ON sessions (key, created);
";

impl Accounts {
    /// Standalone: `DATA_DIR/accounts.sqlite3`.
    pub fn sqlite(data_dir: &std::path::Path) -> Result<Accounts, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("DATA_DIR {}: {e}", data_dir.display()))?;
        let path = data_dir.join("accounts.sqlite3");
        let conn =
            rusqlite::Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .and_then(|()| conn.execute_batch(SQL_SCHEMA))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Rotated-away secret hashes (comma-separated), added after the first release: a
        // database that already has the column refuses the ALTER, which is fine.
        let _ = conn.execute(
            "ALTER TABLE sessions ADD COLUMN old_hashes TEXT NOT NULL DEFAULT ''",
            [],
        );
        Ok(Accounts::with(Backend::Sqlite(Arc::new(Mutex::new(conn)))))
    }

    /// Cluster mode: accounts and sessions in Redis, ended sessions announced under `prefix`.
    pub fn redis(conn: RedisHandle, prefix: &str) -> Accounts {
        let mut a = Accounts::with(Backend::Redis(conn.clone()));
        a.shared = Some((
            conn,
            layout::Keys {
                prefix: prefix.to_owned(),
            },
        ));
        a
    }

    fn with(backend: Backend) -> Accounts {
        Accounts {
            backend,
            shared: None,
            mongo: None,
            mongo_writes: None,
            reach: None,
            access_ttl_secs: 900,
            lookup_skip_until: AtomicU64::new(0),
        }
    }

    /// Where session ends and role changes go ([`crate::reach`]).
    pub fn with_reach(mut self, tx: mpsc::Sender<Reach>) -> Accounts {
        self.reach = Some(tx);
        self
    }

    pub async fn reach(&self, event: Reach) {
        if let Some(tx) = &self.reach {
            let _ = tx.send(event).await;
        }
    }

    pub fn configure(mut self, access_ttl_secs: u64, mongo: Option<Arc<Mongo>>) -> Accounts {
        self.access_ttl_secs = access_ttl_secs;
        self.mongo_writes = mongo.as_ref().map(|m| m.account_writer());
        self.mongo = mongo;
        self
    }

    async fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Failure> {
        let Backend::Sqlite(conn) = &self.backend else {
            return Err("not a sqlite store".into());
        };
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn redis_failed(what: &str, e: redis::RedisError) -> Failure {
        redis_error(what, &e);
        e.to_string()
    }

    // -- accounts ------------------------------------------------------------------------

    pub async fn load(&self, key: &str) -> Result<Option<AccountData>, Failure> {
        let raw: Option<String> = match &self.backend {
            Backend::Sqlite(_) => {
                let key = key.to_owned();
                self.sql(move |c| {
                    use rusqlite::OptionalExtension;
                    c.query_row("SELECT data FROM accounts WHERE key = ?1", [key], |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .await?
            }
            Backend::Redis(conn) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(account_key(key));
                conn.cmd(&cmd)
                    .await
                    .map_err(|e| Self::redis_failed("reading an account", e))?
            }
        };
        match raw {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| format!("stored account {key} is unreadable: {e}")),
        }
    }

    /// Stores a new account unless the name is taken; `false` if it was.
    async fn create(&self, key: &str, a: &AccountData) -> Result<bool, Failure> {
        let data = serde_json::to_string(a).map_err(|e| e.to_string())?;
        match &self.backend {
            Backend::Sqlite(_) => {
                let key = key.to_owned();
                self.sql(move |c| {
                    c.execute(
                        "INSERT OR IGNORE INTO accounts (key, data) VALUES (?1, ?2)",
                        (key, data),
                    )
                    .map(|n| n == 1)
                })
                .await
            }
            Backend::Redis(conn) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(account_key(key)).arg(data).arg("NX");
                let set: Option<String> = conn
                    .cmd(&cmd)
                    .await
                    .map_err(|e| Self::redis_failed("creating an account", e))?;
                Ok(set.is_some())
            }
        }
    }

    /// Changes an account atomically (`None` if there is none) and mirrors it to MongoDB.
    async fn update(
        &self,
        key: &str,
        change: impl Fn(&mut AccountData) + Send + Sync + 'static,
    ) -> Result<Option<AccountData>, Failure> {
        let updated = match &self.backend {
            Backend::Sqlite(_) => {
                let key = key.to_owned();
                self.sql(move |c| {
                    use rusqlite::OptionalExtension;
                    let tx = c.transaction()?;
                    let raw: Option<String> = tx
                        .query_row("SELECT data FROM accounts WHERE key = ?1", [&key], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    let Some(mut a) =
                        raw.and_then(|s| serde_json::from_str::<AccountData>(&s).ok())
                    else {
                        return Ok(None);
                    };
                    change(&mut a);
                    let data = serde_json::to_string(&a).unwrap_or_default();
                    tx.execute("UPDATE accounts SET data = ?2 WHERE key = ?1", (&key, data))?;
                    tx.commit()?;
                    Ok(Some(a))
                })
                .await?
            }
            Backend::Redis(conn) => {
                let script = redis::Script::new(CAS);
                let mut result = Err("the account kept changing; try again".to_owned());
                for _ in 0..16 {
                    let mut get = redis::cmd("GET");
                    get.arg(account_key(key));
                    let raw: Option<String> = conn
                        .cmd(&get)
                        .await
                        .map_err(|e| Self::redis_failed("reading an account", e))?;
                    let Some(raw) = raw else {
                        return Ok(None);
                    };
                    let mut a: AccountData =
                        serde_json::from_str(&raw).map_err(|e| e.to_string())?;
                    change(&mut a);
                    let data = serde_json::to_string(&a).map_err(|e| e.to_string())?;
                    let mut call = script.key(account_key(key));
                    call.arg(&raw).arg(&data);
                    let swapped: i64 = conn
                        .script(&call)
                        .await
                        .map_err(|e| Self::redis_failed("updating an account", e))?;
                    if swapped == 1 {
                        result = Ok(Some(a));
                        break;
                    }
                }
                result?
            }
        };
        if let Some(a) = &updated {
            self.mirror(a, false);
        }
        Ok(updated)
    }

    /// Queues the account's document for MongoDB (as the edge's `Account::save`): inserted
    /// only if absent when `created` (a registration racing one elsewhere never overwrites
    /// it), otherwise applied only to the document of the same registration (same tag).
    fn mirror(&self, a: &AccountData, created: bool) {
        if let Some(tx) = &self.mongo_writes {
            let now = crate::now_ms();
            let op = if created {
                layout::account_created(&a.user_id(), a.document(), now)
            } else {
                layout::account_updated(&a.user_id(), &a.tag, a.document(), now)
            };
            tx.send(crate::mongo::MirrorMsg::Op(op));
        }
    }

    /// The local account, or one another deployment registered in the shared MongoDB (kept
    /// here from then on). Without MongoDB, or while it fails, only local accounts exist.
    pub async fn find(&self, key: &str) -> Result<Option<AccountData>, Failure> {
        if let Some(a) = self.load(key).await? {
            return Ok(Some(a));
        }
        self.import(key).await
    }

    async fn import(&self, key: &str) -> Result<Option<AccountData>, Failure> {
        let Some(mongo) = &self.mongo else {
            return Ok(None);
        };
        if self.lookup_skip_until.load(Relaxed) > crate::now_ms() {
            return Ok(None);
        }
        let doc = match mongo.find_account(&format!("user:{key}")).await {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(error = %e, "account lookup in MongoDB failed, using local accounts only");
                crate::metrics::METRICS.mongo_errors.fetch_add(1, Relaxed);
                self.lookup_skip_until
                    .store(crate::now_ms() + 30_000, Relaxed);
                return Ok(None);
            }
        };
        let Some(account) = doc.and_then(|d| serde_json::from_value::<AccountData>(d).ok()) else {
            return Ok(None);
        };
        if names::username(&account.username).ok().as_deref() != Some(key) {
            tracing::warn!(key, "MongoDB account document names another user; ignored");
            return Ok(None);
        }
        // Another request may have created or imported it meanwhile: theirs stands.
        self.create(key, &account).await?;
        tracing::info!(user = key, "account imported from MongoDB");
        self.load(key).await
    }

    // -- sessions ------------------------------------------------------------------------

    /// Opens a session; with `max_sessions` > 0 the oldest live ones beyond it are ended.
    async fn open_session(
        &self,
        a: &AccountData,
        key: &str,
        max_sessions: u32,
        now: u64,
    ) -> Result<(String, String), Failure> {
        let sid = crate::config::random_hex(16);
        let secret = crate::config::random_hex(32);
        let hash = hash_secret(&secret);
        let expires = now + SESSION_TTL_MS;
        let evicted: Vec<String> = match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid) = (key.to_owned(), sid.clone());
                self.sql(move |c| {
                    let tx = c.transaction()?;
                    tx.execute(
                        "INSERT INTO sessions (sid, key, secret_hash, generation, created, expires) VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                        (&sid, &key, &hash, now as i64, expires as i64),
                    )?;
                    // Sessions that can no longer be presented are forgotten.
                    tx.execute(
                        "DELETE FROM sessions WHERE key = ?1 AND expires <= ?2",
                        (&key, now as i64),
                    )?;
                    let mut evicted = Vec::new();
                    if max_sessions > 0 {
                        let mut stmt = tx.prepare(
                            "SELECT sid FROM sessions WHERE key = ?1 AND revoked = 0 AND sid NOT IN \
                             (SELECT sid FROM sessions WHERE key = ?1 AND revoked = 0 AND expires > ?2 \
                              ORDER BY created DESC, sid LIMIT ?3)",
                        )?;
                        evicted = stmt
                            .query_map((&key, now as i64, max_sessions as i64), |r| r.get(0))?
                            .collect::<rusqlite::Result<Vec<String>>>()?;
                        drop(stmt);
                        for s in &evicted {
                            tx.execute("UPDATE sessions SET revoked = 1 WHERE sid = ?1", [s])?;
                        }
                    }
                    tx.commit()?;
                    Ok(evicted)
                })
                .await?
            }
            Backend::Redis(conn) => {
                let skey = session_key(key, &sid);
                let mut pipe = redis::pipe();
                pipe.cmd("HSET")
                    .arg(&skey)
                    .arg("h")
                    .arg(&hash)
                    .arg("g")
                    .arg(1)
                    .arg("c")
                    .arg(now)
                    .arg("e")
                    .arg(expires)
                    .arg("r")
                    .arg("0")
                    .ignore()
                    .cmd("PEXPIREAT")
                    .arg(&skey)
                    .arg(expires)
                    .ignore()
                    .cmd("ZADD")
                    .arg(sessions_key(key))
                    .arg(now)
                    .arg(&sid)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(sessions_key(key))
                    .arg(SESSION_TTL_MS)
                    .ignore();
                conn.pipe::<()>(&pipe)
                    .await
                    .map_err(|e| Self::redis_failed("opening a session", e))?;
                let script = redis::Script::new(LIMIT);
                let mut call = script.key(sessions_key(key));
                call.arg(format!("piano:session:{key}:"))
                    .arg(max_sessions)
                    .arg(now);
                conn.script(&call)
                    .await
                    .map_err(|e| Self::redis_failed("limiting sessions", e))?
            }
        };
        for old in &evicted {
            self.announce_revoked(old, &a.user_id()).await;
        }
        Ok((sid, secret))
    }

    async fn refresh_session(
        &self,
        key: &str,
        sid: &str,
        secret: &str,
        new_secret: &str,
        now: u64,
    ) -> Result<Refreshed, Failure> {
        let presented = hash_secret(secret);
        let fresh = hash_secret(new_secret);
        let expires = now + SESSION_TTL_MS;
        match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid) = (key.to_owned(), sid.to_owned());
                self.sql(move |c| {
                    use rusqlite::OptionalExtension;
                    let tx = c.transaction()?;
                    let row: Option<(String, i64, i64, i64, String)> = tx
                        .query_row(
                            "SELECT secret_hash, generation, expires, revoked, old_hashes FROM sessions WHERE sid = ?1 AND key = ?2",
                            (&sid, &key),
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                        )
                        .optional()?;
                    let outcome = match row {
                        None => Refreshed::NoSession,
                        Some((_, _, exp, revoked, _)) if revoked != 0 || exp as u64 <= now => {
                            Refreshed::Ended
                        }
                        Some((hash, _, _, _, old)) if hash != presented => {
                            if old.split(',').any(|h| h == presented) {
                                tx.execute("UPDATE sessions SET revoked = 1 WHERE sid = ?1", [&sid])?;
                                Refreshed::Reused
                            } else {
                                Refreshed::WrongSecret
                            }
                        }
                        Some((hash, generation, _, _, old)) => {
                            let mut kept: Vec<&str> =
                                old.split(',').filter(|h| !h.is_empty()).collect();
                            kept.push(&hash);
                            let kept = kept[kept.len().saturating_sub(OLD_SECRETS)..].join(",");
                            tx.execute(
                                "UPDATE sessions SET secret_hash = ?2, generation = ?3, expires = ?4, old_hashes = ?5 WHERE sid = ?1",
                                (&sid, &fresh, generation + 1, expires as i64, kept),
                            )?;
                            Refreshed::Rotated(generation as u64 + 1)
                        }
                    };
                    tx.commit()?;
                    Ok(outcome)
                })
                .await
            }
            Backend::Redis(conn) => {
                let script = redis::Script::new(REFRESH);
                let mut call = script.key(session_key(key, sid));
                call.key(sessions_key(key))
                    .arg(&presented)
                    .arg(&fresh)
                    .arg(now)
                    .arg(expires)
                    .arg(sid)
                    .arg(SESSION_TTL_MS)
                    .arg(OLD_SECRETS);
                let answer: Vec<u64> = conn
                    .script(&call)
                    .await
                    .map_err(|e| Self::redis_failed("refreshing a session", e))?;
                Ok(match answer.as_slice() {
                    [1] => Refreshed::Ended,
                    [2] => Refreshed::Reused,
                    [4] => Refreshed::WrongSecret,
                    [3, generation] => Refreshed::Rotated(*generation),
                    _ => Refreshed::NoSession,
                })
            }
        }
    }

    /// Ends a session presented with a refresh secret it holds (or held: a rotated-away one
    /// ends it too); `false`, and nothing changes, for a secret it never had.
    async fn revoke_with_secret(
        &self,
        key: &str,
        sid: &str,
        secret: &str,
    ) -> Result<bool, Failure> {
        let presented = hash_secret(secret);
        let ended = match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid) = (key.to_owned(), sid.to_owned());
                self.sql(move |c| {
                    use rusqlite::OptionalExtension;
                    let tx = c.transaction()?;
                    let row: Option<(String, String)> = tx
                        .query_row(
                            "SELECT secret_hash, old_hashes FROM sessions WHERE sid = ?1 AND key = ?2",
                            (&sid, &key),
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    let held = row.is_some_and(|(hash, old)| {
                        hash == presented || old.split(',').any(|h| h == presented)
                    });
                    if held {
                        tx.execute("UPDATE sessions SET revoked = 1 WHERE sid = ?1", [&sid])?;
                    }
                    tx.commit()?;
                    Ok(held)
                })
                .await?
            }
            Backend::Redis(conn) => {
                let script = redis::Script::new(LOGOUT);
                let mut call = script.key(session_key(key, sid));
                call.key(sessions_key(key)).arg(&presented).arg(sid);
                let n: i64 = conn
                    .script(&call)
                    .await
                    .map_err(|e| Self::redis_failed("ending a session", e))?;
                n == 1
            }
        };
        if ended {
            self.announce_revoked(sid, &format!("user:{key}")).await;
        }
        Ok(ended)
    }

    /// Ends a session; `true` if there was one. With Redis, announced to the edge too.
    async fn revoke(&self, key: &str, sid: &str) -> Result<bool, Failure> {
        let existed = match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid) = (key.to_owned(), sid.to_owned());
                self.sql(move |c| {
                    c.execute(
                        "UPDATE sessions SET revoked = 1 WHERE sid = ?1 AND key = ?2",
                        (&sid, &key),
                    )
                    .map(|n| n == 1)
                })
                .await?
            }
            Backend::Redis(conn) => {
                let script = redis::Script::new(REVOKE);
                let mut call = script.key(session_key(key, sid));
                call.key(sessions_key(key)).arg(sid);
                let n: i64 = conn
                    .script(&call)
                    .await
                    .map_err(|e| Self::redis_failed("ending a session", e))?;
                n == 1
            }
        };
        if existed {
            self.announce_revoked(sid, &format!("user:{key}")).await;
        }
        Ok(existed)
    }

    /// `{REDIS_KEY_PREFIX}revoked:<sid>` (the edge's revocation list), for as long as an
    /// access token of the session could still be presented.
    async fn announce_revoked(&self, sid: &str, user_id: &str) {
        // Open sockets of the session close (4001), on every replica (`reach`).
        self.reach(Reach::SessionEnded {
            user_id: user_id.to_owned(),
            session_id: Some(sid.to_owned()),
        })
        .await;
        let Some((conn, keys)) = &self.shared else {
            return;
        };
        let op = layout::session_revoked(keys, sid, user_id, self.access_ttl_secs);
        if let Err(e) = run_redis_op(conn, &op).await {
            redis_error("announcing an ended session", &e);
        }
    }

    /// Whether the session a member's token names is still the live one (see [`Check`]).
    pub async fn check(&self, sub: &str, sid: &str, generation: u64) -> Result<Check, Failure> {
        let Some(key) = sub.strip_prefix("user:") else {
            return Ok(Check::Ended);
        };
        let now = crate::now_ms();
        match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid) = (key.to_owned(), sid.to_owned());
                self.sql(move |c| {
                    use rusqlite::OptionalExtension;
                    let row: Option<(i64, i64, i64)> = c
                        .query_row(
                            "SELECT generation, expires, revoked FROM sessions WHERE sid = ?1 AND key = ?2",
                            (&sid, &key),
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .optional()?;
                    Ok(match row {
                        None => Check::Unknown,
                        Some((g, exp, revoked)) => {
                            if revoked == 0 && exp as u64 > now && g as u64 == generation {
                                Check::Live {
                                    expires_at: exp as u64,
                                }
                            } else {
                                Check::Ended
                            }
                        }
                    })
                })
                .await
            }
            Backend::Redis(conn) => {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg(session_key(key, sid))
                    .arg("g")
                    .arg("e")
                    .arg("r");
                let revoked_key = self.shared.as_ref().map(|(_, k)| k.revoked(sid));
                pipe.cmd("EXISTS")
                    .arg(revoked_key.unwrap_or_else(|| "piano:none".into()));
                type Row = (Option<u64>, Option<u64>, Option<String>);
                let ((g, exp, revoked), listed): (Row, bool) = conn
                    .pipe(&pipe)
                    .await
                    .map_err(|e| Self::redis_failed("checking a session", e))?;
                Ok(match (g, exp) {
                    _ if listed => Check::Ended,
                    (Some(g), Some(exp)) => {
                        if revoked.as_deref() == Some("0") && exp > now && g == generation {
                            Check::Live { expires_at: exp }
                        } else {
                            Check::Ended
                        }
                    }
                    _ => Check::Unknown,
                })
            }
        }
    }
}

fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        let t = crate::now_us().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % 8];
        }
    }
    b
}

// -- HTTP ------------------------------------------------------------------------------------

fn unavailable(e: &str) -> Response {
    tracing::warn!(error = e, "account store failed");
    json_error(
        503,
        "unavailable",
        "the account store cannot be reached right now; try again",
    )
}

fn no_store(resp: Response) -> Response {
    with_header(resp, "cache-control", "no-store")
}

/// The request body as `T`: 413 over 4096 bytes, 400 `invalid_json` otherwise.
#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
pub fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(bytes)
        .map_err(|e| json_error(400, "invalid_json", &format!("bad request body: {e}")))
}

macro_rules! try_resp {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(resp) => return resp,
        }
    };
}

/// Access and refresh tokens for a session, as the edge's `issue` answers.
fn issue(
    cfg: &Config,
    a: &AccountData,
    sid: &str,
    secret: &str,
    generation: u64,
    status: u16,
) -> Response {
    let key = a.username.to_ascii_lowercase();
    let now = crate::now_ms() / 1000;
    let claims = Claims {
        sub: format!("user:{key}"),
        name: a.name.clone(),
        roles: a.roles.clone(),
        iat: now,
        exp: now + cfg.access_ttl_secs,
        nbf: None,
        iss: cfg.issuer.clone(),
        aud: cfg.audience.clone(),
        sid: Some(sid.to_owned()),
        generation: Some(generation),
    };
    let access = cfg.signing.sign(&claims);
    no_store(json(
        status,
        &serde_json::json!({
            "access_token": access,
            "token": access,
            "expires_at": claims.exp,
            "refresh_token": format!("{key}.{sid}.{secret}"),
            "user": a.public(),
        }),
    ))
}

async fn start_session(
    cfg: &Config,
    accounts: &Accounts,
    a: &AccountData,
    key: &str,
    status: u16,
) -> Response {
    let now = crate::now_ms();
    match accounts.open_session(a, key, cfg.max_sessions, now).await {
        Ok((sid, secret)) => issue(cfg, a, &sid, &secret, 1, status),
        Err(e) => unavailable(&e),
    }
}

fn invalid_credentials() -> Response {
    json_error(401, "invalid_credentials", "wrong username or password")
}

/// `POST /api/auth/register {"username", "password", "email"?}`.
pub async fn register(
    cfg: &Config,
    accounts: &Accounts,
    bootstrap: Option<&str>,
    bytes: &[u8],
) -> Response {
    #[derive(Deserialize)]
    struct Body {
        username: String,
        password: String,
        #[serde(default)]
        email: Option<String>,
    }
    let b: Body = try_resp!(body(bytes));
    let key =
        match piano_core::account::check_registration(&b.username, &b.password, b.email.as_deref())
        {
            Ok(k) => k,
            Err((code, message)) => return json_error(400, code, &message),
        };
    let admin = match piano_core::account::admin_on_register(
        &key,
        &cfg.admins,
        cfg.admin_bootstrap_secret.as_deref(),
        bootstrap,
    ) {
        Ok(admin) => admin,
        Err((code, message)) => return json_error(403, code, message),
    };
    let taken = || json_error(409, "username_taken", "that username is taken");
    match accounts.find(&key).await {
        Ok(Some(_)) => return taken(),
        Ok(None) => {}
        Err(e) => return unavailable(&e),
    }
    let password = b.password;
    let Ok(hash) = tokio::task::spawn_blocking(move || {
        PasswordHash::with_iterations(&password, random_bytes::<16>().to_vec(), ACCOUNT_ITERATIONS)
    })
    .await
    else {
        return unavailable("password hashing failed");
    };
    let mut roles = vec!["member".to_owned()];
    if admin {
        roles.push("admin".into());
    }
    let username = b.username.trim().to_owned();
    let account = AccountData {
        tag: random_bytes::<3>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        email: b.email,
        password: hash,
        roles,
        name: username.clone(),
        username,
        color: None,
        status: String::new(),
        created_at: crate::now_ms(),
    };
    match accounts.create(&key, &account).await {
        Ok(true) => {}
        Ok(false) => return taken(),
        Err(e) => return unavailable(&e),
    }
    accounts.mirror(&account, true);
    tracing::info!(user = key, "member registered");
    start_session(cfg, accounts, &account, &key, 201).await
}

/// `POST /api/auth/login {"username", "password"}`.
pub async fn login(cfg: &Config, accounts: &Accounts, bytes: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct Body {
        username: String,
        password: String,
    }
    let b: Body = try_resp!(body(bytes));
    let Ok(key) = names::username(&b.username) else {
        return invalid_credentials();
    };
    let mut account = match accounts.find(&key).await {
        Ok(Some(a)) => a,
        // Same answer as a wrong password: do not reveal which usernames exist.
        Ok(None) => return invalid_credentials(),
        Err(e) => return unavailable(&e),
    };
    let stored = account.password.clone();
    let password = b.password;
    let ok = tokio::task::spawn_blocking(move || stored.verify(&password))
        .await
        .unwrap_or(false);
    if !ok {
        return invalid_credentials();
    }
    if piano_core::account::admin_on_login(&key, &cfg.admins)
        && !account.roles.iter().any(|r| r == "admin")
    {
        match accounts
            .update(&key, |a| {
                if !a.roles.iter().any(|r| r == "admin") {
                    a.roles.push("admin".into());
                }
            })
            .await
        {
            Ok(Some(a)) => account = a,
            Ok(None) => return invalid_credentials(),
            Err(e) => return unavailable(&e),
        }
    }
    start_session(cfg, accounts, &account, &key, 200).await
}

/// `<username>.<sid>.<secret>`.
fn parse_refresh(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.splitn(3, '.');
    let parts = (parts.next()?, parts.next()?, parts.next()?);
    (parts.0.len() <= 64 && parts.1.len() <= 64).then_some(parts)
}

/// `POST /api/auth/refresh {"refresh_token"}`: new access and refresh tokens; the old ones stop
/// working.
pub async fn refresh(cfg: &Config, accounts: &Accounts, bytes: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct Body {
        refresh_token: String,
    }
    let b: Body = try_resp!(body(bytes));
    let not_valid = || json_error(401, "invalid_session", "refresh token is not valid");
    let Some((key, sid, secret)) = parse_refresh(&b.refresh_token) else {
        return not_valid();
    };
    let account = match accounts.load(key).await {
        Ok(Some(a)) => a,
        Ok(None) => return not_valid(),
        Err(e) => return unavailable(&e),
    };
    let new_secret = crate::config::random_hex(32);
    match accounts
        .refresh_session(key, sid, secret, &new_secret, crate::now_ms())
        .await
    {
        Err(e) => unavailable(&e),
        Ok(Refreshed::NoSession | Refreshed::WrongSecret) => not_valid(),
        Ok(Refreshed::Ended) => json_error(
            401,
            "invalid_session",
            "the session has ended: log in again",
        ),
        Ok(Refreshed::Reused) => {
            // A rotated-away refresh token came back: someone else may hold the new one.
            tracing::warn!(user = key, sid, "refresh token reused: session revoked");
            accounts.announce_revoked(sid, &account.user_id()).await;
            json_error(
                401,
                "invalid_session",
                "refresh token was already used: session revoked",
            )
        }
        Ok(Refreshed::Rotated(generation)) => {
            issue(cfg, &account, sid, &new_secret, generation, 200)
        }
    }
}

/// `POST /api/auth/logout {"refresh_token"}` (or with just the access token as Bearer): ends
/// the session; its access and refresh tokens are refused from now on.
pub async fn logout(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    bytes: &[u8],
) -> Response {
    #[derive(Deserialize, Default)]
    struct Body {
        #[serde(default)]
        refresh_token: Option<String>,
    }
    let b: Body = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(refresh) = b.refresh_token.as_deref() {
        // The refresh token is the credential: its secret must be this session's (user and
        // session id alone are in every access token's readable payload).
        let not_valid = || json_error(401, "invalid_session", "refresh token is not valid");
        let Some((key, sid, secret)) = parse_refresh(refresh) else {
            return not_valid();
        };
        return match accounts.revoke_with_secret(key, sid, secret).await {
            Ok(true) => no_content(),
            Ok(false) => not_valid(),
            Err(e) => unavailable(&e),
        };
    }
    // Without a refresh token: the session of a live, verified access token (the whole signed
    // token is the credential).
    let claims = try_resp!(crate::auth::verify_claims(cfg, accounts, bearer.as_deref()).await);
    let (key, sid) = match (claims.sub.strip_prefix("user:"), claims.sid) {
        (Some(user), Some(sid)) => (user.to_owned(), sid),
        _ => return json_error(400, "not_a_member", "guest tokens have no session to end"),
    };
    if let Err(e) = accounts.revoke(&key, &sid).await {
        return unavailable(&e);
    }
    no_content()
}

fn no_content() -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = axum::http::StatusCode::NO_CONTENT;
    resp
}

/// `GET /api/users/me` for a member: the stored profile. (A member token of an account this
/// deployment cannot find, e.g. the edge's without a shared MongoDB: who the token says.)
pub async fn me(accounts: &Accounts, claims: &Claims) -> Option<Response> {
    let key = claims.sub.strip_prefix("user:")?;
    match accounts.find(key).await {
        Ok(Some(a)) => Some(no_store(json(200, &a.public()))),
        Ok(None) => None,
        Err(e) => Some(unavailable(&e)),
    }
}

/// `PUT /api/users/me {"name"?, "color"?, "status"?}` (members).
pub async fn update_me(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    bytes: &[u8],
) -> Response {
    let claims = try_resp!(crate::auth::verify_claims(cfg, accounts, bearer.as_deref()).await);
    let Some(key) = claims.sub.strip_prefix("user:") else {
        return json_error(403, "guests_have_no_profile", "register to keep a profile");
    };
    #[derive(Deserialize)]
    struct ProfileReq {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        color: Option<String>,
        #[serde(default)]
        status: Option<String>,
    }
    let r: ProfileReq = try_resp!(body(bytes));
    let name = match r.name.map(|n| names::display_name(&n)).transpose() {
        Ok(n) => n,
        Err(e) => return json_error(400, "invalid_name", &format!("name {e}")),
    };
    let color = match r
        .color
        .map(|c| piano_core::room::text::color(&c))
        .transpose()
    {
        Ok(c) => c,
        Err(e) => return json_error(400, "invalid_color", &e),
    };
    let status = match r
        .status
        .map(|s| {
            piano_core::room::text::optional_line(
                "status",
                &s,
                piano_core::room::text::MAX_STATUS_CHARS,
            )
        })
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return json_error(400, "invalid_status", &e),
    };
    if let Err(e) = accounts.find(key).await {
        return unavailable(&e);
    }
    let updated = accounts
        .update(key, move |a| {
            if let Some(n) = &name {
                a.name = n.clone();
            }
            if let Some(c) = &color {
                a.color = Some(c.clone());
            }
            if let Some(s) = &status {
                a.status = s.clone();
            }
        })
        .await;
    match updated {
        Ok(Some(a)) => no_store(json(200, &a.public())),
        Ok(None) => json_error(404, "not_found", "no such user"),
        Err(e) => unavailable(&e),
    }
}

/// The username of a `user:<name>` path segment.
fn user_key(raw_id: &str) -> Option<String> {
    names::percent_decode(raw_id)?
        .strip_prefix("user:")
        .and_then(|u| names::username(u).ok())
}

/// `GET /api/users/{id}`: a member's public profile.
pub async fn user(accounts: &Accounts, raw_id: &str) -> Response {
    let Some(key) = user_key(raw_id) else {
        return json_error(404, "not_found", "no such user");
    };
    // Local accounts only, as at the edge: an anonymous read must not cost a MongoDB lookup.
    match accounts.load(&key).await {
        Ok(Some(a)) => no_store(json(200, &a.public())),
        Ok(None) => json_error(404, "not_found", "no such user"),
        Err(e) => unavailable(&e),
    }
}

/// `POST /api/admin/users/{id}/roles {"add": [...], "remove": [...]}` (admins only).
pub async fn set_roles(
    cfg: &Config,
    accounts: &Accounts,
    bearer: Option<String>,
    raw_id: &str,
    bytes: &[u8],
) -> Response {
    let claims = try_resp!(crate::auth::verify_claims(cfg, accounts, bearer.as_deref()).await);
    if !claims.roles.iter().any(|r| r == "admin") {
        return json_error(403, "forbidden", "only admins may change roles");
    }
    let Some(key) = user_key(raw_id) else {
        return json_error(404, "not_found", "no such user");
    };
    #[derive(Deserialize)]
    struct RolesReq {
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
    }
    let r: RolesReq = try_resp!(body(bytes));
    if let Some(bad) = r
        .add
        .iter()
        .chain(&r.remove)
        .find(|x| !ROLES.contains(&x.as_str()))
    {
        return json_error(400, "invalid_role", &format!("unknown role {bad:?}"));
    }
    if let Err(e) = accounts.find(&key).await {
        return unavailable(&e);
    }
    let updated = accounts
        .update(&key, move |a| {
            a.roles.retain(|x| !r.remove.contains(x));
            for role in &r.add {
                if !a.roles.contains(role) {
                    a.roles.push(role.clone());
                }
            }
        })
        .await;
    match updated {
        Ok(Some(a)) => {
            // Open sockets carry the old roles: they close (4002) and reconnect with new ones.
            accounts
                .reach(Reach::IdentityChanged {
                    user_id: a.user_id(),
                })
                .await;
            no_store(json(200, &a.public()))
        }
        Ok(None) => json_error(404, "not_found", "no such user"),
        Err(e) => unavailable(&e),
    }
}

/// The token check's view of the session store ([`crate::auth`] sits below the accounts).
impl crate::auth::Sessions for Accounts {
    fn check(
        &self,
        sub: &str,
        sid: &str,
        generation: u64,
    ) -> impl std::future::Future<Output = Result<Check, Failure>> + Send {
        Accounts::check(self, sub, sid, generation)
    }
}
