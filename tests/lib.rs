//! Harness for the end-to-end suites.
//!
//! Starts the real server (`wrangler dev`, which runs the worker in workerd) on free loopback
//! ports with its own throw-away signing key and storage, waits until it answers, and always
//! stops it (the whole process group) when dropped; if the test process dies, the kernel stops
//! wrangler too (`PR_SET_PDEATHSIG`). Tests talk to it with real clients: reqwest for HTTP and
//! tokio-tungstenite WebSockets speaking the protobuf protocol from `piano-core`.

use futures_util::{SinkExt, StreamExt};
use piano_core::identity::{Claims, SigningKey};
use piano_core::proto::{ClientMessage, ServerMessage, client_message, server_message};
use prost::Message as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod abuse_support;
mod client_abuse;
pub mod fallback_server;
pub mod stack;

pub use client_abuse::{Admission, Ending};
pub use piano_core::proto;

/// How long any single expected message may take to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Both hosts start with these: `ADMIN_USERNAMES` (`reserved-admin` is never registered with
/// the bootstrap secret, so its refusal can be tried at any time), the secret that lets the
/// suite register `root-admin`, and the one origin CORS allows.
pub const ADMIN_USERNAMES: &str = "root-admin,reserved-admin";
pub const ADMIN_BOOTSTRAP_SECRET: &str = "e2e-admin-bootstrap-secret";
pub const CORS_ALLOWED_ORIGIN: &str = "https://allowed.example";

/// Which host a [`Server`] runs, for the few assertions that differ (documented per host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `wrangler dev`.
    Edge,
    /// `k8s-fallback` standalone (SQLite under the server's directory).
    Fallback,
    /// `k8s-fallback` replicas sharing a Redis.
    FallbackCluster,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random Ed25519 key in PKCS#8 PEM.
pub fn random_key_pem() -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let mut seed = [0u8; 32];
    getrandom_fill(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    key.to_pkcs8_pem(Default::default())
        .expect("encode test key")
        .to_string()
}

fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("read /dev/urandom");
}

/// A running `wrangler dev`.
pub struct Server {
    child: std::sync::Mutex<Option<Child>>,
    pub port: u16,
    pub dir: PathBuf,
    pub key: SigningKey,
    /// The current key's PEM, for tests that sign odd tokens themselves.
    pub key_pem: String,
    /// A previous key, listed in JWT_VERIFY_KEYS: its tokens must still verify.
    pub previous_key: SigningKey,
    pub issuer: String,
    pub audience: String,
    pub host: Host,
}

impl Server {
    /// Builds the worker (incrementally) and starts wrangler dev with a new key and storage.
    pub fn start_edge() -> Server {
        Server::start_edge_with(&[])
    }

