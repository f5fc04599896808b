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
//! `/roles`; `GET /profile`, `PUT /profile`; (room → object) `POST /socket`; signing in
//! through a provider: `account_external.rs`. Objects named `ext:…` hold identity claims
//! instead (`crate::claims`).
//!
//! The rules are the core's (`piano_core::account`: registration, lookups, the session life
//! cycle, profile and role changes); this object reads its rows, asks the core, and stores
//! what it answers. Refusals are [`ApiError`]s, answered by [`api_response`] (the worker
//! relays them unchanged).
//!
//! Storage is created only by writes (a registration, an import from the shared database, a
//! session): reads of an unknown username (profile probes, logins, checks) leave nothing
//! behind. Ending a session or changing roles notifies the rooms holding the member's sockets
//! ([`crate::sessions`]).

use crate::json_error;
use crate::outbox::Outbox;
use piano_backends::layout;
use piano_backends::outbox::Lane;
use piano_core::account::lookup::{self, Lookup};
use piano_core::account::profile::{ProfileChange, ProfileRequest, RoleChange};
use piano_core::account::session::{self, Check, Refresh, Session};
pub use piano_core::account::{AccountData, ApiError, ROLES, SESSION_TTL_MS, SessionRefusal};
use piano_core::password::{ACCOUNT_ITERATIONS, PasswordHash};
use serde::Deserialize;
use worker::*;

#[path = "account_external.rs"]
mod external;

/// The response of a refused API request: the one place an [`ApiError`] becomes HTTP at the
/// edge (the object answers it, the worker relays it or answers its own with it).
pub fn api_response(e: &ApiError) -> Result<Response> {
    let mut resp = Response::from_json(&e.body())?.with_status(e.status());
    for (name, value) in e.headers() {
        resp.headers_mut().set(name, &value)?;
    }
    Ok(resp)
}

/// A handler's answer: a response, or the refusal to answer with.
type Answer = std::result::Result<Response, ApiError>;

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
struct SocketReq {
    room: String,
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
    /// How long a session lives without a refresh (`REFRESH_TOKEN_TTL_SECS`; the worker
    /// refuses a value out of range before asking this object).
    session_ttl_ms: u64,
    /// After a failed MongoDB lookup, later ones are skipped until then (ms;
    /// [`lookup::skip_until`]), so logins do not each wait out a timeout during an outage.
    lookup_skip_until: std::cell::Cell<u64>,
    /// The outbox backlog last pushed to the metrics aggregator (`crate::metrics`).
    pusher: std::cell::RefCell<piano_core::metrics::push::Pusher>,
}

