//! Log lines and error reports at the edge (`docs/operating-logs-errors.md`), for the worker
//! (`src/`) and the objects alike: the line is the core's schema (`piano_core::logging`),
//! printed with `console.log`; a report is the core's envelope under the core's throttle
//! (`piano_core::report`), sent with `fetch`. This module only holds settings and sends bytes.
//!
//! A panic aborts the wasm instance (the runtime starts a new one), so what must outlive it
//! lives on `globalThis`: the throttle's state (a panic cannot reset the budget) and the
//! panics not yet reported, sent by the next request the isolate serves ([`flush_panics`]).

use piano_core::logging::{Level, Line};
use piano_core::report::{self, Dsn, Origin, Policy, Report, Reporter, Severity};
use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use worker::js_sys::{Array, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::*;

/// Where the throttle's state and pending panics survive an instance restart.
const REPORTER_KEY: &str = "__pianoReporter";
const PANICS_KEY: &str = "__pianoPanics";
/// Panics kept for the next request; more are only logged (the throttle would drop them).
const MAX_PENDING_PANICS: u32 = 8;

struct Settings {
    deployment: String,
    release: String,
    max: Level,
    dsn: Option<Dsn>,
    origin: Origin,
}

thread_local! {
    static SETTINGS: RefCell<Option<Rc<Settings>>> = const { RefCell::new(None) };
}

/// Reads the settings once per instance (`LOG_LEVEL`, `DEPLOYMENT_ID`, `SENTRY_DSN`,
/// `ENVIRONMENT`, `RELEASE`). A malformed DSN is logged and reports stay off.
pub fn init(env: &Env) {
    settings_of(env);
}

/// The settings, read now if this instance has not yet.
fn settings_of(env: &Env) -> Rc<Settings> {
    if let Some(s) = settings() {
        return s;
    }
    let deployment = crate::setting(env, "DEPLOYMENT_ID").unwrap_or_else(|| "edge".into());
    let max = crate::setting(env, "LOG_LEVEL")
        .and_then(|l| Level::parse(&l))
        .unwrap_or(Level::Info);
    let dsn = crate::setting(env, "SENTRY_DSN").map(|d| Dsn::parse(&d));
    // The edge cannot refuse to start: a wrong ENVIRONMENT is logged and taken as `dev`.
    let environment = report::environment(crate::setting(env, "ENVIRONMENT").as_deref());
    let release =
        crate::setting(env, "RELEASE").unwrap_or_else(|| env!("CARGO_PKG_VERSION").into());
    let origin = Origin {
        environment: environment.clone().unwrap_or("dev").to_owned(),
        release: release.clone(),
        server_name: deployment.clone(),
        client: format!("piano-edge/{}", env!("CARGO_PKG_VERSION")),
    };
    let settings = Rc::new(Settings {
        deployment,
        release,
        max,
        dsn: dsn.as_ref().and_then(|d| d.as_ref().ok()).cloned(),
        origin,
    });
    SETTINGS.with(|s| *s.borrow_mut() = Some(settings.clone()));
    if let Some(Err(e)) = dsn {
        error("config").error(e).emit();
    }
    if let Err(e) = environment {
        error("config").error(e).emit();
    }
    settings
}

/// `DEPLOYMENT_ID` (default `edge`), read once per instance with the other settings.
pub fn deployment(env: &Env) -> String {
    settings_of(env).deployment.clone()
}

/// `ENVIRONMENT` by the core's rule (`piano_core::report::environment`).
pub fn environment(env: &Env) -> String {
    settings_of(env).origin.environment.clone()
}

/// `RELEASE`, or the crate's version (`/metrics`, `/api/status`, reports).
pub fn release(env: &Env) -> String {
    settings_of(env).release.clone()
}

fn settings() -> Option<Rc<Settings>> {
    SETTINGS.with(|s| s.borrow().clone())
}

/// `PIANO_TEST_ROUTES=1`: the `/api/debug/…` routes exist (tests only).
pub fn test_routes(env: &Env) -> bool {
    crate::setting(env, "PIANO_TEST_ROUTES").as_deref() == Some("1")
}

/// One line being built; printed by [`Entry::emit`] if `LOG_LEVEL` lets it through.
#[must_use]
pub struct Entry {
    level: Level,
    event: &'static str,
    room: Option<String>,
    user: Option<String>,
    conn: Option<String>,
    request_id: Option<String>,
    duration_ms: Option<u64>,
    error: Option<String>,
    msg: Option<String>,
    fields: Vec<(&'static str, String)>,
}

pub fn at(level: Level, event: &'static str) -> Entry {
    Entry {
        level,
        event,
        room: None,
        user: None,
        conn: None,
        request_id: None,
        duration_ms: None,
        error: None,
        msg: None,
        fields: Vec::new(),
    }
}

/// Whether lines of `level` are printed (to skip building one that would not be).
pub fn enabled(level: Level) -> bool {
    level <= settings().as_ref().map_or(Level::Info, |s| s.max)
}

pub fn error(event: &'static str) -> Entry {
    at(Level::Error, event)
}
pub fn warn(event: &'static str) -> Entry {
    at(Level::Warn, event)
}
pub fn info(event: &'static str) -> Entry {
    at(Level::Info, event)
}
pub fn debug(event: &'static str) -> Entry {
    at(Level::Debug, event)
}

impl Entry {
    pub fn room(mut self, v: impl Into<String>) -> Entry {
        self.room = Some(v.into());
        self
    }
    pub fn user(mut self, v: impl Into<String>) -> Entry {
        self.user = Some(v.into());
        self
    }
    pub fn conn(mut self, v: impl ToString) -> Entry {
        self.conn = Some(v.to_string());
        self
    }
    pub fn request_id(mut self, v: impl Into<String>) -> Entry {
        self.request_id = Some(v.into());
        self
    }
    pub fn duration_ms(mut self, v: u64) -> Entry {
        self.duration_ms = Some(v);
        self
    }
    pub fn error(mut self, v: impl ToString) -> Entry {
        self.error = Some(v.to_string());
        self
    }
    pub fn msg(mut self, v: impl Into<String>) -> Entry {
        self.msg = Some(v.into());
        self
    }
    pub fn field(mut self, k: &'static str, v: impl ToString) -> Entry {
        self.fields.push((k, v.to_string()));
        self
    }

    pub fn emit(self) {
        let s = settings();
        let max = s.as_ref().map_or(Level::Info, |s| s.max);
        if self.level > max {
            return;
        }
        let deployment = s.as_ref().map_or("edge", |s| s.deployment.as_str());
        let mut line = Line::at(Date::now().as_millis(), self.level, self.event, deployment);
        line.room = self.room.as_deref();
        line.user = self.user.as_deref();
        line.conn = self.conn.as_deref();
        line.request_id = self.request_id.as_deref();
        line.duration_ms = self.duration_ms;
        line.error = self.error.map(Cow::Owned);
        line.msg = self.msg.map(Cow::Owned);
        line.fields = self
            .fields
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)))
            .collect();
        // One stream for every level: the line carries its level.
        console_log!("{}", line.render());
    }
}

