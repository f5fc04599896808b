//! Structured logs and error reports (`docs/operating-logs-errors.md`), on both hosts.
//!
//! A rig per host: a server of its own with `SENTRY_DSN` pointed at a local receiver that
//! parses every envelope with the official Sentry types (`sentry-types`), `PIANO_TEST_ROUTES=1`
//! for the forced panic and 500, `LOG_LEVEL=debug`, and a MongoDB-compatible stack whose `chat`
//! collection refuses messages starting `deadletter` (a validator), so such a message becomes an
//! outbox dead letter. Trials take turns on a rig: each expects exactly its own reports. The
//! storm runs on a server of its own (it spends the reporter's budget).

use crate::*;
use e2e_tests::rigs::Rigs;
use e2e_tests::stack::{Part, Stack};
use piano_core::proto::client_message::Msg as Cm;
use sentry_types::protocol::v7::{Envelope, EnvelopeItem, Event};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENVIRONMENT: &str = "staging";
const RELEASE: &str = "e2e-9.9.9";
const PROJECT: &str = "42";
const PUBLIC_KEY: &str = "e2epublickey";
/// `piano_core::report::Policy::default()`: the documented bound.
const BURST: u64 = 10;
const REFILL_SECS: u64 = 6;

/// One envelope as received: the parsed event and what the request carried.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    auth: String,
    event: Event<'static>,
}

