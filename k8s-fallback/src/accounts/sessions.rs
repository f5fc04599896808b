//! Sessions in the fallback's stores. The rules are the core's ([`session`]): SQLite reads the
//! rows, asks the core, and writes what it answers inside one transaction. Redis runs the same
//! rules as Lua scripts (a read-decide-write must be atomic there across replicas); they keep
//! [`session::OLD_SECRETS`] old hashes and the core's expiry, and the e2e trials run them
//! against the same assertions as the edge.

use super::store::{Accounts, Backend, Failure, session_key, sessions_key};
use crate::metrics::redis_error;
use crate::reach::Reach;
use crate::redis_handle::run_redis_op;
use piano_backends::layout;
use piano_core::account::SessionRefusal;
use piano_core::account::session::{self, Check, OLD_SECRETS, Refresh, Session};
use rusqlite::OptionalExtension;

/// The outcome of presenting a refresh secret.
pub enum Refreshed {
    Refused(SessionRefusal),
    /// A secret that was already rotated away: the session is revoked now.
    Reused,
    Rotated(u64),
}

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

const SESSION_COLUMNS: &str = "sid, secret_hash, old_hashes, created, generation, expires, revoked";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        sid: r.get(0)?,
        secret_hash: r.get(1)?,
        old_hashes: Session::parse_old_hashes(&r.get::<_, String>(2)?),
        created: r.get::<_, i64>(3)?.max(0) as u64,
        generation: r.get::<_, i64>(4)?.max(0) as u64,
        expires: r.get::<_, i64>(5)?.max(0) as u64,
        revoked: r.get::<_, i64>(6)? != 0,
    })
}

fn sql_session(
    c: &rusqlite::Connection,
    key: &str,
    sid: &str,
) -> rusqlite::Result<Option<Session>> {
    c.query_row(
        &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE sid = ?1 AND key = ?2"),
        (sid, key),
        session_row,
    )
    .optional()
}

fn sql_revoke(c: &rusqlite::Connection, sid: &str) -> rusqlite::Result<()> {
    c.execute("UPDATE sessions SET revoked = 1 WHERE sid = ?1", [sid])
        .map(drop)
}

impl Accounts {
    /// Opens a session (the core forgets expired ones and, with `max_sessions` > 0, ends the
    /// oldest live ones beyond it); answers the new session id and secret.
    pub async fn open_session(
        &self,
        user_id: &str,
        key: &str,
        max_sessions: u32,
        now: u64,
    ) -> Result<(String, String), Failure> {
        let sid = crate::config::random_hex(16);
        let secret = crate::config::random_hex(32);
        let new = Session::new(sid.clone(), &secret, now, self.session_ttl_ms);
        let (hash, expires) = (new.secret_hash.clone(), new.expires);
        let evicted: Vec<String> = match &self.backend {
            Backend::Sqlite(_) => {
                let key = key.to_owned();
                self.sql(move |c| {
                    let tx = c.transaction()?;
                    let existing = {
                        let mut stmt = tx.prepare(&format!(
                            "SELECT {SESSION_COLUMNS} FROM sessions WHERE key = ?1"
                        ))?;
                        stmt.query_map([&key], session_row)?
                            .collect::<rusqlite::Result<Vec<Session>>>()?
                    };
                    let opening = session::open(&existing, &new, max_sessions, now);
                    tx.execute(
                        "INSERT INTO sessions (sid, key, secret_hash, generation, created, expires) VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                        (&new.sid, &key, &new.secret_hash, now as i64, new.expires as i64),
                    )?;
                    for s in &opening.forget {
                        tx.execute("DELETE FROM sessions WHERE sid = ?1", [s])?;
                    }
                    for s in &opening.revoke {
                        sql_revoke(&tx, s)?;
                    }
                    tx.commit()?;
                    Ok(opening.revoke)
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
                    .arg(self.session_ttl_ms)
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
            self.announce_revoked(old, user_id).await;
        }
        Ok((sid, secret))
    }

    pub async fn refresh_session(
        &self,
        key: &str,
        sid: &str,
        secret: &str,
        new_secret: &str,
        now: u64,
    ) -> Result<Refreshed, Failure> {
        let presented = session::hash_secret(secret);
        let fresh = session::hash_secret(new_secret);
        let (expires, ttl_ms) = (now + self.session_ttl_ms, self.session_ttl_ms);
        let outcome = match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid, secret, new_secret) = (
                    key.to_owned(),
                    sid.to_owned(),
                    secret.to_owned(),
                    new_secret.to_owned(),
                );
                self.sql(move |c| {
                    let tx = c.transaction()?;
                    let row = sql_session(&tx, &key, &sid)?;
                    let outcome = match session::refresh(row.as_ref(), &secret, &new_secret, now, ttl_ms) {
                        Refresh::Refuse(why) => Refreshed::Refused(why),
                        Refresh::RevokeReused => {
                            sql_revoke(&tx, &sid)?;
                            Refreshed::Reused
                        }
                        Refresh::Rotate(s) => {
                            tx.execute(
                                "UPDATE sessions SET secret_hash = ?2, generation = ?3, expires = ?4, old_hashes = ?5 WHERE sid = ?1",
                                (&sid, &s.secret_hash, s.generation as i64, s.expires as i64, s.old_hashes_text()),
                            )?;
                            Refreshed::Rotated(s.generation)
                        }
                    };
                    tx.commit()?;
                    Ok(outcome)
                })
                .await?
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
                    .arg(self.session_ttl_ms)
                    .arg(OLD_SECRETS);
                let answer: Vec<u64> = conn
                    .script(&call)
                    .await
                    .map_err(|e| Self::redis_failed("refreshing a session", e))?;
                match answer.as_slice() {
                    [1] => Refreshed::Refused(SessionRefusal::Ended),
                    [2] => Refreshed::Reused,
                    [3, generation] => Refreshed::Rotated(*generation),
                    _ => Refreshed::Refused(SessionRefusal::NotValid),
                }
            }
        };
        if matches!(outcome, Refreshed::Reused) {
            self.announce_revoked(sid, &format!("user:{key}")).await;
        }
        Ok(outcome)
    }

