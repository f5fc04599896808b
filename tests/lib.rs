//! Harness for the end-to-end suites.
//!
//! Starts the real server (`wrangler dev`, which runs the worker in workerd) on free loopback
//! ports with its own throw-away signing key and storage, waits until it answers, and always
//! stops it (the whole process group) when dropped; if the test process dies, the kernel stops
//! wrangler too (`PR_SET_PDEATHSIG`). Tests talk to it with real clients: reqwest for HTTP and
//! the client crate's WebSocket connections (`piano-client`) speaking the protobuf protocol.

use piano_client::{ConnectError, Connection, Dial};
use piano_core::identity::{Claims, SigningKey};
use piano_core::proto::{client_message, server_message};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

pub mod abuse_support;
mod client_abuse;
mod client_resume;
pub mod oauth_rig;
pub mod openapi;
pub mod openapi_proxy;
pub mod process;
pub mod rigs;
pub mod stack;
pub mod targets;

pub use process::{free_port, spawn_guarded, stop_group, wait_for_port};

pub use client_abuse::{Admission, Ending};
pub use piano_client::Event;
pub use piano_core::proto;

/// How long any single expected message may take to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest any one HTTP exchange or WebSocket handshake of a trial may take: a server
/// that never answers fails the trial instead of stalling the suite.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client every trial uses (`tests/clippy.toml` forbids the unbounded defaults).
pub fn http() -> reqwest::Client {
    http_builder().build().expect("http client")
}

/// [`http`]'s settings, for a client that needs more (no redirects, say).
///
/// Every request goes through the OpenAPI proxy (`openapi_proxy.rs`), which checks the
/// targets' answers against `docs/openapi.yaml`; the trial (this thread's name) rides along
/// in a header the proxy takes off, so a violation fails the trial that received it.
#[allow(clippy::disallowed_methods)] // the one place the builder is made, with its bounds
pub fn http_builder() -> reqwest::ClientBuilder {
    let proxy = reqwest::Proxy::http(format!("http://127.0.0.1:{}", openapi_proxy::port()))
        .expect("the proxy's URL");
    let mut trial = reqwest::header::HeaderMap::new();
    if let Some(name) = std::thread::current()
        .name()
        .and_then(|n| reqwest::header::HeaderValue::from_str(n).ok())
    {
        trial.insert(openapi_proxy::TRIAL_HEADER, name);
    }
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .proxy(proxy)
        .default_headers(trial)
}

/// `GET url` with [`http`].
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

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

impl Host {
    /// Its name in trial names and reports: `edge`, `fallback`, `cluster`.
    pub fn tag(self) -> &'static str {
        match self {
            Host::Edge => "edge",
            Host::Fallback => "fallback",
            Host::FallbackCluster => "cluster",
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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

/// A name no other trial uses: `prefix-<ms>-<n>`. A trial names its rooms (and users) with it
/// and looks only at what carries its own prefix, never at global lists or counts.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", now_ms() % 1_000_000_000)
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

/// One target of the e2e trials: `wrangler dev` (the edge), a standalone `k8s-fallback`, or two
/// `k8s-fallback` replicas on a Redis behind a round-robin balancer. Trials see only its URLs,
/// its signing keys and [`Host`]; how it is started and restarted lives in `targets.rs`.
pub struct Server {
    /// The running processes (one `wrangler dev`, or one per replica).
    procs: std::sync::Mutex<Vec<Child>>,
    /// The server's environment; [`Server::set_env`] changes it for the next restart.
    env: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    launch: targets::Launch,
    /// The port clients use (the balancer's, for the cluster).
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
    /// The sign-in providers the server is configured with ([`oauth_rig`]).
    pub oauth: oauth_rig::OAuthRig,
    /// `root-admin` was registered ([`Server::admin_token`]): once per server, by whichever
    /// trial asks first, the others waiting for it.
    admin_registered: tokio::sync::OnceCell<()>,
}

impl Server {
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

    /// `POST path` with a JSON body: the status and the JSON answer (null if there is none).
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, _, answer) = self.post_json_retry_after(path, body).await;
        (status, answer)
    }

    /// As [`Server::post_json`], with the answer's `retry-after` header.
    pub async fn post_json_retry_after(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, Option<String>, serde_json::Value) {
        let resp = crate::http()
            .post(self.http(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, retry_after, resp.json().await.unwrap_or_default())
    }

    /// A guest token from the real endpoint.
    pub async fn guest_token(&self, name: &str) -> String {
        let resp = crate::http()
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
        self.shutdown();
    }
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
    let mut req = crate::http()
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

/// A player's WebSocket speaking the protobuf protocol: the client crate's [`Connection`]
/// (socket, framing, bounded waits, resume state; its fields and methods through `Deref`) with
/// the trials' conveniences, which panic when the server does not do what a step expects.
pub struct Client {
    pub conn: Connection,
}

impl std::ops::Deref for Client {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Client {
    /// Opens the socket with extra request headers and reads the Welcome.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
        let mut dial = Dial::new(url);
        for (k, v) in headers {
            dial = dial.header(k, v);
        }
        Client::dial(dial).await
    }

    /// [`Client::connect`] as `dial` says; a refusal before the upgrade is an `Err`, any other
    /// failure fails the trial.
    pub async fn dial(dial: Dial) -> Result<Client, Refused> {
        let url = dial.url.clone();
        match Connection::connect(dial).await {
            Ok(conn) => Ok(Client { conn }),
            Err(ConnectError::Refused { status, body }) => Err(Refused { status, body }),
            Err(e) => panic!("websocket connect to {url}: {e}"),
        }
    }

    pub async fn send(&mut self, msg: client_message::Msg) {
        self.conn.send(msg).await.expect("websocket send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.conn.send_raw(msg).await.expect("websocket send");
    }

    /// The next protocol message (WebSocket pings are answered by tungstenite and skipped).
    pub async fn recv(&mut self) -> server_message::Msg {
        match self.next_event(RECV_TIMEOUT).await {
            Some(Event::Msg(m)) => m,
            Some(Event::Closed(c)) => panic!("socket closed while waiting for a message: {c:?}"),
            Some(Event::Broken(e)) => panic!("socket broke while waiting for a message: {e}"),
            None => panic!("no message within {RECV_TIMEOUT:?}"),
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
                Some(Event::Broken(e)) => panic!("socket broke while waiting: {e}"),
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

    /// A goodbye (1000), then the server's close (at most 2 s).
    pub async fn close(self) {
        self.conn.close().await;
    }
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

/// Polls `probe` until it answers `Some`, for up to `within`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