/// A Sentry-compatible ingestion endpoint on loopback: every request must be a POST of a valid
/// envelope (else it is recorded as a failure and the trial fails).
struct Receiver {
    port: u16,
    got: Arc<std::sync::Mutex<Vec<Received>>>,
    bad: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("receiver address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (g, b) = (got.clone(), bad.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (g, b) = (g.clone(), b.clone());
                    tokio::spawn(async move {
                        match read_request(stream).await {
                            Ok(r) => g.lock().unwrap().push(r),
                            Err(e) => b.lock().unwrap().push(e),
                        }
                    });
                }
            });
        });
        Receiver { port, got, bad }
    }

    fn dsn(&self) -> String {
        format!("http://{PUBLIC_KEY}@127.0.0.1:{}/{PROJECT}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        let bad = self.bad.lock().unwrap().clone();
        assert!(bad.is_empty(), "the receiver got invalid requests: {bad:?}");
        self.got.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request, answers 200 and parses its body as an envelope.
async fn read_request(mut stream: tokio::net::TcpStream) -> Result<Received, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the headers ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .ok_or("no content-length")?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the body ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        .await;
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "POST" {
        return Err(format!("{request_line}: not a POST"));
    }
    let auth = header("x-sentry-auth").ok_or("no X-Sentry-Auth")?;
    let parsed: sentry_types::Auth = auth
        .parse()
        .map_err(|e| format!("X-Sentry-Auth {auth:?}: {e}"))?;
    if parsed.public_key() != PUBLIC_KEY || parsed.version() != 7 {
        return Err(format!("X-Sentry-Auth {auth:?}: wrong key or version"));
    }
    let body = &buf[head_end..head_end + length];
    let envelope = Envelope::from_slice(body).map_err(|e| {
        format!(
            "not an envelope ({e}): {}",
            String::from_utf8_lossy(body)
                .chars()
                .take(300)
                .collect::<String>()
        )
    })?;
    let event = envelope
        .items()
        .find_map(|i| match i {
            EnvelopeItem::Event(e) => Some((**e).clone()),
            _ => None,
        })
        .ok_or("an envelope without an event")?;
    if envelope.uuid() != Some(&event.event_id) {
        return Err("the envelope's event_id is not its event's".into());
    }
    Ok(Received {
        path: path.to_owned(),
        auth,
        event,
    })
}

struct Rig {
    receiver: Receiver,
    server: Server,
    stack: Option<Stack>,
    deployment: String,
}

impl Rig {
    fn start(host: Host, with_stack: bool) -> Rig {
        let receiver = Receiver::start();
        let deployment = unique("reports");
        let stack = with_stack.then(Stack::start);
        let mut vars: Vec<(String, String)> = vec![
            ("SENTRY_DSN".into(), receiver.dsn()),
            ("ENVIRONMENT".into(), ENVIRONMENT.into()),
            ("RELEASE".into(), RELEASE.into()),
            ("PIANO_TEST_ROUTES".into(), "1".into()),
            ("LOG_LEVEL".into(), "debug".into()),
            // The fallback's harness default; LOG_LEVEL is what is tried here.
            ("RUST_LOG".into(), String::new()),
            ("DEPLOYMENT_ID".into(), deployment.clone()),
        ];
        if let Some(stack) = &stack {
            refuse_dead_letter_chat(stack);
            match host {
                Host::Edge => {
                    vars.extend(stack.vars(&deployment));
                }
                _ => {
                    vars.push((
                        "MONGODB_URL".into(),
                        format!(
                            "mongodb://127.0.0.1:{}/?directConnection=true",
                            stack.port(Part::Mongo)
                        ),
                    ));
                    vars.push(("MONGODB_DATABASE".into(), "pianotest".into()));
                }
            }
        }
        let server = match host {
            Host::Edge => Server::start_edge_with(&vars),
            _ => Server::start_fallback_binary(
                std::path::Path::new(env!("CARGO_BIN_EXE_piano-fallback")),
                &vars,
            ),
        };
        Rig {
            receiver,
            server,
            stack,
            deployment,
        }
    }

    /// Reports whose message contains `marker`, once one arrived (see [`Rig::reports_where`]).
    async fn reports_with(&self, marker: &str, within: Duration) -> Vec<Received> {
        self.reports_where(
            |r| r.event.message.as_deref().unwrap_or("").contains(marker),
            within,
        )
        .await
    }

    /// The reports `pick` chooses, once at least one arrived (within `within`) and then a
    /// sentinel report sent after it arrived too: a duplicate would have been sent before.
    async fn reports_where(
        &self,
        pick: impl Fn(&Received) -> bool,
        within: Duration,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        while self.matching(&pick).is_empty() && Instant::now() < deadline {
            // The edge sends a panic's report with the next request its isolate serves.
            let _ = crate::get(self.server.http("/healthz")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.settle().await;
        self.matching(&pick)
    }

    fn matching(&self, pick: &impl Fn(&Received) -> bool) -> Vec<Received> {
        self.receiver
            .received()
            .into_iter()
            .filter(|r| pick(r))
            .collect()
    }

    /// Sends a report of its own (`/api/debug/report/…`: the same throttle and sender) and waits
    /// until it is received: what was sent before it has arrived by then.
    async fn settle(&self) {
        let sentinel = unique("sentinel");
        let url = self.server.http(&format!("/api/debug/report/{sentinel}"));
        let seen = |r: &Received| r.event.message.as_deref().unwrap_or("").contains(&sentinel);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Asked again every 2 s: after a storm the throttle admits it once it has refilled.
        while self.matching(&seen).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the sentinel report never arrived"
            );
            let resp = crate::get(&url).await.expect("GET /api/debug/report");
            assert_eq!(resp.status().as_u16(), 200, "the sentinel's route");
            let asked = Instant::now();
            while self.matching(&seen).is_empty() && asked.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// What every report of this rig must say about where it comes from.
    fn check_origin(&self, r: &Received) {
        let e = &r.event;
        assert_eq!(r.path, format!("/api/{PROJECT}/envelope/"));
        assert!(r.auth.starts_with("Sentry "), "{}", r.auth);
        assert_eq!(e.environment.as_deref(), Some(ENVIRONMENT));
        assert_eq!(e.release.as_deref(), Some(RELEASE));
        let server = e.server_name.as_deref().unwrap_or("");
        match self.server.host {
            Host::Edge => assert_eq!(server, self.deployment),
            // REPLICA_ID from the harness, made unique per process start.
            _ => assert!(server.starts_with("e2e-0-"), "server_name {server}"),
        }
    }
}

/// The stack's `chat` collection refuses any message whose text starts `deadletter`.
fn refuse_dead_letter_chat(stack: &Stack) {
    let port = stack.port(Part::Mongo);
    // On a thread of its own: the trials' runtime is already running on this one.
    std::thread::spawn(move || refuse_on(port))
        .join()
        .expect("set the validator");
}

fn refuse_on(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let url = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
        let client = mongodb::Client::with_uri_str(&url)
            .await
            .expect("connect to the stack's MongoDB");
        let db = client.database("pianotest");
        db.run_command(mongodb::bson::doc! {
            "create": piano_backends::layout::CHAT,
            "validator": { "text": { "$not": { "$regex": "^deadletter" } } },
            "validationAction": "error",
        })
        .await
        .expect("create the chat collection with a validator");
    });
}

/// The rig of each host, which trials take turns on, and the storm's servers.
static RIGS: Rigs<Rig> = Rigs::new();
static STORMS: Rigs<Rig> = Rigs::new();

async fn with_rig<F: std::future::Future<Output = ()>>(
    target: &Server,
    trial: impl FnOnce(&'static Rig) -> F,
) {
    RIGS.with(target.host, |h| Rig::start(h, true), trial).await;
}

pub fn stop_rigs() {
    for rig in RIGS.started().chain(STORMS.started()) {
        rig.server.shutdown();
        if let Some(s) = &rig.stack {
            s.stop_all();
        }
    }
}

fn tag<'a>(r: &'a Received, key: &str) -> &'a str {
    r.event.tags.get(key).map(String::as_str).unwrap_or("")
}