    /// As [`Server::start_edge`], with extra variables in the server's environment.
    pub fn start_edge_with(vars: &[(String, String)]) -> Server {
        let dir =
            std::env::temp_dir().join(format!("piano-e2e-{}-{}", std::process::id(), now_ms()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let pem = random_key_pem();
        let env_file = dir.join("test.env");
        let mut f = std::fs::File::create(&env_file).expect("write env file");
        writeln!(f, "JWT_PRIVATE_KEY=\"{}\"", pem.trim().replace('\n', "\\n"))
            .expect("write env file");
        let previous_key = SigningKey::from_pkcs8_pem(&random_key_pem()).expect("test key parses");
        let previous_x = previous_key.public_jwk()["x"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        writeln!(f, "JWT_VERIFY_KEYS={previous_x}").expect("write env file");
        // The shared server must not rate-limit the suite's own sign-ins; the rate-limit trial
        // restarts it with the default.
        writeln!(f, "AUTH_RATE_LIMIT_PER_MINUTE=100000").expect("write env file");
        writeln!(f, "ADMIN_USERNAMES={ADMIN_USERNAMES}").expect("write env file");
        writeln!(f, "ADMIN_BOOTSTRAP_SECRET={ADMIN_BOOTSTRAP_SECRET}").expect("write env file");
        writeln!(f, "CORS_ORIGINS={CORS_ALLOWED_ORIGIN}").expect("write env file");
        for (k, v) in vars {
            writeln!(f, "{k}={v}").expect("write env file");
        }
        let key = SigningKey::from_pkcs8_pem(&pem).expect("test key parses");

        eprintln!("e2e: building the worker (scripts/build-worker)");
        let status = Command::new("bash")
            .arg("scripts/build-worker")
            .current_dir(repo_root())
            .status()
            .expect("run scripts/build-worker");
        assert!(status.success(), "scripts/build-worker failed");

        let server = Server {
            child: std::sync::Mutex::new(None),
            port: free_port(),
            dir,
            key,
            key_pem: pem,
            previous_key,
            issuer: "pianorhythm".into(),
            audience: "pianorhythm".into(),
            host: Host::Edge,
        };
        server.spawn();
        server
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("create wrangler log");
        let mut cmd = Command::new(repo_root().join("node_modules/.bin/wrangler"));
        cmd.current_dir(repo_root())
            .args([
                "dev",
                "--ip",
                "127.0.0.1",
                "--show-interactive-dev-session=false",
            ])
            .args(["--port", &self.port.to_string()])
            .args(["--inspector-port", &self.inspector_port().to_string()])
            .arg("--persist-to")
            .arg(self.dir.join("state"))
            .arg("--env-file")
            .arg(self.dir.join("test.env"))
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .env(
                "PATH",
                format!(
                    "{}/.cargo/bin:{}",
                    std::env::var("HOME").unwrap_or_default(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let started = Instant::now();
        let child = spawn_guarded(cmd).expect("start wrangler dev");
        *self.lock_child() = Some(child);
        self.wait_ready();
        eprintln!(
            "e2e: wrangler dev ready on {} after {:.1}s",
            self.http(""),
            started.elapsed().as_secs_f64()
        );
    }

    /// A free port for wrangler's inspector that is not the server's own port (the OS may hand
    /// out a just-released port again).
    fn inspector_port(&self) -> u16 {
        loop {
            let p = free_port();
            if p != self.port {
                return p;
            }
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let url = self.http("/healthz");
        loop {
            if let Ok(resp) = http_status(&url)
                && resp == 200
            {
                return;
            }
            let exited = self.lock_child().as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                panic!(
                    "wrangler dev exited ({status}) before it was ready:\n{}",
                    self.log_tail(60)
                );
            }
            if Instant::now() > deadline {
                panic!("wrangler dev not ready after 180 s:\n{}", self.log_tail(60));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sets (or with `None` removes) one variable in the server's env file; it takes effect at
    /// the next [`Server::restart`].
    pub fn set_env(&self, key: &str, value: Option<&str>) {
        let path = self.dir.join("test.env");
        let text = std::fs::read_to_string(&path).expect("read env file");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key}=")))
            .map(str::to_owned)
            .collect();
        if let Some(v) = value {
            lines.push(format!("{key}={v}"));
        }
        std::fs::write(&path, lines.join("\n") + "\n").expect("write env file");
    }

    /// Stops the server and starts it again on the same port and storage.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&self) {
        let Some(mut child) = self.lock_child().take() else {
            return;
        };
        stop_group(&mut child);
    }

    /// Kept after the run (under target/, git-ignored) for post-mortems.
    pub fn log_path(&self) -> PathBuf {
        let dir = repo_root().join("target/e2e-logs");
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("wrangler-{}.log", self.port))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, room: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/api/rooms/{}/ws",
            self.port,
            piano_core::names::percent_encode(room)
        )
    }

    /// Claims as the server would issue them, for tests that need odd tokens.
    pub fn claims(&self, user: &str, name: &str) -> Claims {
        let now = now_secs();
        Claims {
            sub: user.into(),
            name: name.into(),
            roles: vec!["guest".into()],
            iat: now,
            exp: now + 3600,
            nbf: None,
            sid: None,
            generation: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        self.key.sign(claims)
    }

    /// A guest token from the real endpoint.
    pub async fn guest_token(&self, name: &str) -> String {
        let resp = reqwest::Client::new()
            .post(self.http("/api/auth/guest"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("POST /api/auth/guest");
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.expect("json body");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Connects a player whose token (signed here with the server's key) carries these roles.
    pub async fn player_as(&self, room: &str, user: &str, roles: &[&str]) -> Client {
        let mut claims = self.claims(user, user);
        claims.roles = roles.iter().map(|r| r.to_string()).collect();
        let token = self.sign(&claims);
        Client::connect(&format!("{}?token={token}", self.ws_url(room)), &[])
            .await
            .expect("connect")
    }

    /// Connects a player with a fresh guest token and waits for its Welcome.
    pub async fn player(&self, room: &str, name: &str) -> Client {
        let token = self.guest_token(name).await;
        Client::connect(&format!("{}?token={token}", self.ws_url(room)), &[])
            .await
            .expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `cmd` in its own process group, tied to this test process: if the tests die, the
/// kernel sends the child SIGTERM (`PR_SET_PDEATHSIG`).
pub fn spawn_guarded(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to signal the child when
    // this test process dies, so a crashed test run leaves no server behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    // The kernel sends PR_SET_PDEATHSIG when the *thread* that forked exits, and test
    // threads come and go: fork from a thread that lives as long as the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread vanished"))?
}

/// Stops a child started by [`spawn_guarded`] and everything in its process group: SIGTERM,
/// up to 5 s of grace, then SIGKILL.
pub fn stop_group(child: &mut Child) {
    let pgid = child.id() as i32;
    // SAFETY: signals our own child's process group; no memory is touched.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; whatever is left of the group goes too.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// Waits until something accepts TCP connections on `port`, or `deadline` passes.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Status of a plain blocking GET, for readiness polling before any runtime exists.
fn http_status(url: &str) -> std::io::Result<u16> {
    use std::io::{BufRead, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    // Only the status line: the server may keep the connection open after the body.
    let mut status_line = String::new();
    std::io::BufReader::new(s).read_line(&mut status_line)?;
    Ok(status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// How a WebSocket connect failed: the HTTP status and JSON body the server answered with.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Sends a WebSocket upgrade request as plain HTTP and returns the refusal. Used for refusals
/// because a WebSocket client may stop reading before the error body arrives.
pub async fn refused_upgrade(url: &str, headers: &[(&str, &str)]) -> Refused {
    let mut req = ::reqwest::Client::new()
        .get(url.replacen("ws://", "http://", 1))
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("upgrade request");
    let status = resp.status().as_u16();
    assert_ne!(status, 101, "{url} was accepted");
    Refused {
        status,
        body: resp.json().await.unwrap_or(serde_json::Value::Null),
    }
}

/// A player's WebSocket speaking the protobuf protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: proto::Welcome,
    /// The subprotocol the server selected, if any.
    pub subprotocol: Option<String>,
}

impl Client {
    /// Opens the socket with extra request headers and reads the Welcome.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
        let mut req = url.into_client_request().expect("valid ws url");
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let (ws, resp) = match tokio_tungstenite::connect_async(req).await {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(serde_json::Value::Null);
                return Err(Refused {
                    status: resp.status().as_u16(),
                    body,
                });
            }
            Err(e) => panic!("websocket connect to {url} failed: {e}"),
        };
        let subprotocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut client = Client {
            ws,
            welcome: Default::default(),
            subprotocol,
        };
        match client.recv().await {
            server_message::Msg::Welcome(w) => client.welcome = w,
            other => panic!("expected Welcome first, got {other:?}"),
        }
        Ok(client)
    }

    pub fn id(&self) -> &str {
        self.welcome
            .you
            .as_ref()
            .map(|p| p.id.as_str())
            .unwrap_or("")
    }

    pub async fn send(&mut self, msg: client_message::Msg) {
        let bytes = ClientMessage { msg: Some(msg) }.encode_to_vec();
        self.send_raw(Message::Binary(bytes.into())).await;
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("websocket send");
    }

    /// The next protocol message (WebSocket pings are answered by tungstenite and skipped).
    pub async fn recv(&mut self) -> server_message::Msg {
        match self.next_event(RECV_TIMEOUT).await {
            Some(Event::Msg(m)) => m,
            Some(Event::Closed(c)) => panic!("socket closed while waiting for a message: {c:?}"),
            None => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    /// Waits up to `within` for the next event; `None` when nothing came.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Binary(b))) => {
                    let msg =
                        ServerMessage::decode(&b[..]).expect("server sent a valid ServerMessage");
                    return Some(Event::Msg(msg.msg.expect("server message has a body")));
                }
                Some(Ok(Message::Close(frame))) => return Some(Event::Closed(frame)),
                Some(Ok(Message::Text(t))) => panic!("server sent a text frame: {t}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("websocket error: {e}"),
                None => return Some(Event::Closed(None)),
            }
        }
    }

    /// Asserts nothing arrives for `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(e) = self.next_event(within).await {
            panic!("expected silence, got {e:?}");
        }
    }

    /// Joins with a password; the refusal if the room said no.
    pub async fn try_join(&mut self, password: &str) -> Result<proto::Joined, proto::JoinFailed> {
        self.send(client_message::Msg::Join(proto::Join {
            password: password.into(),
            create_settings: None,
        }))
        .await;
        match self.recv().await {
            server_message::Msg::Joined(j) => Ok(j),
            server_message::Msg::JoinFailed(f) => Err(f),
            other => panic!("expected Joined or JoinFailed, got {other:?}"),
        }
    }

    /// The first message `pick` accepts, skipping others (chat, typing, cursor... traffic that a
    /// test step does not care about).
    pub async fn recv_matching<T>(
        &mut self,
        pick: impl Fn(&server_message::Msg) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Msg(m)) => {
                    if let Some(t) = pick(&m) {
                        return t;
                    }
                }
                Some(Event::Closed(c)) => panic!("socket closed while waiting: {c:?}"),
                None => panic!("the expected message did not come within {RECV_TIMEOUT:?}"),
            }
        }
    }

    /// Waits for an Error and returns its code.
    pub async fn error_code(&mut self) -> proto::ErrorCode {
        self.recv_matching(|m| match m {
            server_message::Msg::Error(e) => {
                Some(proto::ErrorCode::try_from(e.code).unwrap_or_default())
            }
            _ => None,
        })
        .await
    }

    pub async fn join(&mut self) -> proto::Joined {
        self.send(client_message::Msg::Join(proto::Join::default()))
            .await;
        match self.recv().await {
            server_message::Msg::Joined(j) => j,
            other => panic!("expected Joined, got {other:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close arrives, so the room sees a clean disconnect.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test-only, short-lived values
pub enum Event {
    Msg(server_message::Msg),
    Closed(Option<CloseFrame>),
}

/// A one-note batch stamped now.
pub fn note_on(note: u32, velocity: u32) -> client_message::Msg {
    client_message::Msg::Notes(proto::NoteBatch {
        time: now_ms(),
        events: vec![proto::NoteEvent {
            delay: 0,
            kind: Some(proto::note_event::Kind::NoteOn(proto::NoteOn {
                note,
                velocity,
                channel: 0,
            })),
        }],
        sender_id: String::new(),
    })
}
