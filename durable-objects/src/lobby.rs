//! The Lobby Durable Object: hosts the room directory ([`piano_core::lobby::Directory`]).
//!
//! One instance (named [`LOBBY_NAME`]) for the deployment. Rooms report to it; the worker reads
//! the listing and asks it for "the next available lobby"; rooms with subscribed players
//! register, and changes to the listing are pushed to them (`POST /directory` on the room),
//! which forward them to their subscribers. Reports and subscriptions are kept in the object's
//! SQLite storage, so the directory survives the object being evicted between requests.
//!
//! Churn: a report never waits on a push. Changes gather for [`PUSH_TICK_MS`] and the alarm
//! pushes one net delta per tick to every subscribed room, [`PUSH_CONCURRENCY`] at a time, each
//! with a [`PUSH_TIMEOUT_MS`] timeout; a room that answers 410 (nobody subscribed there) or
//! fails [`MAX_PUSH_FAILURES`] pushes in a row is dropped. One user may be subscribed in at most
//! [`MAX_SUBSCRIBED_ROOMS_PER_USER`] rooms: `POST /subscribe` beyond that answers 429
//! `too_many_subscriptions` and registers nothing. Changes gathered but not yet pushed live in
//! memory only: if the object restarts within that tick, subscribers miss that delta until their
//! room subscribes again (the listing itself is stored).
//!
//! Stale entries: while the directory is not empty the alarm asks, every few minutes, each room
//! whose entry was not refreshed for ten minutes to report afresh (`POST /refresh` on the room),
//! so a room whose players vanished while its host restarted leaves the list. The same alarm
//! delivers the outbox; it is always re-armed for the earliest of the three.
//!
//! Routes (from rooms and the worker only): the metrics aggregator's (`crate::metrics`),
//! `POST /report`, `GET /list`,
//! `POST /subscribe {"room", "user"?}` (200 with the listing, or 429),
//! `POST /unsubscribe {"room", "user"?}` (with a user: that user's last subscribed connection in
//! the room went; without: nobody in the room is subscribed any more), `POST /next`.

use crate::outbox::Outbox;
use crate::{ROOM_HEADER, json_error};
use futures_util::future::{Either, select};
use futures_util::stream::{self, StreamExt};
use piano_backends::layout;
use piano_backends::outbox::{Lane, Op};
use piano_core::lobby::{
    Delta, Directory, MAX_PUSH_FAILURES, MAX_SUBSCRIBED_ROOMS_PER_USER, PUSH_CONCURRENCY,
    PUSH_TICK_MS, PUSH_TIMEOUT_MS, Pushed, Report, SWEEP_EVERY_MS, Subscribers,
};
use piano_core::names::percent_encode;
use std::cell::{Cell, RefCell};
use std::pin::pin;
use std::time::Duration;
use worker::*;

/// The binding of the Lobby class (wrangler.toml) and the name of its one instance.
pub const LOBBY_BINDING: &str = "LOBBY";
pub const LOBBY_NAME: &str = "directory";
/// The binding of the Room class.
pub const ROOMS_BINDING: &str = "ROOMS";

// `subscriptions` holds one row per (room, user) ('' when the room named no user); the older
// `subscribers` table (rooms only) is folded into it on load.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS rooms (name TEXT PRIMARY KEY, report TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS subscribers (room TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS subscriptions (room TEXT NOT NULL, user TEXT NOT NULL,
        PRIMARY KEY (room, user));
    INSERT OR IGNORE INTO subscriptions (room, user) SELECT room, '' FROM subscribers;
    DELETE FROM subscribers;
";

struct Loaded {
    directory: Directory,
    subscribers: Subscribers,
}

#[durable_object]
pub struct Lobby {
    state: State,
    env: Env,
    loaded: RefCell<Option<Loaded>>,
    /// The room index mirrored to Redis (shared by every deployment using it).
    outbox: Outbox,
    /// When the stale-entry sweep is next due (`None`: at this instance's first alarm).
    sweep_at: Cell<Option<u64>>,
    /// The lobby's own outbox backlog as last added to the metrics (`crate::metrics`).
    pusher: RefCell<piano_core::metrics::push::Pusher>,
}

#[derive(serde::Deserialize)]
struct Subscription {
    room: String,
    /// The subscribing user (rooms name them so the per-user cap can count).
    #[serde(default)]
    user: Option<String>,
}

#[derive(serde::Deserialize)]
struct UserRef {
    user: String,
}