impl DurableObject for Account {
    fn new(state: State, env: Env) -> Self {
        crate::log::init(&env);
        let access_ttl_secs = crate::setting(&env, "ACCESS_TOKEN_TTL_SECS")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(900);
        let session_ttl_ms = crate::setting(&env, "REFRESH_TOKEN_TTL_SECS")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| session::SESSION_TTL_SECS_RANGE.contains(s))
            .map_or(SESSION_TTL_MS, |s| s * 1000);
        Account {
            state,
            notices: std::cell::RefCell::new(Vec::new()),
            outbox: Outbox::new(&env),
            access_ttl_secs,
            session_ttl_ms,
            lookup_skip_until: std::cell::Cell::new(0),
            pusher: Default::default(),
            env,
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        crate::log::flush_panics_now();
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
            crate::log::error("outbox")
                .msg(format!("could not arm the outbox alarm: {e}"))
                .emit();
        }
        self.push_backlog().await;
        resp
    }

    async fn alarm(&self) -> Result<Response> {
        crate::log::flush_panics_now();
        self.outbox.begin_alarm();
        let sql = self.state.storage().sql();
        let flushed = self.outbox.flush(&sql, Date::now().as_millis()).await;
        self.push_backlog().await;
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
    /// Tells the metrics aggregator when the outbox's backlog changed (`/api/status`).
    async fn push_backlog(&self) {
        let sql = self.state.storage().sql();
        let source = format!("account:{}", self.state.id());
        let Some(push) = crate::metrics::backlog_push(&self.pusher, &self.outbox, &sql, &source)
        else {
            return;
        };
        if let Err(e) = crate::lobby::send_metrics(&self.env, &push).await {
            crate::log::warn("metrics")
                .error(e)
                .msg("metrics push failed")
                .emit();
            self.pusher.borrow_mut().forget_present();
        }
    }

    async fn route(&self, mut req: Request) -> Result<Response> {
        if self.has_schema() {
            // Accounts stored before a table was added get it (idempotent).
            self.state.storage().sql().exec(SCHEMA, None)?;
        }
        if req.path() == "/stats" {
            return crate::account_stats::serve(&self.state.storage().sql(), &mut req).await;
        }
        if req.path().starts_with("/claim") {
            return crate::claims::serve(&self.state.storage().sql(), &mut req).await;
        }
        let now = Date::now().as_millis();
        if let Some(answer) = self.external_route(&mut req, now).await? {
            return match answer {
                Ok(resp) => Ok(resp),
                Err(e) => api_response(&e),
            };
        }
        let answer = match (req.method(), req.path().as_str()) {
            (Method::Post, "/socket") => self.socket(req.json().await?, now)?,
            (Method::Post, "/register") => self.register(req.json().await?, now).await?,
            (Method::Post, "/login") => self.login(req.json().await?, now).await?,
            (Method::Post, "/refresh") => self.refresh(req.json().await?, now)?,
            (Method::Post, "/logout") => self.logout(req.json().await?)?,
            (Method::Post, "/check") => self.check(req.json().await?, now)?,
            (Method::Get, "/profile") => match self.load()? {
                Some(a) => Ok(Response::from_json(&a.public())?),
                None => Err(ApiError::NotFound),
            },
            (Method::Put, "/profile") => {
                let change = ProfileChange::check(req.json::<ProfileRequest>().await?);
                self.change(|a| change.clone().map(|c| c.apply(a)))?
            }
            (Method::Post, "/roles") => {
                let change = req.json::<RoleChange>().await?.check();
                let mut changed = false;
                let answer = self.change(|a| change.clone().map(|c| changed = c.apply(a)))?;
                if let (true, Some(a)) = (changed, self.load()?) {
                    self.notices.borrow_mut().push(crate::sessions::Notice {
                        user_id: a.user_id(),
                        session_id: None,
                        changed: true,
                    });
                }
                answer
            }
            _ => return json_error(404, "not_found", "no such account route"),
        };
        match answer {
            Ok(resp) => Ok(resp),
            Err(e) => api_response(&e),
        }
    }

    fn socket(&self, r: SocketReq, now: u64) -> Result<Answer> {
        if self.load()?.is_none() {
            return Ok(Err(ApiError::NotFound));
        }
        let sql = self.state.storage().sql();
        sql.exec(
            "INSERT INTO rooms (room, seen) VALUES (?, ?) ON CONFLICT(room) DO UPDATE SET seen = excluded.seen",
            vec![r.room.as_str().into(), (now as i64).into()],
        )?;
        sql.exec(
            "DELETE FROM rooms WHERE room NOT IN (SELECT room FROM rooms ORDER BY seen DESC LIMIT ?)",
            vec![(crate::sessions::MAX_ROOMS_PER_ACCOUNT as i64).into()],
        )?;
        Ok(Ok(Response::empty()?))
    }

    async fn register(&self, r: RegisterReq, now: u64) -> Result<Answer> {
        if self.load()?.is_some() {
            return Ok(Err(ApiError::UsernameTaken));
        }
        let key = r.username.trim().to_ascii_lowercase();
        if let Err(e) = lookup::may_register(&self.import(&key).await?) {
            // Unavailable: registering now could take a name another deployment gave out.
            return Ok(Err(e));
        }
        // Another registration of this name may have finished while we asked MongoDB;
        // from here to the save nothing awaits, so this check holds.
        if self.load()?.is_some() {
            return Ok(Err(ApiError::UsernameTaken));
        }
        self.state.storage().sql().exec(SCHEMA, None)?;
        let password =
            PasswordHash::with_iterations(&r.password, random::<16>().to_vec(), ACCOUNT_ITERATIONS);
        let account = AccountData::new(&r.username, r.email, password, r.admin, random(), now);
        self.save(&account, true)?;
        self.new_session(&account, r.max_sessions, now, 201)
    }

    async fn login(&self, r: LoginReq, now: u64) -> Result<Answer> {
        let found = match (self.load()?, &r.key) {
            (Some(a), _) => Lookup::Found(a),
            (None, Some(key)) => self.import(key).await?,
            (None, None) => Lookup::Absent,
        };
        let mut account = match lookup::login_account(found) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        if !account.check_password(&r.password) {
            return Ok(Err(ApiError::InvalidCredentials));
        }
        if r.admin && account.grant_admin() {
            self.save(&account, false)?;
        }
        self.new_session(&account, r.max_sessions, now, 200)
    }

    fn refresh(&self, r: SessionReq, now: u64) -> Result<Answer> {
        let Some(account) = self.load()? else {
            return Ok(Err(ApiError::InvalidSession(SessionRefusal::NotValid)));
        };
        let secret = piano_core::hex::encode(&random::<32>());
        match session::refresh(
            self.session(&r.sid)?.as_ref(),
            &r.secret,
            &secret,
            now,
            self.session_ttl_ms,
        ) {
            Refresh::Refuse(why) => Ok(Err(ApiError::InvalidSession(why))),
            Refresh::RevokeReused => {
                // Someone else may hold the current secret.
                self.revoke(&r.sid)?;
                Ok(Err(ApiError::InvalidSession(SessionRefusal::Reused)))
            }
            Refresh::Rotate(s) => {
                let sql = self.state.storage().sql();
                sql.exec(
                    "UPDATE sessions SET secret_hash = ?, generation = ?, expires = ? WHERE sid = ?",
                    vec![s.secret_hash.as_str().into(), (s.generation as i64).into(), (s.expires as i64).into(), r.sid.as_str().into()],
                )?;
                sql.exec(
                    "INSERT INTO session_prev (sid, secret_hash) VALUES (?, ?) ON CONFLICT(sid) DO UPDATE SET secret_hash = excluded.secret_hash",
                    vec![r.sid.as_str().into(), s.old_hashes_text().into()],
                )?;
                session_response(&account, &r.sid, &secret, s.generation, 200).map(Ok)
            }
        }
    }

    fn logout(&self, r: SessionReq) -> Result<Answer> {
        // The refresh token's secret (or a live access token, checked by the worker): a user
        // name and session id alone end nothing.
        if !r.by_access_token
            && let Err(e) = session::logout(self.session(&r.sid)?.as_ref(), &r.secret)
        {
            return Ok(Err(e));
        }
        self.revoke(&r.sid)?;
        Ok(Ok(Response::empty()?.with_status(204)))
    }

    fn check(&self, r: SessionReq, now: u64) -> Result<Answer> {
        let row = self.session(&r.sid)?;
        let exists = self.load()?.is_some();
        // `known`: this deployment issued the session (a session it never saw may come from
        // another deployment sharing the signing key; the worker decides).
        let (valid, known) = match session::check(exists, row.as_ref(), r.generation, now) {
            Check::Live { .. } => (true, true),
            Check::Ended => (false, true),
            Check::Unknown => (false, false),
        };
        let expires = row.map(|s| s.expires);
        Ok(Ok(Response::from_json(
            &serde_json::json!({ "valid": valid, "known": known, "expires": expires }),
        )?))
    }

    /// Applies a checked change to the stored account and answers its public view.
    fn change(
        &self,
        mut apply: impl FnMut(&mut AccountData) -> std::result::Result<(), ApiError>,
    ) -> Result<Answer> {
        let Some(mut a) = self.load()? else {
            return Ok(Err(ApiError::NotFound));
        };
        if let Err(e) = apply(&mut a) {
            return Ok(Err(e));
        }
        self.save(&a, false)?;
        Ok(Ok(Response::from_json(&a.public())?))
    }
}

