//! Where the fallback keeps accounts (storage only: the rules are `piano_core::account`).
//!
//! - **Standalone**: `DATA_DIR/accounts.sqlite3` (one connection behind a lock, used from
//!   blocking threads).
//! - **With `REDIS_URL`**: Redis, so every replica sees the same accounts and sessions:
//!   `piano:account:{username}` (the account JSON, created with `SET NX`, so two concurrent
//!   registrations of one name get exactly one 201; later changes compare-and-set),
//!   `piano:session:{username}:{sid}` (a hash: secret hash, generation, created, expires,
//!   revoked, old hashes; expiring with the session) and `piano:sessions:{username}` (a sorted
//!   set of live sessions by creation time, for `MAX_SESSIONS_PER_ACCOUNT`).
//! - **MongoDB** (`MONGODB_URL`): every account save is mirrored to `accounts` exactly as the
//!   edge writes it (`layout::account_created` / `account_updated`), and a username unknown here
//!   is looked up there and imported under the core's rules ([`lookup`]).
//!
//! Sessions are in [`super::sessions`]; providers' identity claims in [`super::claims`].

use crate::metrics::redis_error;
use crate::mongo::Mongo;
use crate::reach::Reach;
use crate::redis_handle::RedisHandle;
use piano_backends::layout;
use piano_core::account::AccountData;
use piano_core::account::lookup::{self, Lookup};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

pub(super) enum Backend {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Redis(RedisHandle),
}

pub struct Accounts {
    pub(super) backend: Backend,
    /// Redis shared with the edge (cluster mode): where ended sessions are announced.
    pub(super) shared: Option<(RedisHandle, layout::Keys)>,
    mongo: Option<Arc<Mongo>>,
    mongo_writes: Option<crate::mongo::Mirror>,
    /// Session ends and role changes, for the rooms ([`crate::reach`]).
    reach: Option<mpsc::Sender<Reach>>,
    pub(super) access_ttl_secs: u64,
    /// How long a session lives without a refresh (`REFRESH_TOKEN_TTL_SECS`, in ms).
    pub(super) session_ttl_ms: u64,
    /// After a failed MongoDB lookup, later ones are skipped until then (ms; [`lookup::skip_until`]).
    lookup_skip_until: AtomicU64,
}

pub type Failure = String;

pub(super) fn account_key(key: &str) -> String {
    format!("piano:account:{key}")
}
pub(super) fn session_key(key: &str, sid: &str) -> String {
    format!("piano:session:{key}:{sid}")
}
pub(super) fn sessions_key(key: &str) -> String {
    format!("piano:sessions:{key}")
}

/// Replaces the account only if it is still what was read (profile and role changes).
pub(super) const CAS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0";

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
    CREATE TABLE IF NOT EXISTS identity_claims (
        identity TEXT PRIMARY KEY, account TEXT NOT NULL, at INTEGER NOT NULL, by TEXT NOT NULL
    );
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
            session_ttl_ms: piano_core::account::SESSION_TTL_MS,
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

    /// The token lifetimes (`ACCESS_TOKEN_TTL_SECS`, `REFRESH_TOKEN_TTL_SECS`) and MongoDB.
    pub fn configure(
        mut self,
        access_ttl_secs: u64,
        session_ttl_secs: u64,
        mongo: Option<Arc<Mongo>>,
    ) -> Accounts {
        self.access_ttl_secs = access_ttl_secs;
        self.session_ttl_ms = session_ttl_secs * 1000;
        self.mongo_writes = mongo.as_ref().map(|m| m.account_writer());
        self.mongo = mongo;
        self
    }

    pub(super) async fn sql<T: Send + 'static>(
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

    pub(super) fn redis_failed(what: &str, e: redis::RedisError) -> Failure {
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
    pub async fn create(&self, key: &str, a: &AccountData) -> Result<bool, Failure> {
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
    pub(super) async fn update(
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
    pub(super) fn mirror(&self, a: &AccountData, created: bool) {
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

    /// The local account, or what the shared MongoDB says (an account found there is kept
    /// here from then on). Without MongoDB only local accounts exist.
    pub async fn find(&self, key: &str) -> Result<Lookup, Failure> {
        if let Some(a) = self.load(key).await? {
            return Ok(Lookup::Found(a));
        }
        let Some(mongo) = &self.mongo else {
            return Ok(Lookup::Absent);
        };
        if !lookup::may_ask(self.lookup_skip_until.load(Relaxed), crate::now_ms()) {
            return Ok(Lookup::Unavailable);
        }
        let doc = match mongo.find_account(&format!("user:{key}")).await {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(error = %e, "account lookup in MongoDB failed");
                crate::metrics::METRICS.mongo_errors.fetch_add(1, Relaxed);
                self.lookup_skip_until
                    .store(lookup::skip_until(crate::now_ms()), Relaxed);
                return Ok(Lookup::Unavailable);
            }
        };
        let Some(account) = lookup::imported(key, doc) else {
            return Ok(Lookup::Absent);
        };
        // Another request may have created or imported it meanwhile: theirs stands.
        self.create(key, &account).await?;
        tracing::info!(user = key, "account imported from MongoDB");
        Ok(match self.load(key).await? {
            Some(a) => Lookup::Found(a),
            None => Lookup::Absent,
        })
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        let t = crate::now_us().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % 8];
        }
    }
    b
}