impl DurableObject for Lobby {
    fn new(state: State, env: Env) -> Self {
        crate::log::init(&env);
        Lobby {
            outbox: Outbox::new(&env),
            state,
            env,
            loaded: RefCell::new(None),
            sweep_at: Cell::new(None),
            pusher: RefCell::default(),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        crate::log::flush_panics_now();
        self.ensure_loaded()?;
        match (req.method(), req.path().as_str()) {
            // The metrics aggregator (`metrics.rs`): pushes in, the text and backlog out.
            (Method::Post, "/metrics/push") => {
                let push: piano_core::metrics::push::Push = req.json().await?;
                let sql = self.state.storage().sql();
                crate::metrics::apply(&sql, &push, Date::now().as_millis())?;
                Response::empty()
            }
            (Method::Get, "/metrics") => {
                let sql = self.state.storage().sql();
                let text = crate::metrics::render(
                    &sql,
                    Date::now().as_millis(),
                    &crate::log::deployment(&self.env),
                    &crate::log::release(&self.env),
                )?;
                Response::ok(text)
            }
            (Method::Get, "/metrics/backlog") => {
                let sql = self.state.storage().sql();
                let backlog = crate::metrics::backlog(&sql, Date::now().as_millis())?;
                Response::from_json(&backlog)
            }
            (Method::Post, "/report") => {
                let report: Report = req.json().await?;
                self.report(report).await
            }
            (Method::Get, "/list") => self.list(),
            (Method::Post, "/subscribe") => {
                let Subscription { room, user } = req.json().await?;
                let user = user.filter(|u| !u.is_empty());
                if self
                    .with(|l| l.subscribers.subscribe(&room, user.as_deref()))
                    .is_err()
                {
                    return json_error(
                        429,
                        "too_many_subscriptions",
                        &format!(
                            "subscribed to the room list in {MAX_SUBSCRIBED_ROOMS_PER_USER} rooms already"
                        ),
                    );
                }
                self.store_subscription(&room, user.as_deref())?;
                self.list()
            }
            (Method::Post, "/unsubscribe") => {
                let Subscription { room, user } = req.json().await?;
                match user.filter(|u| !u.is_empty()) {
                    Some(user) => {
                        self.with(|l| l.subscribers.unsubscribe_user(&room, &user));
                        self.state.storage().sql().exec(
                            "DELETE FROM subscriptions WHERE room = ? AND user = ?",
                            vec![room.into(), user.into()],
                        )?;
                    }
                    None => self.drop_room(&room)?,
                }
                Response::empty()
            }
            (Method::Post, "/next") => {
                let UserRef { user } = req.json().await?;
                let room = self.with(|l| l.directory.next_lobby(&user, Date::now().as_millis()));
                Response::from_json(&serde_json::json!({ "room": room }))
            }
            _ => json_error(404, "not_found", "no such lobby route"),
        }
    }

    /// Pushes the tick's delta, delivers the outbox and sweeps stale entries when due; re-armed
    /// for whichever of the three is due first (reports arriving meanwhile included).
    async fn alarm(&self) -> Result<Response> {
        crate::log::flush_panics_now();
        self.ensure_loaded()?;
        self.outbox.begin_alarm();
        // First: subscribers should not wait on a slow backend.
        self.push_due().await;
        let flushed = self
            .outbox
            .flush(&self.state.storage().sql(), Date::now().as_millis())
            .await;
        self.sweep_if_due().await;
        let now = Date::now().as_millis();
        let sql = self.state.storage().sql();
        self.note_backlog(&sql);
        self.outbox
            .finish_alarm(
                &self.state.storage(),
                &sql,
                flushed,
                self.next_timer(now),
                now,
            )
            .await
    }
}

impl Lobby {
    fn ensure_loaded(&self) -> Result<()> {
        if self.loaded.borrow().is_some() {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct ReportRow {
            report: String,
        }
        #[derive(serde::Deserialize)]
        struct SubscriptionRow {
            room: String,
            user: String,
        }
        let sql = self.state.storage().sql();
        sql.exec(SCHEMA, None)?;
        crate::metrics::create_tables(&sql)?;
        let reports = sql
            .exec("SELECT report FROM rooms", None)?
            .to_array::<ReportRow>()?
            .into_iter()
            .filter_map(|r| serde_json::from_str::<Report>(&r.report).ok());
        let directory = Directory::from_reports(reports).coalesce_every(PUSH_TICK_MS);
        let subscribers = Subscribers::from_pairs(
            sql.exec("SELECT room, user FROM subscriptions", None)?
                .to_array::<SubscriptionRow>()?
                .into_iter()
                .map(|r| (r.room, Some(r.user).filter(|u| !u.is_empty()))),
        );
        *self.loaded.borrow_mut() = Some(Loaded {
            directory,
            subscribers,
        });
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Loaded) -> T) -> T {
        let mut loaded = self.loaded.borrow_mut();
        // ensure_loaded ran at the start of every request.
        let l = loaded.get_or_insert_with(|| Loaded {
            directory: Directory::new().coalesce_every(PUSH_TICK_MS),
            subscribers: Subscribers::new(),
        });
        f(l)
    }

