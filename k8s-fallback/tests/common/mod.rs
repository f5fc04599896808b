//! Real processes for the fallback's integration tests, started with the e2e harness's process
//! helper (`tests/process.rs`): `redis-server`, secantusdb and the built `k8s-fallback` binary
//! on free loopback ports, each killed when dropped (and by the kernel if the test process dies
//! first), plus [`Player`], the harness's WebSocket client as these tests use it.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

use e2e_tests::process::spawn_guarded;
use e2e_tests::{Admission, Client};
use piano_core::proto::{self, client_message, server_message};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use e2e_tests::process::{Redis, free_port};

/// The `/metrics` bearer token every test replica gets (unless a test sets its own).
pub const METRICS_TOKEN: &str = "test-metrics-token";

/// `GET /metrics` with the test token.
pub async fn metrics(replica: &Replica) -> String {
    reqwest::Client::new()
        .get(replica.http("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "k8s-fallback-{tag}-{}-{}",
        std::process::id(),
        e2e_tests::now_ms()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Spawns `cmd` (stdin closed) with the e2e harness's process helper: its own process
/// group, dying with the test.
fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null());
    spawn_guarded(cmd).expect("spawn process")
}

/// `secantusd-py` (PyPI `secantusdb`, MongoDB wire-compatible), as the e2e stack runs it.
pub struct MongoServer {
    child: Child,
    pub port: u16,
}

impl MongoServer {
    pub fn start(dir: &std::path::Path) -> MongoServer {
        let port = free_port();
        let mut cmd = Command::new("python3");
        // Through the interpreter, not the script, so an un-rehashed pyenv shim does not matter.
        cmd.args([
            "-c",
            "import sys; from secantus.cli import main; sys.exit(main())",
        ])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--log-level", "WARNING", "--storage-path"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "secantusdb did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        MongoServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `k8s-fallback` process.
pub struct Replica {
    child: Option<Child>,
    pub port: u16,
    pub name: String,
    pub log: PathBuf,
    /// Its replica id (from `/api/version`), as leases name it.
    pub id: String,
}

impl Replica {
    pub fn start(name: &str, env: &[(&str, String)]) -> Replica {
        let port = free_port();
        let log = log_dir().join(format!("{name}-{port}.log"));
        let file = std::fs::File::create(&log).expect("create replica log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_k8s-fallback"));
        cmd.env_clear()
            .env("PORT", port.to_string())
            .env("REPLICA_ID", name)
            .env("RUST_LOG", "info")
            .env("AUTH_RATE_LIMIT_PER_MINUTE", "100000")
            .env("METRICS_TOKEN", METRICS_TOKEN)
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !env.iter().any(|(k, _)| *k == "STATIC_DIR") {
            cmd.env("STATIC_DIR", "/nonexistent");
        }
        let child = spawn(cmd);
        let mut replica = Replica {
            child: Some(child),
            port,
            name: name.into(),
            log,
            id: String::new(),
        };
        replica.wait_ready();
        replica
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(body) = blocking_get(self.port, "/readyz")
                && body.contains("ready")
                && !body.contains("not_ready")
            {
                break;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let version = blocking_get(self.port, "/api/version").expect("GET /api/version");
        let v: serde_json::Value = serde_json::from_str(&version).expect("version JSON");
        self.id = v["replica"].as_str().unwrap_or_default().to_owned();
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, room: &str, token: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/api/rooms/{}/ws?token={token}",
            self.port,
            piano_core::names::percent_encode(room)
        )
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit; its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: signals a process we started; no memory is touched.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("k8s-fallback-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The body of a plain blocking `GET`.
pub fn blocking_get(port: u16, path: &str) -> std::io::Result<String> {
    e2e_tests::process::blocking_get(port, path).map(|(_, body)| body)
}

/// A guest token and user id from a replica's real endpoint.
pub async fn guest(replica: &Replica, name: &str) -> (String, String) {
    let body: serde_json::Value = reqwest::Client::new()
        .post(replica.http("/api/auth/guest"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("POST /api/auth/guest")
        .json()
        .await
        .expect("guest JSON");
    (
        body["token"].as_str().expect("token").to_owned(),
        body["user"]["id"].as_str().expect("user id").to_owned(),
    )
}

pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test-only, short-lived values
pub enum Event {
    Msg(server_message::Msg),
    /// The close code (0 when the socket just ended).
    Closed(u16),
}

/// The e2e harness's [`e2e_tests::Client`] in the words of these tests: a connect that reports
/// a refusal or a dead server as text, and closes as bare codes (0 when the socket just ended
/// or broke), for servers that die on purpose.
pub struct Player {
    client: e2e_tests::Client,
    pub welcome: proto::Welcome,
}

impl Player {
    /// Connects and reads the Welcome; an error (refused, closed, dead server) as text.
    pub async fn connect(url: &str) -> Result<Player, String> {
        let admitted = tokio::time::timeout(Duration::from_secs(6), Client::admission(url))
            .await
            .map_err(|_| "connect timed out".to_string())?;
        match admitted {
            Admission::Admitted(client) => Ok(Player {
                welcome: client.welcome.clone(),
                client: *client,
            }),
            other => Err(format!("expected Welcome, got {other:?}")),
        }
    }

    pub fn id(&self) -> String {
        self.client.id().to_owned()
    }

    pub async fn send(&mut self, msg: client_message::Msg) {
        // A send to a dying server shows up as a close on the next read.
        let _ = self.client.try_send(msg).await;
    }

    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        Some(match self.client.next_event(within).await? {
            e2e_tests::Event::Msg(m) => Event::Msg(m),
            e2e_tests::Event::Closed(f) => Event::Closed(f.map(|f| u16::from(f.code)).unwrap_or(0)),
            e2e_tests::Event::Broken(_) => Event::Closed(0),
        })
    }

    /// The first message `pick` accepts within 10 s (panics otherwise).
    pub async fn expect<T>(
        &mut self,
        what: &str,
        pick: impl Fn(&server_message::Msg) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Msg(m)) => {
                    if let Some(t) = pick(&m) {
                        return t;
                    }
                }
                other => panic!("waiting for {what}: got {other:?}"),
            }
        }
    }

    /// Joins (with create settings for a new room); the Joined or the refusal as text.
    pub async fn join(
        &mut self,
        create: Option<proto::UpdateSettings>,
    ) -> Result<proto::Joined, String> {
        self.send(client_message::Msg::Join(proto::Join {
            password: String::new(),
            create_settings: create,
        }))
        .await;
        loop {
            match self.next(Duration::from_secs(5)).await {
                Some(Event::Msg(server_message::Msg::Joined(j))) => return Ok(j),
                Some(Event::Msg(server_message::Msg::JoinFailed(f))) => {
                    return Err(format!("join failed: {f:?}"));
                }
                Some(Event::Msg(_)) => continue,
                other => return Err(format!("while joining: {other:?}")),
            }
        }
    }

    /// Waits for the socket to close; its close code.
    pub async fn closed(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Closed(code)) => return Some(code),
                Some(Event::Msg(_)) => continue,
                None => return None,
            }
        }
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}

pub fn note(n: u32) -> client_message::Msg {
    client_message::Msg::Notes(proto::NoteBatch {
        time: e2e_tests::now_ms(),
        events: vec![proto::NoteEvent {
            delay: 0,
            kind: Some(proto::note_event::Kind::NoteOn(proto::NoteOn {
                note: n,
                velocity: 90,
                channel: 0,
            })),
        }],
        sender_id: String::new(),
    })
}

pub fn chat(text: &str) -> client_message::Msg {
    client_message::Msg::Chat(proto::SendChat { text: text.into() })
}

/// The notes batch from `sender` (skipping other traffic).
pub async fn hears(p: &mut Player, sender: &str) -> proto::NoteBatch {
    let sender = sender.to_owned();
    p.expect("notes", move |m| match m {
        server_message::Msg::Notes(b) if b.sender_id == sender => Some(b.clone()),
        _ => None,
    })
    .await
}

pub async fn sees_chat(p: &mut Player, text: &str) {
    let text = text.to_owned();
    p.expect("chat", move |m| match m {
        server_message::Msg::Chat(c) if c.text == text => Some(()),
        _ => None,
    })
    .await
}