fn global_get(key: &str) -> JsValue {
    Reflect::get(&worker::js_sys::global(), &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn global_set(key: &str, value: &JsValue) {
    let _ = Reflect::set(&worker::js_sys::global(), &JsValue::from_str(key), value);
}

/// Asks the throttle (kept on `globalThis`) whether a report with `fingerprint` may go now.
fn admit(fingerprint: &str, now: u64) -> Option<u64> {
    let mut reporter = global_get(REPORTER_KEY)
        .as_string()
        .and_then(|j| serde_json::from_str::<Reporter>(&j).ok())
        .unwrap_or_else(|| Reporter::new(Policy::default(), now));
    let admitted = reporter.admit(fingerprint, now);
    if let Ok(j) = serde_json::to_string(&reporter) {
        global_set(REPORTER_KEY, &JsValue::from_str(&j));
    }
    admitted
}

/// The sending of `r`, if a DSN is set and the throttle admits it: the worker hands it to
/// `ctx.wait_until`, an object awaits it or spawns it (objects have no `wait_until`).
pub fn report(r: Report) -> Option<impl Future<Output = ()> + 'static> {
    let s = settings()?;
    let dsn = s.dsn.clone()?;
    let now = Date::now().as_millis();
    let suppressed = admit(&r.fingerprint(), now)?;
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).ok()?;
    let body = report::envelope(&dsn, &s.origin, &r, id, now, suppressed);
    let auth = dsn.auth_header(&s.origin.client);
    let url = dsn.envelope_url();
    Some(async move {
        if let Err(e) = send(&url, &auth, &body).await {
            warn("report_failed").error(e).emit();
        }
    })
}