    fn list(&self) -> Result<Response> {
        let listing = self.with(|l| l.directory.listing());
        let mut resp = Response::from_json(&listing)?;
        resp.headers_mut().set("cache-control", "no-store")?;
        Ok(resp)
    }

    fn store_subscription(&self, room: &str, user: Option<&str>) -> Result<()> {
        self.state.storage().sql().exec(
            "INSERT OR IGNORE INTO subscriptions (room, user) VALUES (?, ?)",
            vec![room.into(), user.unwrap_or_default().into()],
        )?;
        Ok(())
    }

    /// No more pushes to `room`, and its users' subscriptions there end.
    fn drop_room(&self, room: &str) -> Result<()> {
        self.with(|l| l.subscribers.remove_room(room));
        self.state.storage().sql().exec(
            "DELETE FROM subscriptions WHERE room = ?",
            vec![room.into()],
        )?;
        Ok(())
    }

    async fn report(&self, report: Report) -> Result<Response> {
        let name = report.summary.name.clone();
        let stored = serde_json::to_string(&report)?;
        let now = Date::now().as_millis();
        let Some(delta) = self.with(|l| l.directory.report(report, now)) else {
            return Response::empty(); // stale
        };
        let sql = self.state.storage().sql();
        if self.with(|l| l.directory.get(&name).is_some()) {
            sql.exec(
                "INSERT INTO rooms (name, report) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET report = excluded.report",
                vec![name.as_str().into(), stored.into()],
            )?;
        } else {
            sql.exec(
                "DELETE FROM rooms WHERE name = ?",
                vec![name.as_str().into()],
            )?;
        }
        // The shared index is written per report, in the same step (the outbox's promise);
        // subscribers get the tick's net delta from the alarm.
        if !delta.is_empty() && self.outbox.wants(Lane::Redis) {
            let mirror = self.index_commands(&delta);
            self.outbox.enqueue(&sql, mirror, now)?;
            self.outbox.kick(&self.state.storage(), now).await?;
            self.note_backlog(&sql);
        }
        if let Some(at) = self.next_timer(now) {
            self.outbox.alarm_by(&self.state.storage(), at, now).await?;
        }
        Response::empty()
    }

    /// The lobby's own outbox backlog, into the metrics it aggregates (when it changed).
    fn note_backlog(&self, sql: &SqlStorage) {
        if let Some(push) =
            crate::metrics::backlog_push(&self.pusher, &self.outbox, sql, "lobby:directory")
            && let Err(e) = crate::metrics::apply(sql, &push, Date::now().as_millis())
        {
            crate::log::warn("metrics").error(e).emit();
        }
    }

    /// The lobby's own next timer: the gathered delta's tick, or the sweep while the directory
    /// lists anything (an empty directory costs nothing).
    fn next_timer(&self, now: u64) -> Option<u64> {
        let (flush, empty) = self.with(|l| (l.directory.next_flush(), l.directory.is_empty()));
        let sweep = (!empty).then(|| {
            self.sweep_at
                .get()
                .unwrap_or(now.saturating_add(SWEEP_EVERY_MS))
        });
        [flush, sweep].into_iter().flatten().min()
    }

    /// The listing change as one Redis pipeline for this deployment's shared room index.
    fn index_commands(&self, delta: &Delta) -> Option<Op> {
        let b = self.outbox.backends()?;
        let mut commands = Vec::new();
        for summary in &delta.upserted {
            commands.extend(layout::room_listed(&b.keys, &b.deployment, summary));
        }
        for name in &delta.removed {
            commands.extend(layout::room_unlisted(&b.keys, &b.deployment, name));
        }
        Some(Op::redis(commands))
    }

    /// Pushes the gathered delta, if due, to every subscribed room.
    async fn push_due(&self) {
        let now = Date::now().as_millis();
        let Some(delta) = self.with(|l| l.directory.take_delta(now)) else {
            return;
        };
        let Ok(body) = serde_json::to_string(&delta) else {
            return;
        };
        let rooms = self.with(|l| l.subscribers.rooms());
        for (room, outcome) in self.call_rooms(rooms, "/directory", Some(&body)).await {
            if self.with(|l| l.subscribers.pushed(&room, outcome)) {
                if outcome == Pushed::Failed {
                    crate::log::warn("lobby")
                        .msg(format!(
                            "{room} failed {MAX_PUSH_FAILURES} pushes: no longer pushed to"
                        ))
                        .emit();
                }
                if let Err(e) = self.drop_room(&room) {
                    crate::log::warn("lobby")
                        .msg(format!("could not drop subscriber {room}: {e}"))
                        .emit();
                }
            }
        }
    }