pub async fn a_panic_is_reported_once(target: &Server) {
    with_rig(target, |rig| async move {
        let marker = unique("panic");
        let url = rig.server.http(&format!("/api/debug/panic/{marker}"));
        // The worker's isolate or the fallback's handler dies; the client sees a 500, a
        // dropped connection or no answer at all, and nothing else is asserted about it.
        let _ = tokio::time::timeout(Duration::from_secs(3), crate::get(&url)).await;
        let reports = rig.reports_with(&marker, Duration::from_secs(20)).await;
        assert_eq!(reports.len(), 1, "one report per panic: {reports:#?}");
        let r = &reports[0];
        rig.check_origin(r);
        assert_eq!(tag(r, "kind"), "panic");
        assert_eq!(r.event.level, sentry_types::protocol::v7::Level::Fatal);
    })
    .await;
}

/// A panic inside a Room object (not the worker): its report is sent by the object's next
/// handler (here a frame on a socket of that room), with no request to the worker meanwhile.
pub async fn a_panic_in_a_room_is_reported_once(target: &Server) {
    with_rig(target, |rig| async move {
        let room = unique("rp-objpanic");
        let mut player = rig.server.player(&room, "Object Panic").await;
        player.join().await;
        let marker = unique("objpanic");
        let url = rig
            .server
            .http(&format!("/api/debug/room/{room}/panic/{marker}"));
        // The worker's request may never be answered (the object died under it): not waited on.
        let _ = tokio::time::timeout(Duration::from_secs(3), crate::get(&url)).await;
        let ours = |r: &Received| {
            tag(r, "kind") == "panic" && r.event.message.as_deref().unwrap_or("").contains(&marker)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while rig.matching(&ours).is_empty() && Instant::now() < deadline {
            // Frames reach the object directly (not through the worker's fetch).
            let text = unique("nudge");
            let _ = player
                .try_send(Cm::Chat(piano_core::proto::SendChat { text }))
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let first = rig.matching(&ours);
        assert!(!first.is_empty(), "the object's panic was not reported");
        rig.settle().await;
        let reports = rig.matching(&ours);
        assert_eq!(reports.len(), 1, "one report per panic: {reports:#?}");
        rig.check_origin(&reports[0]);
        assert_eq!(
            reports[0].event.level,
            sentry_types::protocol::v7::Level::Fatal
        );
    })
    .await;
}

pub async fn a_server_error_is_reported_once(target: &Server) {
    with_rig(target, |rig| async move {
        let marker = unique("error");
        let resp = crate::get(rig.server.http(&format!("/api/debug/error/{marker}")))
            .await
            .expect("GET /api/debug/error");
        assert_eq!(resp.status().as_u16(), 500);
        let reports = rig.reports_with(&marker, Duration::from_secs(20)).await;
        assert_eq!(reports.len(), 1, "one report per 5xx: {reports:#?}");
        let r = &reports[0];
        rig.check_origin(r);
        assert_eq!(tag(r, "kind"), "http_5xx");
        assert_eq!(tag(r, "status"), "500");
        assert_eq!(tag(r, "route"), "/api/debug/error/*");
        assert!(tag(r, "path").ends_with(&marker), "the path is a tag");
        assert!(!tag(r, "request_id").is_empty(), "the request id is a tag");
    })
    .await;
}

pub async fn a_dead_letter_is_reported_once(target: &Server) {
    with_rig(target, |rig| async move {
        let room = unique("rp-dead");
        let mut player = rig.server.player(&room, "Dead Letter").await;
        player.join().await;
        let text = format!("deadletter {}", unique("m"));
        player
            .send(Cm::Chat(piano_core::proto::SendChat { text: text.clone() }))
            .await;
        // Three refusals with backoff (1 s, 2 s) before the row is set aside.
        // Only this trial makes dead letters on the rig (trials take turns on it).
        let dead = rig
            .reports_where(|r| tag(r, "kind") == "dead_letter", Duration::from_secs(60))
            .await;
        assert_eq!(dead.len(), 1, "one report per dead letter: {dead:#?}");
        rig.check_origin(&dead[0]);
        assert!(!tag(&dead[0], "lane").is_empty(), "the lane is a tag");
        player.close().await;
    })
    .await;
}

pub async fn an_error_storm_sends_a_bounded_number_of_reports(target: &Server) {
    let rig = STORMS.get(target.host, |h| Rig::start(h, false));
    let marker = unique("storm");
    let client = crate::http();
    let started = Instant::now();
    // Many 5xx on one route, each URL its own: one report (grouped by route, not by URL).
    for i in 0..20 {
        let url = rig.server.http(&format!("/api/debug/error/{marker}-e{i}"));
        let a = client.get(&url).send().await.expect("GET /api/debug/error");
        assert_eq!(a.status().as_u16(), 500);
    }
    // 1,000 distinct errors (so deduplication alone would not bound them), 8 at a time.
    let urls: Vec<String> = (0..1000)
        .map(|i| rig.server.http(&format!("/api/debug/report/{marker}-{i}")))
        .collect();
    for batch in urls.chunks(8) {
        let answers = futures_util::future::join_all(batch.iter().map(|u| client.get(u).send()));
        for a in answers.await {
            assert_eq!(a.expect("GET /api/debug/report").status().as_u16(), 200);
        }
    }
    let elapsed = started.elapsed().as_secs();
    // Whatever the throttle admitted has been sent once a later report arrives.
    rig.settle().await;
    let reports =
        rig.matching(&|r: &Received| r.event.message.as_deref().unwrap_or("").contains(&marker));
    let bound = BURST + (elapsed + 3) / REFILL_SECS;
    assert!(
        reports.len() > 1 && reports.len() as u64 <= bound,
        "{} reports for 1,020 errors in {elapsed} s (bound {bound})",
        reports.len()
    );
    let server_errors = reports.iter().filter(|r| tag(r, "kind") == "http_5xx");
    assert_eq!(
        server_errors.count(),
        1,
        "20 URLs of one route: {reports:#?}"
    );
    for r in &reports {
        rig.check_origin(r);
    }
}

/// The lines of a log file that our code printed: the fallback prints only ours; wrangler
/// prints its own around the worker's `console.log`, so there ours are the lines that start
/// with `{"time":`.
fn our_lines(host: Host, text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_end())
        .filter(|l| !l.is_empty())
        .filter(|l| host != Host::Edge || l.starts_with("{\"time\":"))
        .map(str::to_owned)
        .collect()
}

pub async fn logs_are_json_lines_without_secrets(target: &Server) {
    with_rig(target, |rig| async move {
        let s = &rig.server;
        let user = unique("logs").to_lowercase().replace('-', "");
        let user: String = user.chars().take(20).collect();
        let password = format!("pw-{}-secret", unique("p"));
        let (status, reg) = s
            .post_json(
                "/api/auth/register",
                serde_json::json!({"username": user, "password": password}),
            )
            .await;
        assert_eq!(status, 201, "{reg}");
        // Paths that log refusals: a wrong password, a refresh token used twice, a bad token.
        let refused = crate::http()
            .post(s.http("/api/auth/login"))
            .json(&serde_json::json!({"username": user, "password": format!("{password}x")}))
            .send()
            .await
            .expect("POST /api/auth/login");
        assert_eq!(refused.status().as_u16(), 401);
        // Both hosts answer with the id their lines carry: this trial's line is found by it.
        let refused_id = refused
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id on the answer")
            .to_owned();
        let (status, login) = s
            .post_json(
                "/api/auth/login",
                serde_json::json!({"username": user, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "{login}");
        let access = login["access_token"]
            .as_str()
            .expect("access token")
            .to_owned();
        let refresh = login["refresh_token"]
            .as_str()
            .expect("refresh token")
            .to_owned();
        let room = unique("rp-logs");
        let mut member = Client::connect(&format!("{}?token={access}", s.ws_url(&room)), &[])
            .await
            .expect("connect with the access token");
        member.join().await;
        let _ = Client::connect(&format!("{}?token={access}x", s.ws_url(&room)), &[]).await;
        member.close().await;
        let (status, fresh) = s
            .post_json(
                "/api/auth/refresh",
                serde_json::json!({"refresh_token": refresh}),
            )
            .await;
        assert_eq!(status, 200, "{fresh}");
        let (status, _) = s
            .post_json(
                "/api/auth/refresh",
                serde_json::json!({"refresh_token": refresh}),
            )
            .await;
        assert_eq!(status, 401, "reuse is refused");
        let refresh_secret = refresh.rsplit('.').next().unwrap_or_default().to_owned();
        let secrets = [
            access.as_str(),
            refresh.as_str(),
            refresh_secret.as_str(),
            password.as_str(),
            fresh["refresh_token"].as_str().unwrap_or("none"),
            fresh["access_token"].as_str().unwrap_or("none"),
        ];
        // This trial's own lines (the rig is shared with earlier trials): its room's join and
        // leave, and its refused login's auth_failure, waited for rather than slept on.
        let wanted = |v: &serde_json::Value| {
            let ours = v["room"] == room.as_str();
            match v["event"].as_str().unwrap_or("") {
                "join" if ours => Some("join"),
                "leave" if ours => Some("leave"),
                "auth_failure" if v["request_id"] == refused_id.as_str() => Some("auth_failure"),
                _ => None,
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut found = std::collections::BTreeSet::new();
            let mut ours = 0;
            for path in s.log_paths() {
                let text = std::fs::read_to_string(&path).expect("read the server's log");
                for line in our_lines(s.host, &text) {
                    let v = check_line(&line, &secrets, &rig.deployment, &path);
                    found.extend(wanted(&v));
                    ours += 1;
                }
            }
            assert!(ours > 0, "no lines of ours in the logs");
            if found.len() == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "this trial's join, leave and auth_failure lines: only {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// One line of ours: JSON of the schema, no secret in it; returns it parsed.
fn check_line(
    line: &str,
    secrets: &[&str],
    deployment: &str,
    path: &std::path::Path,
) -> serde_json::Value {
    for secret in secrets {
        assert!(
            !line.contains(secret),
            "a secret in {}: {line}",
            path.display()
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    for key in ["time", "level", "event", "deployment"] {
        assert!(v[key].is_string(), "no {key}: {line}");
    }
    assert!(
        ["error", "warn", "info", "debug"].contains(&v["level"].as_str().unwrap()),
        "{line}"
    );
    assert_eq!(v["deployment"], deployment, "{line}");
    for key in ["room", "user", "conn", "request_id", "error", "msg"] {
        assert!(
            v.get(key).is_none_or(|x| x.is_string()),
            "{key} is not text: {line}"
        );
    }
    assert!(v.get("duration_ms").is_none_or(|d| d.is_u64()), "{line}");
    let name = v["event"].as_str().unwrap_or("");
    // A name, not a value that landed there (`[a-z_:]`, as `piano_core::logging::event` and
    // the modules' paths, `[a-z0-9_:]`).
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':'),
        "event is not a name: {line}"
    );
    v
}
