//! The three targets the trials run against, started the same way: a throw-away directory, a
//! fresh signing key plus a previous key in `JWT_VERIFY_KEYS`, the admin and CORS settings
//! every trial may rely on, free loopback ports, logs under `target/e2e-logs/`.
//!
//! - [`Host::Edge`]: `wrangler dev` (the worker and Durable Objects in workerd), built first
//!   by `scripts/build-worker`; its environment goes in through an env file.
//! - [`Host::Fallback`]: one `k8s-fallback` process, rooms and accounts in SQLite.
//! - [`Host::FallbackCluster`]: two `k8s-fallback` replicas on one Redis, behind a round-robin
//!   balancer, so every second connection of a trial lands on the other replica.
//!
//! Each server has its sign-in providers' rig (`oauth_rig.rs`), configured through
//! `OAUTH_PROVIDERS`.
//!
//! [`Server::restart`] stops the server's processes and starts them again on the same ports
//! and storage (the cluster's Redis and the providers' rig keep running), with the environment [`Server::set_env`]
//! left.

use crate::process::{self, Redis, log_dir, log_to, spawn_guarded, stop_group, tail, wait_ok};
use crate::{
    ADMIN_BOOTSTRAP_SECRET, ADMIN_USERNAMES, CORS_ALLOWED_ORIGIN, Host, Server, free_port,
    random_key_pem, repo_root,
};
use piano_core::identity::SigningKey;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a [`Server`]'s processes are (re)started.
pub(crate) enum Launch {
    Edge,
    Fallback {
        binary: PathBuf,
        /// One port per replica (one for the standalone fallback).
        replicas: Vec<u16>,
        /// The cluster's Redis; stopped with the server, kept across restarts.
        redis: Mutex<Option<Redis>>,
    },
}

/// The targets' `RESUME_GRACE_MS`: short, so the trial that waits it out stays short (trials
/// run concurrently), long enough that a cut and a resume on a loaded 2-core machine fit in it.
pub const RESUME_GRACE_MS: u64 = 5000;

/// `scripts/build-web` replaces `web/dist` wholesale: the targets build one at a time.
static BUILDS: Mutex<()> = Mutex::new(());

fn build(script: &str) {
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!("e2e: {script}");
    let status = Command::new("bash")
        .arg(script)
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} failed");
}

impl Server {
    /// A target of `host`; `fallback` is the `k8s-fallback` binary the fallback hosts run.
    pub fn start(host: Host, fallback: &Path) -> Server {
        match host {
            Host::Edge => Server::start_edge(),
            Host::Fallback => Server::start_fallback_binary(fallback, &[]),
            Host::FallbackCluster => Server::start_fallback_cluster(fallback),
        }
    }

    /// Builds the worker (incrementally) and starts wrangler dev with a new key and storage.
    pub fn start_edge() -> Server {
        Server::start_edge_with(&[])
    }

    /// As [`Server::start_edge`], with extra variables in the server's environment.
    pub fn start_edge_with(vars: &[(String, String)]) -> Server {
        build("scripts/build-worker");
        let server = Server::new(Host::Edge, Launch::Edge, free_port(), vars);
        server.spawn();
        server
    }

    /// A standalone `k8s-fallback` (an already built binary) with extra variables.
    pub fn start_fallback_binary(binary: &Path, vars: &[(String, String)]) -> Server {
        build("scripts/build-web");
        let port = free_port();
        let launch = Launch::Fallback {
            binary: binary.to_owned(),
            replicas: vec![port],
            redis: Mutex::new(None),
        };
        let server = Server::new(Host::Fallback, launch, port, vars);
        server.spawn();
        server
    }

    /// Two `k8s-fallback` replicas on a new Redis, behind a round-robin balancer.
    pub fn start_fallback_cluster(binary: &Path) -> Server {
        Server::start_fallback_cluster_with(binary, &[])
    }

    /// As [`Server::start_fallback_cluster`], with extra variables in the replicas' environment.
    pub fn start_fallback_cluster_with(binary: &Path, extra: &[(String, String)]) -> Server {
        build("scripts/build-web");
        let redis = Redis::start();
        let replicas = vec![free_port(), free_port()];
        let port = process::balancer(replicas.clone());
        let mut vars = vec![
            ("REDIS_URL".to_owned(), redis.url()),
            // Redis commands time out after a third of the lease (1 s by default), and a busy
            // 2-core test machine running three targets at once has missed that: a longer
            // lease keeps rooms where they are. Failover itself: k8s-fallback/tests/cluster.rs.
            ("LEASE_TTL_MS".to_owned(), "9000".to_owned()),
        ];
        vars.extend_from_slice(extra);
        let launch = Launch::Fallback {
            binary: binary.to_owned(),
            replicas,
            redis: Mutex::new(Some(redis)),
        };
        let server = Server::new(Host::FallbackCluster, launch, port, &vars);
        server.spawn();
        server
    }