    /// Asks rooms whose entries went stale to report afresh, every [`SWEEP_EVERY_MS`].
    async fn sweep_if_due(&self) {
        let now = Date::now().as_millis();
        if self.sweep_at.get().is_some_and(|at| now < at) {
            return;
        }
        self.sweep_at.set(Some(now.saturating_add(SWEEP_EVERY_MS)));
        let stale = self.with(|l| l.directory.stale(now));
        self.call_rooms(stale, "/refresh", None).await;
    }

    /// POSTs to each room, [`PUSH_CONCURRENCY`] at a time, each call bounded by
    /// [`PUSH_TIMEOUT_MS`] (one slow room neither holds up the others nor the next tick for
    /// long). Returns how each went.
    async fn call_rooms(
        &self,
        rooms: Vec<String>,
        path: &str,
        body: Option<&str>,
    ) -> Vec<(String, Pushed)> {
        stream::iter(rooms)
            .map(|room| async move {
                let outcome = self.call_room(&room, path, body).await;
                (room, outcome)
            })
            .buffer_unordered(PUSH_CONCURRENCY)
            .collect()
            .await
    }

    /// One bounded call: how it went.
    async fn call_room(&self, room: &str, path: &str, body: Option<&str>) -> Pushed {
        let call = pin!(self.room_call(room, path, body));
        let timeout = pin!(Delay::from(Duration::from_millis(PUSH_TIMEOUT_MS)));
        match select(call, timeout).await {
            Either::Left((Ok(410), _)) => Pushed::Gone,
            Either::Left((Ok(status), _)) if status < 400 => Pushed::Delivered,
            Either::Left((Ok(status), _)) => {
                crate::log::warn("lobby")
                    .msg(format!("{path} to {room} answered {status}"))
                    .emit();
                Pushed::Failed
            }
            Either::Left((Err(e), _)) => {
                crate::log::warn("lobby")
                    .msg(format!("{path} to {room} failed: {e}"))
                    .emit();
                Pushed::Failed
            }
            Either::Right(_) => {
                crate::log::warn("lobby")
                    .msg(format!("{path} to {room} timed out"))
                    .emit();
                Pushed::Failed
            }
        }
    }

    /// POSTs to a room object's internal route; returns the status.
    async fn room_call(&self, room: &str, path: &str, body: Option<&str>) -> Result<u16> {
        let headers = Headers::new();
        headers.set(ROOM_HEADER, &percent_encode(room))?;
        headers.set("content-type", "application/json")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(body.map(Into::into));
        let req = Request::new_with_init(&format!("https://room.internal{path}"), &init)?;
        let stub = self
            .env
            .durable_object(ROOMS_BINDING)?
            .id_from_name(room)?
            .get_stub()?;
        Ok(stub.fetch_with_request(req).await?.status_code())
    }
}

/// POSTs JSON to one of the Lobby's internal routes (from a Room or Account object or the
/// worker); an answer of 400 or more is an error naming the route and status.
pub async fn post(env: &Env, path: &str, body: &impl serde::Serialize) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(serde_json::to_string(body)?.into()));
    let req = Request::new_with_init(&format!("https://lobby.internal{path}"), &init)?;
    let resp = stub(env)?.fetch_with_request(req).await?;
    if resp.status_code() >= 400 {
        return Err(Error::RustError(format!(
            "lobby {path} answered {}",
            resp.status_code()
        )));
    }
    Ok(resp)
}

/// Sends a push to the metrics aggregator this object hosts (`crate::metrics`).
pub async fn send_metrics(env: &Env, push: &piano_core::metrics::push::Push) -> Result<()> {
    post(env, "/metrics/push", push).await.map(drop)
}

/// A GET of one of the metrics aggregator's routes (`/metrics`, `/metrics/backlog`).
pub async fn get_metrics(env: &Env, path: &str) -> Result<Response> {
    let req = Request::new(&format!("https://lobby.internal{path}"), Method::Get)?;
    stub(env)?.fetch_with_request(req).await
}

/// The directory's one instance.
fn stub(env: &Env) -> Result<Stub> {
    env.durable_object(LOBBY_BINDING)?
        .id_from_name(LOBBY_NAME)?
        .get_stub()
}