    /// Ends a session presented with a refresh secret it holds or held ([`session::logout`]);
    /// `false`, and nothing changes, for a secret it never had.
    pub async fn revoke_with_secret(
        &self,
        key: &str,
        sid: &str,
        secret: &str,
    ) -> Result<bool, Failure> {
        let presented = session::hash_secret(secret);
        let ended = match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid, secret) = (key.to_owned(), sid.to_owned(), secret.to_owned());
                self.sql(move |c| {
                    let tx = c.transaction()?;
                    let row = sql_session(&tx, &key, &sid)?;
                    let held = session::logout(row.as_ref(), &secret).is_ok();
                    if held {
                        sql_revoke(&tx, &sid)?;
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
    pub async fn revoke(&self, key: &str, sid: &str) -> Result<bool, Failure> {
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
    pub(super) async fn announce_revoked(&self, sid: &str, user_id: &str) {
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

    /// Whether the session a member's token names is still the live one ([`session::check`]).
    pub async fn check(&self, sub: &str, sid: &str, generation: u64) -> Result<Check, Failure> {
        let Some(key) = sub.strip_prefix("user:") else {
            return Ok(Check::Ended);
        };
        let now = crate::now_ms();
        match &self.backend {
            Backend::Sqlite(_) => {
                let (key, sid) = (key.to_owned(), sid.to_owned());
                self.sql(move |c| {
                    let row = sql_session(c, &key, &sid)?;
                    let exists = c
                        .query_row("SELECT 1 FROM accounts WHERE key = ?1", [&key], |_| Ok(()))
                        .optional()?
                        .is_some();
                    Ok(session::check(exists, row.as_ref(), generation, now))
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
                pipe.cmd("EXISTS").arg(super::store::account_key(key));
                type Row = (Option<u64>, Option<u64>, Option<String>);
                let ((g, exp, revoked), listed, exists): (Row, bool, bool) = conn
                    .pipe(&pipe)
                    .await
                    .map_err(|e| Self::redis_failed("checking a session", e))?;
                if listed {
                    return Ok(Check::Ended);
                }
                let row = g.zip(exp).map(|(generation, expires)| Session {
                    generation,
                    expires,
                    revoked: revoked.as_deref() != Some("0"),
                    ..Session::default()
                });
                Ok(session::check(exists, row.as_ref(), generation, now))
            }
        }
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