    fn new(host: Host, launch: Launch, port: u16, vars: &[(String, String)]) -> Server {
        let tag = format!("{host:?}").to_lowercase();
        // Unique within the run: drift rigs of one host may start in the same millisecond.
        let dir = std::env::temp_dir().join(format!(
            "piano-e2e-{tag}-{}",
            crate::unique(&std::process::id().to_string())
        ));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let pem = random_key_pem();
        let previous_key = SigningKey::from_pkcs8_pem(&random_key_pem()).expect("test key parses");
        let previous_x = previous_key.public_jwk()["x"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut env: BTreeMap<String, String> = [
            ("JWT_PRIVATE_KEY", pem.trim().to_owned()),
            ("JWT_VERIFY_KEYS", previous_x),
            // The shared server must not rate-limit the suite's own sign-ins; the rate-limit
            // trial restarts it with the default.
            ("AUTH_RATE_LIMIT_PER_MINUTE", "100000".into()),
            ("ADMIN_USERNAMES", ADMIN_USERNAMES.into()),
            ("ADMIN_BOOTSTRAP_SECRET", ADMIN_BOOTSTRAP_SECRET.into()),
            ("CORS_ORIGINS", CORS_ALLOWED_ORIGIN.into()),
            ("RESUME_GRACE_MS", RESUME_GRACE_MS.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if host != Host::Edge {
            let fallback = [
                (
                    "STATIC_DIR",
                    repo_root().join("web/dist").display().to_string(),
                ),
                ("BIND", "127.0.0.1".into()),
                ("RUST_LOG", "info".into()),
                // Loopback is the trusted proxy, so a trial can play clients of several
                // networks (`Client::connect_from`); without the header the peer is the client.
                ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
                // Every trial's clients share 127.0.0.1 and run at once (wrangler dev's have no
                // CF-Connecting-IP, so no network at all): per-IP caps would pit the trials
                // against each other. The fallback's own tests cover them (http_limits.rs,
                // reach.rs).
                ("ROOM_SOCKETS_PER_NETWORK", "100000".into()),
                ("MAX_WEBSOCKETS_PER_IP", "1000000".into()),
                ("MAX_CONNECTIONS_PER_IP", "1000000".into()),
            ];
            env.extend(fallback.into_iter().map(|(k, v)| (k.to_owned(), v)));
        }
        // The sign-in providers (`oauth_rig.rs`): the server's origin is known before it runs.
        let oauth = crate::oauth_rig::OAuthRig::start(port);
        env.extend(oauth.server_env());
        env.extend(vars.iter().cloned());
        crate::openapi_proxy::register(port, host.tag());
        Server {
            procs: Mutex::new(Vec::new()),
            env: Mutex::new(env),
            launch,
            port,
            dir,
            key: SigningKey::from_pkcs8_pem(&pem).expect("test key parses"),
            key_pem: pem,
            previous_key,
            issuer: "pianorhythm".into(),
            audience: "pianorhythm".into(),
            host,
            oauth,
            admin_registered: tokio::sync::OnceCell::new(),
        }
    }

    fn env(&self) -> BTreeMap<String, String> {
        self.env.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets (or with `None` removes) one variable of the server's environment; it takes effect
    /// at the next [`Server::restart`].
    pub fn set_env(&self, key: &str, value: Option<&str>) {
        let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => env.insert(key.to_owned(), v.to_owned()),
            None => env.remove(key),
        };
    }

    /// Stops the server and starts it again on the same ports and storage.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    /// Stops the server's processes (the cluster's Redis keeps running: see
    /// [`Server::shutdown`]).
    pub fn stop(&self) {
        for mut child in self.take_procs() {
            stop_group(&mut child);
        }
    }

    /// `kill -9` of the server's processes (a crash, no drain); [`Server::restart`] brings
    /// them back on the same ports and storage.
    pub fn kill(&self) {
        for mut child in self.take_procs() {
            process::kill_group(&mut child);
        }
    }

    fn take_procs(&self) -> Vec<std::process::Child> {
        std::mem::take(&mut *self.procs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stops everything the server started and removes its storage.
    pub fn shutdown(&self) {
        self.stop();
        crate::openapi_proxy::unregister(self.port);
        self.oauth.stop();
        if let Launch::Fallback { redis, .. } = &self.launch {
            drop(redis.lock().unwrap_or_else(|p| p.into_inner()).take());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The logs of the server's processes.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        match &self.launch {
            Launch::Edge => vec![log_dir().join(format!("wrangler-{}.log", self.port))],
            Launch::Fallback { replicas, .. } => replicas
                .iter()
                .map(|p| log_dir().join(format!("fallback-{p}.log")))
                .collect(),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.log_paths()
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.display(), tail(p, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn(&self) {
        let started = Instant::now();
        match &self.launch {
            Launch::Edge => self.spawn_edge(),
            Launch::Fallback {
                binary, replicas, ..
            } => {
                for (i, port) in replicas.iter().enumerate() {
                    self.spawn_replica(binary, i, *port);
                }
            }
        }
        eprintln!(
            "e2e: {:?} ready on {} after {:.1}s",
            self.host,
            self.http(""),
            started.elapsed().as_secs_f64()
        );
    }

    fn spawn_edge(&self) {
        // wrangler dev reads secrets from a dotenv file; a PEM's newlines go in escaped.
        let env_file = self.dir.join("test.env");
        let text: String = self
            .env()
            .iter()
            .map(|(k, v)| match v.contains('\n') {
                true => format!("{k}=\"{}\"\n", v.replace('\n', "\\n")),
                false => format!("{k}={v}\n"),
            })
            .collect();
        std::fs::write(&env_file, text).expect("write env file");
        let log = self.log_paths().remove(0);
        let mut cmd = Command::new(repo_root().join("node_modules/.bin/wrangler"));
        cmd.current_dir(repo_root())
            .args(["dev", "--ip", "127.0.0.1"])
            .arg("--config")
            .arg(prebuilt_config())
            .arg("--show-interactive-dev-session=false")
            .args(["--port", &self.port.to_string()])
            .args(["--inspector-port", &self.inspector_port().to_string()])
            .arg("--persist-to")
            .arg(self.dir.join("state"))
            .arg("--env-file")
            .arg(&env_file)
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .env(
                "PATH",
                format!(
                    "{}/.cargo/bin:{}",
                    std::env::var("HOME").unwrap_or_default(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        log_to(&mut cmd, &log);
        self.run_until_ready(cmd, self.port, "/healthz", Duration::from_secs(180), &log);
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

    fn spawn_replica(&self, binary: &Path, index: usize, port: u16) {
        let log = self.log_paths().remove(index);
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .envs(self.env())
            .env("PORT", port.to_string())
            .env("DATA_DIR", self.data_dir(index))
            .env("REPLICA_ID", format!("e2e-{index}"));
        log_to(&mut cmd, &log);
        // `/readyz`: a replica of the cluster answers once it is connected to Redis.
        self.run_until_ready(cmd, port, "/readyz", Duration::from_secs(60), &log);
    }

    /// Where replica `index` keeps its SQLite files (`state/` for the standalone fallback).
    pub fn data_dir(&self, index: usize) -> PathBuf {
        match self.host {
            Host::FallbackCluster => self.dir.join(format!("state-{index}")),
            _ => self.dir.join("state"),
        }
    }

    fn run_until_ready(&self, cmd: Command, port: u16, path: &str, within: Duration, log: &Path) {
        let mut child = spawn_guarded(cmd).expect("start the server");
        wait_ok(port, path, within, &mut child, log);
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
    }
}

/// `wrangler.toml` as the tests run it: the same, without the `[build]` section. With a custom
/// build, wrangler dev starts a file watcher and, once that watcher is ready, always runs the build
/// again and reloads the worker ("The file … changed, restarting build", ~3 times per instance
/// with no file changed): a reload of an instance already in use answered 503 or lost its port
/// to its own previous workerd (fresh-clone runs lost 1–2 trials so). The tests build the worker
/// before starting wrangler and never edit sources, so wrangler only bundles `build/` (esbuild's
/// watcher reacts to real changes only). Written next to wrangler.toml so its relative paths
/// hold; once, atomically (instances start concurrently, and wrangler watches its config).
fn prebuilt_config() -> PathBuf {
    static CONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CONFIG.get_or_init(write_prebuilt_config).clone()
}

fn write_prebuilt_config() -> PathBuf {
    let root = repo_root();
    let source = std::fs::read_to_string(root.join("wrangler.toml")).expect("read wrangler.toml");
    let mut in_build = false;
    let mut config = String::new();
    for line in source.lines() {
        let header = line.trim_start().starts_with('[');
        if header {
            in_build = line.trim() == "[build]";
        }
        if !in_build {
            config.push_str(line);
            config.push('\n');
        }
    }
    let path = root.join(".wrangler-e2e.toml");
    // wrangler dev reloads when its config file changes: a running instance must never see
    // this file rewritten, even with the same text.
    if std::fs::read_to_string(&path).is_ok_and(|old| old == config) {
        return path;
    }
    let tmp = root.join(format!(".wrangler-e2e.toml.{}", std::process::id()));
    std::fs::write(&tmp, config).expect("write the e2e wrangler config");
    std::fs::rename(&tmp, &path).expect("place the e2e wrangler config");
    path
}
