//! The Lobby Durable Object: hosts the room directory ([`piano_core::lobby::Directory`]).
//!
//! One instance (named [`LOBBY_NAME`]) for the deployment. Rooms report to it; the worker reads
//! the listing and asks it for "the next available lobby"; rooms with subscribed players
//! register, and every change to the listing is pushed to them (`POST /directory` on the room),
//! which forward it to their subscribers. Reports and subscriptions are kept in the object's
//! SQLite storage, so the directory survives the object being evicted between requests.
//!
//! Stale entries: while the directory is not empty an alarm runs every few minutes and asks each
//! room whose entry was not refreshed for ten minutes to report afresh (`POST /refresh` on the
//! room), so a room whose players vanished while its host restarted leaves the list.
//!
//! Routes (from rooms and the worker only): `POST /report`, `GET /list`, `POST /subscribe`,
//! `POST /unsubscribe`, `POST /next`.

use crate::outbox::Outbox;
use crate::{ROOM_HEADER, json_error};
use piano_backends::layout;
use piano_backends::outbox::{Lane, Op};
use piano_core::lobby::{Delta, Directory, Report, SWEEP_EVERY_MS};
use piano_core::names::percent_encode;
use std::cell::RefCell;
use std::collections::BTreeSet;
use worker::*;

/// The binding of the Lobby class (wrangler.toml) and the name of its one instance.
pub const LOBBY_BINDING: &str = "LOBBY";
pub const LOBBY_NAME: &str = "directory";
/// The binding of the Room class.
pub const ROOMS_BINDING: &str = "ROOMS";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS rooms (name TEXT PRIMARY KEY, report TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS subscribers (room TEXT PRIMARY KEY);
";

struct Loaded {
    directory: Directory,
    subscribers: BTreeSet<String>,
}

#[durable_object]
pub struct Lobby {
    state: State,
    env: Env,
    loaded: RefCell<Option<Loaded>>,
    /// The room index mirrored to Redis (shared by every deployment using it).
    outbox: Outbox,
}

#[derive(serde::Deserialize)]
struct RoomRef {
    room: String,
}

#[derive(serde::Deserialize)]
struct UserRef {
    user: String,
}

impl DurableObject for Lobby {
    fn new(state: State, env: Env) -> Self {
        Lobby {
            outbox: Outbox::new(&env),
            state,
            env,
            loaded: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        self.ensure_loaded()?;
        match (req.method(), req.path().as_str()) {
            (Method::Post, "/report") => {
                let report: Report = req.json().await?;
                self.report(report).await
            }
            (Method::Get, "/list") => self.list(),
            (Method::Post, "/subscribe") => {
                let RoomRef { room } = req.json().await?;
                self.set_subscribed(&room, true)?;
                self.list()
            }
            (Method::Post, "/unsubscribe") => {
                let RoomRef { room } = req.json().await?;
                self.set_subscribed(&room, false)?;
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

    /// Delivers the outbox and sweeps stale entries; re-armed for whichever is due first.
    async fn alarm(&self) -> Result<Response> {
        self.ensure_loaded()?;
        self.outbox.begin_alarm();
        let flushed = self
            .outbox
            .flush(&self.state.storage().sql(), Date::now().as_millis())
            .await;
        let stale = self.with(|l| l.directory.stale(Date::now().as_millis()));
        for room in stale {
            if let Err(e) = self.room_call(&room, "/refresh", None).await {
                console_warn!("refresh of {room} failed: {e}");
            }
        }
        let now = Date::now().as_millis();
        let sweep = (!self.with(|l| l.directory.is_empty())).then_some(now + SWEEP_EVERY_MS);
        let sql = self.state.storage().sql();
        self.outbox
            .finish_alarm(&self.state.storage(), &sql, flushed, sweep, now)
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
        struct SubscriberRow {
            room: String,
        }
        let sql = self.state.storage().sql();
        sql.exec(SCHEMA, None)?;
        let reports = sql
            .exec("SELECT report FROM rooms", None)?
            .to_array::<ReportRow>()?
            .into_iter()
            .filter_map(|r| serde_json::from_str::<Report>(&r.report).ok());
        let directory = Directory::from_reports(reports);
        let subscribers = sql
            .exec("SELECT room FROM subscribers", None)?
            .to_array::<SubscriberRow>()?
            .into_iter()
            .map(|r| r.room)
            .collect();
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
            directory: Directory::new(),
            subscribers: BTreeSet::new(),
        });
        f(l)
    }

    fn list(&self) -> Result<Response> {
        let listing = self.with(|l| l.directory.listing());
        let mut resp = Response::from_json(&listing)?;
        resp.headers_mut().set("cache-control", "no-store")?;
        Ok(resp)
    }

    fn set_subscribed(&self, room: &str, on: bool) -> Result<()> {
        let sql = self.state.storage().sql();
        self.with(|l| {
            if on {
                l.subscribers.insert(room.to_owned());
            } else {
                l.subscribers.remove(room);
            }
        });
        if on {
            sql.exec(
                "INSERT OR IGNORE INTO subscribers (room) VALUES (?)",
                vec![room.into()],
            )?;
        } else {
            sql.exec("DELETE FROM subscribers WHERE room = ?", vec![room.into()])?;
        }
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
        if !delta.is_empty() && self.outbox.wants(Lane::Redis) {
            let mirror = self.index_commands(&delta);
            self.outbox.enqueue(&sql, mirror, now)?;
            self.outbox.kick(&self.state.storage(), now).await?;
        }
        if !delta.is_empty() {
            self.push(&delta).await;
        }
        self.arm_sweep().await?;
        Response::empty()
    }

    /// Keeps the stale-entry sweep scheduled while there are entries (and only then, so an
    /// empty directory costs nothing).
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

    /// The sweep runs within [`SWEEP_EVERY_MS`] while the directory lists anything (the same
    /// alarm delivers the outbox; an alarm with nothing left to do removes itself).
    async fn arm_sweep(&self) -> Result<()> {
        if self.with(|l| l.directory.is_empty()) {
            return Ok(());
        }
        let now = Date::now().as_millis();
        self.outbox
            .alarm_by(&self.state.storage(), now + SWEEP_EVERY_MS, now)
            .await
    }

    /// Sends a listing change to every subscribed room. A room that answers 410 has no
    /// subscribers any more (it missed telling us) and is dropped from the set.
    async fn push(&self, delta: &Delta) {
        let rooms: Vec<String> = self.with(|l| l.subscribers.iter().cloned().collect());
        let Ok(body) = serde_json::to_string(delta) else {
            return;
        };
        for room in rooms {
            match self.room_call(&room, "/directory", Some(&body)).await {
                Ok(410) => {
                    let _ = self.set_subscribed(&room, false);
                }
                Ok(_) => {}
                Err(e) => console_warn!("directory push to {room} failed: {e}"),
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
