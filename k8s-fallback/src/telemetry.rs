//! Logs and error reports (`docs/operating-logs-errors.md`): every `tracing` event printed as one
//! line of the core's schema (`piano_core::logging`), panics logged and reported, and reports
//! sent to `SENTRY_DSN` under the core's throttle (`piano_core::report`). This module only
//! collects fields and sends bytes; the line and the envelope are the core's.

use piano_core::logging::{Level, Line, event, valid_request_id};
use piano_core::report::{self, Dsn, Origin, Policy, Report, Reporter, Severity};
use std::borrow::Cow;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Fields of the schema a span may carry for the events inside it (a request's id, a room).
const INHERITED: [&str; 4] = ["room", "user", "conn", "request_id"];

/// The `LOG_LEVEL` filter (`RUST_LOG`, when set, wins: its directives are finer).
pub fn filter(
    rust_log: Option<String>,
    log_level: Option<String>,
) -> tracing_subscriber::EnvFilter {
    if let Some(directives) = rust_log.filter(|d| !d.trim().is_empty()) {
        return tracing_subscriber::EnvFilter::new(directives);
    }
    let level = log_level
        .as_deref()
        .and_then(Level::parse)
        .unwrap_or(Level::Info);
    tracing_subscriber::EnvFilter::new(level.as_str())
}

/// A `tracing` layer printing each event as one JSON line of the core's schema on stdout.
pub struct JsonLines {
    pub deployment: String,
}

#[derive(Default)]
struct Fields(Vec<(&'static str, String)>);

impl Fields {
    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| *k == name)?;
        Some(self.0.swap_remove(i).1)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), value.to_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, ev: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        ev.record(&mut f);
        if let Some(scope) = ctx.event_scope(ev) {
            for span in scope {
                if let Some(outer) = span.extensions().get::<Fields>() {
                    for (k, v) in &outer.0 {
                        if INHERITED.contains(k) && !f.0.iter().any(|(n, _)| n == k) {
                            f.0.push((k, v.clone()));
                        }
                    }
                }
            }
        }
        let meta = ev.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::INFO => Level::Info,
            _ => Level::Debug,
        };
        let name = f.take("event").unwrap_or_else(|| meta.target().to_owned());
        let (room, user, conn, request_id) = (
            f.take("room"),
            f.take("user"),
            f.take("conn"),
            f.take("request_id"),
        );
        let mut line = Line::at(crate::now_ms(), level, &name, &self.deployment);
        line.room = room.as_deref();
        line.user = user.as_deref();
        line.conn = conn.as_deref();
        line.request_id = request_id.as_deref();
        line.duration_ms = f.take("duration_ms").and_then(|d| d.parse().ok());
        line.error = f.take("error").map(Cow::Owned);
        line.msg = f.take("message").map(Cow::Owned);
        line.fields =
            f.0.into_iter()
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)))
                .collect();
        let mut text = line.render();
        text.push('\n');
        // One write per line, so lines of concurrent threads never interleave.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }
}

/// Logs a panic (with the request's or room's fields of the span it happened in) and reports
/// it. Installed once, before anything can panic.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let (message, location) = piano_core::logging::panic_text(info);
        tracing::error!(event = event::PANIC, error = %message, location, "panicked");
        let r =
            Report::new(report::kind::PANIC, Severity::Fatal, message).tag("location", location);
        if cfg!(panic = "abort") {
            // Release builds abort after this hook (the workspace's profile): the sending task
            // dies with the process, so this report goes now, on a thread of its own.
            send_before_abort(r);
        } else {
            send(r);
        }
    }));
}

struct Sink {
    dsn: Dsn,
    origin: Origin,
    url: String,
    auth: String,
    throttle: Mutex<Reporter>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts sending reports to `dsn` (from within the runtime). Without a DSN reports are only
/// the log lines their callers print.
pub fn start_reports(dsn: Option<Dsn>, origin: Origin) {
    let Some(dsn) = dsn else { return };
    // Envelopes wait here while one is in flight; admitted ones are few (the throttle's bound),
    // and a full queue drops the newest rather than blocking the caller.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
    let sink = Sink {
        url: dsn.envelope_url(),
        auth: dsn.auth_header(&origin.client),
        dsn,
        origin,
        throttle: Mutex::new(Reporter::new(Policy::default(), crate::now_ms())),
        tx,
    };
    if SINK.set(sink).is_err() {
        return;
    }
    tokio::spawn(async move {
        let client = client();
        while let Some(body) = rx.recv().await {
            post(&client, body).await;
        }
    });
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

async fn post(client: &reqwest::Client, body: Vec<u8>) {
    let Some(sink) = SINK.get() else { return };
    let sent = client
        .post(&sink.url)
        .header("content-type", "application/x-sentry-envelope")
        .header("x-sentry-auth", &sink.auth)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(status = r.status().as_u16(), "error report refused"),
        Err(e) => tracing::warn!(error = %e.without_url(), "error report not sent"),
    }
}

/// The envelope of `r` if a DSN is configured and the throttle admits it.
fn envelope(r: &Report) -> Option<Vec<u8>> {
    let sink = SINK.get()?;
    let now = crate::now_ms();
    let suppressed = crate::lock(&sink.throttle).admit(&r.fingerprint(), now)?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).ok()?;
    Some(report::envelope(
        &sink.dsn,
        &sink.origin,
        r,
        id,
        now,
        suppressed,
    ))
}

/// Reports `r` if a DSN is configured and the throttle admits it. Never blocks.
pub fn send(r: Report) {
    if let (Some(sink), Some(bytes)) = (SINK.get(), envelope(&r)) {
        let _ = sink.tx.try_send(bytes);
    }
}

/// Reports `r` and waits (5 s at most) until it is sent: the process is about to end.
fn send_before_abort(r: Report) {
    let Some(bytes) = envelope(&r) else { return };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(post(&client(), bytes));
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(std::time::Duration::from_secs(5));
}

/// The request id: a valid `x-request-id` from one of our proxies (`TRUSTED_PROXIES`), else a
/// new random one.
pub fn request_id(headers: &axum::http::HeaderMap, from_proxy: bool) -> String {
    if let Some(id) = headers
        .get("x-request-id")
        .filter(|_| from_proxy)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
    {
        return id.to_owned();
    }
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_request_id_is_taken_only_from_a_proxy() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-request-id", "balancer-1".parse().unwrap());
        assert_eq!(super::request_id(&h, true), "balancer-1");
        assert_ne!(super::request_id(&h, false), "balancer-1");
        h.insert(
            "x-request-id",
            "bad id\n"
                .parse()
                .unwrap_or(axum::http::HeaderValue::from_static("a b")),
        );
        assert_ne!(super::request_id(&h, true), "a b");
    }
}