impl Account {
    /// Whether this object ever stored anything (its tables exist).
    fn has_schema(&self) -> bool {
        crate::table_exists(&self.state.storage().sql(), "account").unwrap_or(false)
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
                crate::log::error("account")
                    .msg(format!("rooms of this account unreadable: {e}"))
                    .emit();
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
    /// sharing the database: read it from MongoDB and keep it here ([`lookup`]: without MongoDB
    /// only local accounts exist; while it is unreachable, or failed in the last few seconds,
    /// `Unavailable`, and callers refuse rather than guess).
    async fn import(&self, key: &str) -> Result<Lookup> {
        let Some(mongo) = self.outbox.backends().and_then(|b| b.mongo.as_ref()) else {
            return Ok(Lookup::Absent);
        };
        if !lookup::may_ask(self.lookup_skip_until.get(), Date::now().as_millis()) {
            return Ok(Lookup::Unavailable);
        }
        let filter = serde_json::json!({ "_id": format!("user:{key}") });
        let doc = match mongo.find_one(layout::ACCOUNTS, filter).await {
            Ok(doc) => doc,
            Err(e) => {
                crate::log::warn(piano_core::logging::event::BACKEND_ERROR)
                    .msg(format!("account lookup in MongoDB failed: {e}"))
                    .emit();
                self.lookup_skip_until
                    .set(lookup::skip_until(Date::now().as_millis()));
                return Ok(Lookup::Unavailable);
            }
        };
        let Some(account) = lookup::imported(key, doc) else {
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

    /// A session as stored (with its rotated-away secret hashes).
    fn session(&self, sid: &str) -> Result<Option<Session>> {
        #[derive(Deserialize)]
        struct Row {
            sid: String,
            secret_hash: String,
            generation: i64,
            created: i64,
            expires: i64,
            revoked: i64,
            #[serde(default)]
            old: Option<String>,
        }
        if !self.has_schema() {
            return Ok(None);
        }
        let rows: Vec<Row> = self
            .state
            .storage()
            .sql()
            .exec(
                "SELECT s.sid, s.secret_hash, s.generation, s.created, s.expires, s.revoked, p.secret_hash AS old \
                 FROM sessions s LEFT JOIN session_prev p ON p.sid = s.sid WHERE s.sid = ?",
                vec![sid.into()],
            )?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| Session {
            sid: r.sid,
            secret_hash: r.secret_hash,
            old_hashes: Session::parse_old_hashes(r.old.as_deref().unwrap_or_default()),
            created: r.created.max(0) as u64,
            generation: r.generation.max(0) as u64,
            expires: r.expires.max(0) as u64,
            revoked: r.revoked != 0,
        }))
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

    /// Starts a session: the core forgets expired ones (drift 6) and, with `max_sessions` > 0,
    /// ends the oldest live ones beyond it.
    fn new_session(
        &self,
        account: &AccountData,
        max_sessions: u32,
        now: u64,
        status: u16,
    ) -> Result<Answer> {
        #[derive(Deserialize)]
        struct Row {
            sid: String,
            created: i64,
            expires: i64,
            revoked: i64,
        }
        let sql = self.state.storage().sql();
        let existing: Vec<Session> = sql
            .exec("SELECT sid, created, expires, revoked FROM sessions", None)?
            .to_array::<Row>()?
            .into_iter()
            .map(|r| Session {
                sid: r.sid,
                created: r.created.max(0) as u64,
                expires: r.expires.max(0) as u64,
                revoked: r.revoked != 0,
                ..Session::default()
            })
            .collect();
        let secret = piano_core::hex::encode(&random::<32>());
        let new = Session::new(
            piano_core::hex::encode(&random::<16>()),
            &secret,
            now,
            self.session_ttl_ms,
        );
        let opening = session::open(&existing, &new, max_sessions, now);
        sql.exec(
            "INSERT INTO sessions (sid, secret_hash, generation, created, expires) VALUES (?, ?, 1, ?, ?)",
            vec![new.sid.as_str().into(), new.secret_hash.as_str().into(), (now as i64).into(), (new.expires as i64).into()],
        )?;
        for sid in &opening.forget {
            sql.exec(
                "DELETE FROM sessions WHERE sid = ?",
                vec![sid.as_str().into()],
            )?;
            sql.exec(
                "DELETE FROM session_prev WHERE sid = ?",
                vec![sid.as_str().into()],
            )?;
        }
        for sid in &opening.revoke {
            self.revoke(sid)?;
        }
        session_response(account, &new.sid, &secret, 1, status).map(Ok)
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

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // crypto.getRandomValues does not fail in workerd.
    let _ = getrandom::getrandom(&mut b);
    b
}
