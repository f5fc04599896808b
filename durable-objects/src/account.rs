//! The Account Durable Object: one per member, named by the normalized username, so that
//! "who owns this username" has exactly one strongly consistent answer (two concurrent
//! registrations of one name reach the same object, and the second finds it taken).
//!
//! It holds the account (password hash, roles, profile) and its sessions in SQLite. A session
//! is a refresh secret (stored as a SHA-256 hash) with a generation that every refresh bumps;
//! access tokens carry `sid` and `gen`, and the worker asks `/check` before trusting one, so a
//! logged-out or refreshed-away token is refused at once. Presenting a refresh secret that was
//! already rotated away revokes the session (reuse detection).
//!
//! Routes (worker → object, JSON): `POST /register`, `/login`, `/refresh`, `/logout`, `/check`,
//! `/roles`; `GET /profile`, `PUT /profile`; (room → object) `POST /socket`.
//!
//! Storage is created only by writes (a registration, an import from the shared database, a
//! session): reads of an unknown username (profile probes, logins, checks) leave nothing
//! behind. Ending a session or changing roles notifies the rooms holding the member's sockets
//! ([`crate::sessions`]).

use crate::json_error;
use crate::outbox::Outbox;
use piano_backends::layout;
use piano_backends::outbox::Lane;
pub use piano_core::account::{AccountData, ROLES, SESSION_TTL_MS};
use piano_core::password::{ACCOUNT_ITERATIONS, PasswordHash};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use worker::*;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 1), data TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS sessions (
        sid TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, generation INTEGER NOT NULL,
        created INTEGER NOT NULL, expires INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS session_prev (sid TEXT PRIMARY KEY, secret_hash TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, seen INTEGER NOT NULL);
";

#[derive(Deserialize)]
struct RegisterReq {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    max_sessions: u32,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
struct LoginReq {
    /// The normalized username (the object's name), to find an account registered by another
    /// deployment in the shared database.
    #[serde(default)]
    key: Option<String>,
    password: String,
    #[serde(default)]
    max_sessions: u32,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
struct SessionReq {
    sid: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    generation: u64,
    /// Logout only: the worker verified a live access token of this session instead.
    #[serde(default)]
    by_access_token: bool,
}

#[derive(Deserialize)]
struct RolesReq {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct ProfileReq {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    color: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct SessionRow {
    secret_hash: String,
    generation: i64,
    expires: i64,
    revoked: i64,
}

/// After a failed MongoDB lookup, this object answers 503 without asking again for this long
/// (each ask could cost a whole timeout).
const LOOKUP_BACKOFF_MS: u64 = 5_000;

/// What the shared database says about a username.
enum Lookup {
    Found(AccountData),
    Absent,
    Unavailable,
}

fn shared_accounts_unavailable() -> Result<Response> {
    let mut resp = json_error(
        503,
        "backend_unavailable",
        "accounts are shared with other deployments and their database cannot be reached: try again shortly",
    )?;
    resp.headers_mut().set("retry-after", "30")?;
    Ok(resp)
}

#[durable_object]
pub struct Account {
    state: State,
    env: Env,
    /// Session ends and role changes to send to the member's rooms after the request.
    notices: std::cell::RefCell<Vec<crate::sessions::Notice>>,
    /// Account documents bound for MongoDB, revoked sessions for Redis.
    outbox: Outbox,
    /// How long a revoked session's access tokens could still be presented.
    access_ttl_secs: u64,
    /// After a failed MongoDB lookup, later ones are skipped until then (ms), so logins do not
    /// each wait out a timeout during an outage.
    lookup_skip_until: std::cell::Cell<u64>,
}

impl DurableObject for Account {
    fn new(state: State, env: Env) -> Self {
        let access_ttl_secs = crate::setting(&env, "ACCESS_TOKEN_TTL_SECS")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(900);
        Account {
            state,
            notices: std::cell::RefCell::new(Vec::new()),
            outbox: Outbox::new(&env),
            access_ttl_secs,
            lookup_skip_until: std::cell::Cell::new(0),
            env,
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let resp = self.route(req).await;
        self.send_notices().await;
        if !self.has_schema() {
            // Nothing was stored (a read of an unknown user): no alarm, no database.
            return resp;
        }
        if let Err(e) = self
            .outbox
            .kick(&self.state.storage(), Date::now().as_millis())
            .await
        {
            console_error!("could not arm the outbox alarm: {e}");
        }
        resp
    }

    async fn alarm(&self) -> Result<Response> {
        self.outbox.begin_alarm();
        let sql = self.state.storage().sql();
        let flushed = self.outbox.flush(&sql, Date::now().as_millis()).await;
        self.outbox
            .finish_alarm(
                &self.state.storage(),
                &sql,
                flushed,
                None,
                Date::now().as_millis(),
            )
            .await
    }
}

impl Account {
    async fn route(&self, mut req: Request) -> Result<Response> {
        let sql = self.state.storage().sql();
        if self.has_schema() {
            // Accounts stored before a table was added get it (idempotent).
            sql.exec(SCHEMA, None)?;
        }
        let now = Date::now().as_millis();
        match (req.method(), req.path().as_str()) {
            (Method::Post, "/socket") => {
                #[derive(Deserialize)]
                struct SocketReq {
                    room: String,
                }
                let r: SocketReq = req.json().await?;
                if self.load()?.is_none() {
                    return json_error(404, "not_found", "no such user");
                }
                sql.exec(
                    "INSERT INTO rooms (room, seen) VALUES (?, ?) ON CONFLICT(room) DO UPDATE SET seen = excluded.seen",
                    vec![r.room.as_str().into(), (now as i64).into()],
                )?;
                sql.exec(
                    "DELETE FROM rooms WHERE room NOT IN (SELECT room FROM rooms ORDER BY seen DESC LIMIT ?)",
                    vec![(crate::sessions::MAX_ROOMS_PER_ACCOUNT as i64).into()],
                )?;
                Response::empty()
            }
            (Method::Post, "/register") => {
                let r: RegisterReq = req.json().await?;
                if self.load()?.is_some() {
                    return json_error(409, "username_taken", "that username is taken");
                }
                let key = r.username.trim().to_ascii_lowercase();
                match self.import(&key).await? {
                    Lookup::Found(_) => {
                        return json_error(409, "username_taken", "that username is taken");
                    }
                    // Registering now could take a name another deployment already gave out.
                    Lookup::Unavailable => return shared_accounts_unavailable(),
                    Lookup::Absent => {}
                }
                // Another registration of this name may have finished while we asked MongoDB;
                // from here to the save nothing awaits, so this check holds.
                if self.load()?.is_some() {
                    return json_error(409, "username_taken", "that username is taken");
                }
                sql.exec(SCHEMA, None)?;
                let mut roles = vec!["member".to_owned()];
                if r.admin {
                    roles.push("admin".into());
                }
                let account = AccountData {
                    username: r.username.clone(),
                    tag: hex(&random::<3>()),
                    email: r.email,
                    password: PasswordHash::with_iterations(
                        &r.password,
                        random::<16>().to_vec(),
                        ACCOUNT_ITERATIONS,
                    ),
                    roles,
                    name: r.username,
                    color: None,
                    status: String::new(),
                    created_at: now,
                };
                self.save(&account, true)?;
                self.new_session(&account, r.max_sessions, now, 201)
            }
            (Method::Post, "/login") => {
                let r: LoginReq = req.json().await?;
                let local = match self.load()? {
                    Some(a) => Some(a),
                    None => match &r.key {
                        Some(key) => match self.import(key).await? {
                            Lookup::Found(a) => Some(a),
                            Lookup::Absent => None,
                            // Maybe registered on another deployment: say so, not "wrong".
                            Lookup::Unavailable => return shared_accounts_unavailable(),
                        },
                        None => None,
                    },
                };
                let Some(mut account) = local else {
                    // Same answer as a wrong password: do not reveal which usernames exist.
                    return json_error(401, "invalid_credentials", "wrong username or password");
                };
                if !account.password.verify(&r.password) {
                    return json_error(401, "invalid_credentials", "wrong username or password");
                }
                if r.admin && !account.roles.iter().any(|x| x == "admin") {
                    account.roles.push("admin".into());
                    self.save(&account, false)?;
                }
                self.new_session(&account, r.max_sessions, now, 200)
            }
            (Method::Post, "/refresh") => {
                let r: SessionReq = req.json().await?;
                let Some(account) = self.load()? else {
                    return json_error(401, "invalid_session", "refresh token is not valid");
                };
                let Some(row) = self.session(&r.sid)? else {
                    return json_error(401, "invalid_session", "refresh token is not valid");
                };
                if row.revoked != 0 || row.expires as u64 <= now {
                    return json_error(
                        401,
                        "invalid_session",
                        "the session has ended: log in again",
                    );
                }
                let presented = hash_secret(&r.secret);
                if row.secret_hash != presented {
                    if self.previous_secret(&r.sid)?.as_deref() == Some(presented.as_str()) {
                        // A rotated-away refresh token came back: someone else may hold the
                        // new one.
                        self.revoke(&r.sid)?;
                        return json_error(
                            401,
                            "invalid_session",
                            "refresh token was already used: session revoked",
                        );
                    }
                    // A secret this session never had: not proof of anything, ends nothing.
                    return json_error(401, "invalid_session", "refresh token is not valid");
                }
                let secret = hex(&random::<32>());
                let generation = row.generation + 1;
                sql.exec(
                    "UPDATE sessions SET secret_hash = ?, generation = ?, expires = ? WHERE sid = ?",
                    vec![hash_secret(&secret).into(), generation.into(), ((now + SESSION_TTL_MS) as i64).into(), r.sid.as_str().into()],
                )?;
                sql.exec(
                    "INSERT INTO session_prev (sid, secret_hash) VALUES (?, ?) ON CONFLICT(sid) DO UPDATE SET secret_hash = excluded.secret_hash",
                    vec![r.sid.as_str().into(), presented.into()],
                )?;
                session_response(&account, &r.sid, &secret, generation as u64, 200)
            }
            (Method::Post, "/logout") => {
                let r: SessionReq = req.json().await?;
                // The refresh token's secret (or a live access token, checked by the worker):
                // a user name and session id alone end nothing.
                let proven = r.by_access_token
                    || self
                        .session(&r.sid)?
                        .is_some_and(|row| row.secret_hash == hash_secret(&r.secret));
                if !proven {
                    return json_error(401, "invalid_session", "refresh token is not valid");
                }
                self.revoke(&r.sid)?;
                Ok(Response::empty()?.with_status(204))
            }
            (Method::Post, "/check") => {
                let r: SessionReq = req.json().await?;
                let session = self.session(&r.sid)?;
                // `known`: this deployment issued the session (a session it never saw may come
                // from another deployment sharing the signing key; the worker decides).
                let known = session.is_some();
                let valid = match (self.load()?, session) {
                    (Some(_), Some(row)) => {
                        row.revoked == 0
                            && row.expires as u64 > now
                            && row.generation as u64 == r.generation
                    }
                    _ => false,
                };
                let expires = self.session(&r.sid)?.map(|row| row.expires.max(0) as u64);
                Response::from_json(
                    &serde_json::json!({ "valid": valid, "known": known, "expires": expires }),
                )
            }
            (Method::Get, "/profile") => match self.load()? {
                Some(a) => Response::from_json(&a.public()),
                None => json_error(404, "not_found", "no such user"),
            },
            (Method::Put, "/profile") => {
                let r: ProfileReq = req.json().await?;
                let Some(mut a) = self.load()? else {
                    return json_error(404, "not_found", "no such user");
                };
                if let Some(n) = r.name {
                    match piano_core::names::display_name(&n) {
                        Ok(n) => a.name = n,
                        Err(e) => return json_error(400, "invalid_name", &format!("name {e}")),
                    }
                }
                if let Some(c) = r.color {
                    match piano_core::room::text::color(&c) {
                        Ok(c) => a.color = Some(c),
                        Err(e) => return json_error(400, "invalid_color", &e),
                    }
                }
                if let Some(s) = r.status {
                    match piano_core::room::text::optional_line(
                        "status",
                        &s,
                        piano_core::room::text::MAX_STATUS_CHARS,
                    ) {
                        Ok(s) => a.status = s,
                        Err(e) => return json_error(400, "invalid_status", &e),
                    }
                }
                self.save(&a, false)?;
                Response::from_json(&a.public())
            }
            (Method::Post, "/roles") => {
                let r: RolesReq = req.json().await?;
                let Some(mut a) = self.load()? else {
                    return json_error(404, "not_found", "no such user");
                };
                if let Some(bad) = r
                    .add
                    .iter()
                    .chain(&r.remove)
                    .find(|x| !ROLES.contains(&x.as_str()))
                {
                    return json_error(400, "invalid_role", &format!("unknown role {bad:?}"));
                }
                let before = a.roles.clone();
                a.roles.retain(|x| !r.remove.contains(x));
                for role in r.add {
                    if !a.roles.contains(&role) {
                        a.roles.push(role);
                    }
                }
                self.save(&a, false)?;
                if a.roles != before {
                    self.notices.borrow_mut().push(crate::sessions::Notice {
                        user_id: a.user_id(),
                        session_id: None,
                        changed: true,
                    });
                }
                Response::from_json(&a.public())
            }
            _ => json_error(404, "not_found", "no such account route"),
        }
    }
}

impl Account {
    /// Whether this object ever stored anything (its tables exist).
    fn has_schema(&self) -> bool {
        #[derive(Deserialize)]
        struct Table {
            #[allow(dead_code)]
            name: String,
        }
        self.state
            .storage()
            .sql()
            .exec(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'account'",
                None,
            )
            .and_then(|c| c.to_array::<Table>())
            .is_ok_and(|t| !t.is_empty())
    }

    /// The secret a session had before its last refresh (to tell reuse from guessing).
    fn previous_secret(&self, sid: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Row {
            secret_hash: String,
        }
        let rows: Vec<Row> = self
            .state
            .storage()
            .sql()
            .exec(
                "SELECT secret_hash FROM session_prev WHERE sid = ?",
                vec![sid.into()],
            )?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| r.secret_hash))
    }

    /// Sends the queued notices to the rooms holding this member's sockets.
    async fn send_notices(&self) {
        let notices = std::mem::take(&mut *self.notices.borrow_mut());
        if notices.is_empty() || !self.has_schema() {
            return;
        }
        #[derive(Deserialize)]
        struct Row {
            room: String,
        }
        let rooms: Vec<String> = match self
            .state
            .storage()
            .sql()
            .exec("SELECT room FROM rooms", None)
            .and_then(|c| c.to_array::<Row>())
        {
            Ok(rows) => rows.into_iter().map(|r| r.room).collect(),
            Err(e) => {
                console_error!("rooms of this account unreadable: {e}");
                return;
            }
        };
        for notice in &notices {
            crate::sessions::notify(&self.env, &rooms, notice).await;
        }
    }

    fn load(&self) -> Result<Option<AccountData>> {
        #[derive(Deserialize)]
        struct Row {
            data: String,
        }
        if !self.has_schema() {
            return Ok(None);
        }
        let rows: Vec<Row> = self
            .state
            .storage()
            .sql()
            .exec("SELECT data FROM account", None)?
            .to_array()?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| serde_json::from_str(&r.data).ok()))
    }

    /// Writes the account, and queues its document for the shared database in the same step:
    /// inserted if absent when `created`, otherwise updated only where it is the same
    /// registration (see [`layout::account_created`], [`layout::account_updated`]).
    fn save(&self, a: &AccountData, created: bool) -> Result<()> {
        let sql = self.state.storage().sql();
        sql.exec(
            "INSERT INTO account (id, data) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            vec![serde_json::to_string(a)?.into()],
        )?;
        if self.outbox.wants(Lane::Mongo) {
            let doc = a.document();
            let now = Date::now().as_millis();
            let op = if created {
                layout::account_created(&a.user_id(), doc, now)
            } else {
                layout::account_updated(&a.user_id(), &a.tag, doc, now)
            };
            self.outbox.enqueue(&sql, [op], now)?;
        }
        Ok(())
    }

    /// An account this deployment does not know yet may have been registered by another one
    /// sharing the database: read it from MongoDB and keep it here. Without MongoDB the answer
    /// is `Absent` (only local accounts exist); while it is unreachable (or failed in the last
    /// few seconds), `Unavailable`, and callers refuse rather than guess.
    async fn import(&self, key: &str) -> Result<Lookup> {
        let Some(mongo) = self.outbox.backends().and_then(|b| b.mongo.as_ref()) else {
            return Ok(Lookup::Absent);
        };
        if self.lookup_skip_until.get() > Date::now().as_millis() {
            return Ok(Lookup::Unavailable);
        }
        let doc = match mongo
            .find_one(
                layout::ACCOUNTS,
                serde_json::json!({ "_id": format!("user:{key}") }),
            )
            .await
        {
            Ok(doc) => doc,
            Err(e) => {
                console_warn!("account lookup in MongoDB failed: {e}");
                self.lookup_skip_until
                    .set(Date::now().as_millis() + LOOKUP_BACKOFF_MS);
                return Ok(Lookup::Unavailable);
            }
        };
        let Some(account) = doc.and_then(|d| serde_json::from_value::<AccountData>(d).ok()) else {
            return Ok(Lookup::Absent);
        };
        // Another request may have created the account here while we waited.
        if let Some(local) = self.load()? {
            return Ok(Lookup::Found(local));
        }
        self.state.storage().sql().exec(SCHEMA, None)?;
        self.state.storage().sql().exec(
            "INSERT OR IGNORE INTO account (id, data) VALUES (1, ?)",
            vec![serde_json::to_string(&account)?.into()],
        )?;
        Ok(match self.load()? {
            Some(a) => Lookup::Found(a),
            None => Lookup::Absent,
        })
    }

    fn session(&self, sid: &str) -> Result<Option<SessionRow>> {
        if !self.has_schema() {
            return Ok(None);
        }
        let rows: Vec<SessionRow> = self
            .state
            .storage()
            .sql()
            .exec(
                "SELECT secret_hash, generation, expires, revoked FROM sessions WHERE sid = ?",
                vec![sid.into()],
            )?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    /// Ends a session; with Redis configured, the revocation is shared (other deployments and
    /// the fallback refuse its access tokens too).
    fn revoke(&self, sid: &str) -> Result<()> {
        if !self.has_schema() {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        sql.exec(
            "UPDATE sessions SET revoked = 1 WHERE sid = ?",
            vec![sid.into()],
        )?;
        if let Some(a) = self.load()? {
            self.notices.borrow_mut().push(crate::sessions::Notice {
                user_id: a.user_id(),
                session_id: Some(sid.to_owned()),
                changed: false,
            });
        }
        if self.outbox.wants(Lane::Redis)
            && let (Some(a), Some(_)) = (self.load()?, self.session(sid)?)
        {
            let keys = self.outbox.backends().map(|b| b.keys.clone());
            if let Some(keys) = keys {
                let op = layout::session_revoked(&keys, sid, &a.user_id(), self.access_ttl_secs);
                self.outbox.enqueue(&sql, [op], Date::now().as_millis())?;
            }
        }
        Ok(())
    }

    /// Starts a session; with `max_sessions` > 0, the oldest live ones beyond it are revoked.
    fn new_session(
        &self,
        account: &AccountData,
        max_sessions: u32,
        now: u64,
        status: u16,
    ) -> Result<Response> {
        let sql = self.state.storage().sql();
        let sid = hex(&random::<16>());
        let secret = hex(&random::<32>());
        sql.exec(
            "INSERT INTO sessions (sid, secret_hash, generation, created, expires) VALUES (?, ?, 1, ?, ?)",
            vec![sid.as_str().into(), hash_secret(&secret).into(), (now as i64).into(), ((now + SESSION_TTL_MS) as i64).into()],
        )?;
        if max_sessions > 0 {
            #[derive(Deserialize)]
            struct Sid {
                sid: String,
            }
            let older: Vec<Sid> = sql
                .exec(
                    "SELECT sid FROM sessions WHERE revoked = 0 AND sid NOT IN \
                     (SELECT sid FROM sessions WHERE revoked = 0 AND expires > ? ORDER BY created DESC, sid LIMIT ?)",
                    vec![(now as i64).into(), (max_sessions as i64).into()],
                )?
                .to_array()?;
            for Sid { sid } in older {
                self.revoke(&sid)?;
            }
        }
        session_response(account, &sid, &secret, 1, status)
    }
}

fn session_response(
    a: &AccountData,
    sid: &str,
    secret: &str,
    generation: u64,
    status: u16,
) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({
        "user": a.public(),
        "sid": sid,
        "secret": secret,
        "generation": generation,
    }))?
    .with_status(status))
}

fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // crypto.getRandomValues does not fail in workerd.
    let _ = getrandom::getrandom(&mut b);
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