/// Reports `r` from an object: started now, finished while the object lives.
pub fn report_in_background(r: Report) {
    if let Some(f) = report(r) {
        worker::wasm_bindgen_futures::spawn_local(f);
    }
}

/// An error an object handled but should not have had (storage, …): logged, and reported before
/// the handler returns (objects have no `wait_until`).
pub async fn exception(event: &'static str, what: String) {
    error(event).error(&what).emit();
    if let Some(sending) = report(Report::new(report::kind::EXCEPTION, Severity::Error, what)) {
        sending.await;
    }
}

async fn send(url: &str, auth: &str, body: &[u8]) -> Result<()> {
    let headers = Headers::new();
    headers.set("content-type", "application/x-sentry-envelope")?;
    headers.set("x-sentry-auth", auth)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(worker::js_sys::Uint8Array::from(body).into()));
    let resp = Fetch::Request(Request::new_with_init(url, &init)?)
        .send()
        .await?;
    match resp.status_code() {
        200..=299 => Ok(()),
        s => Err(Error::RustError(format!("the report was refused ({s})"))),
    }
}

/// The panic hook (`#[event(start)]`): the line now, the report kept for the next request.
pub fn on_panic(info: &std::panic::PanicHookInfo<'_>) {
    let (message, location) = piano_core::logging::panic_text(info);
    error(piano_core::logging::event::PANIC)
        .error(&message)
        .field("location", &location)
        .emit();
    let pending = match global_get(PANICS_KEY).dyn_into::<Array>() {
        Ok(a) => a,
        Err(_) => {
            let a = Array::new();
            global_set(PANICS_KEY, &a);
            a
        }
    };
    if pending.length() < MAX_PENDING_PANICS {
        let record = serde_json::json!({ "message": message, "location": location });
        pending.push(&JsValue::from_str(&record.to_string()));
    }
}

/// Sends the reports of panics an earlier instance left behind (the worker calls it with each
/// request and hands the future to `ctx.wait_until`; objects call [`flush_panics_now`]).
pub fn flush_panics() -> Option<impl Future<Output = ()> + 'static> {
    let pending = global_get(PANICS_KEY).dyn_into::<Array>().ok()?;
    if pending.length() == 0 {
        return None;
    }
    global_set(PANICS_KEY, &Array::new());
    let sends: Vec<_> = pending
        .iter()
        .filter_map(|v| v.as_string())
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .filter_map(|v| {
            let message = v["message"].as_str().unwrap_or("panic").to_owned();
            let location = v["location"].as_str().unwrap_or("").to_owned();
            report(
                Report::new(report::kind::PANIC, Severity::Fatal, message)
                    .tag("location", location),
            )
        })
        .collect();
    Some(async move {
        futures_util::future::join_all(sends).await;
    })
}

/// [`flush_panics`] for an object, at the start of each of its handlers: a panic in an object
/// leaves its report on that object's isolate, which the worker's requests may never reach.
pub fn flush_panics_now() {
    if let Some(flush) = flush_panics() {
        worker::wasm_bindgen_futures::spawn_local(flush);
    }
}
