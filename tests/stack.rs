//! The configured backends, run for real on loopback (no mocks):
//!
//! - MongoDB: `secantusd-py` (PyPI `secantusdb`, MongoDB wire-compatible, on-disk storage)
//!   behind `mongodb-local-data-api` (npm), a Data API v1 gateway;
//! - Redis: Debian's `redis-server` (append-only file, fsync always, so a restart keeps what was
//!   acknowledged) behind `@humanwhocodes/upstash-redis-server` (npm), the Upstash REST protocol.
//!
//! Each part can be stopped and started again on the same port and data, for the fault tests.
//! The two gateways listen on every interface by default; `tests/support/loopback.cjs` pins them
//! to 127.0.0.1.

use crate::{free_port, repo_root, spawn_guarded, stop_group, wait_for_port};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Mongo,
    DataApi,
    Redis,
    RedisRest,
}

pub struct Stack {
    pub dir: PathBuf,
    pub api_key: String,
    pub token: String,
    /// Keys of this stack's run (several stacks may share nothing, but keep them apart anyway).
    pub prefix: String,
    ports: HashMap<Part, u16>,
    children: Mutex<HashMap<Part, Child>>,
}

impl Stack {
    pub fn start() -> Stack {
        // Unique within the run too: two trials may start a stack in the same millisecond (they
        // once shared a MongoDB directory so, and the second MongoDB could not start).
        let id = crate::unique(&std::process::id().to_string());
        let dir = std::env::temp_dir().join(format!("piano-stack-{id}"));
        std::fs::create_dir_all(dir.join("mongo")).expect("create stack dir");
        std::fs::create_dir_all(dir.join("redis")).expect("create stack dir");
        let ports = [Part::Mongo, Part::DataApi, Part::Redis, Part::RedisRest]
            .into_iter()
            .map(|p| (p, free_port()))
            .collect();
        let stack = Stack {
            dir,
            api_key: format!("key-{id}"),
            token: format!("token-{id}"),
            prefix: format!("t{id}:"),
            ports,
            children: Mutex::new(HashMap::new()),
        };
        for part in [Part::Mongo, Part::Redis, Part::DataApi, Part::RedisRest] {
            stack.start_part(part);
        }
        stack
    }

    pub fn port(&self, part: Part) -> u16 {
        self.ports[&part]
    }

    pub fn data_api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port(Part::DataApi))
    }

    pub fn redis_rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port(Part::RedisRest))
    }

    /// The variables that point a deployment at this stack.
    pub fn vars(&self, deployment: &str) -> Vec<(String, String)> {
        [
            ("MONGODB_DATA_API_URL", self.data_api_url()),
            ("MONGODB_DATA_API_KEY", self.api_key.clone()),
            ("MONGODB_DATABASE", "pianotest".into()),
            ("UPSTASH_REDIS_REST_URL", self.redis_rest_url()),
            ("UPSTASH_REDIS_REST_TOKEN", self.token.clone()),
            ("REDIS_KEY_PREFIX", self.prefix.clone()),
            ("BACKEND_TIMEOUT_MS", "2000".into()),
            ("DEPLOYMENT_ID", deployment.into()),
            // The rooms' alarm and hand-over steps are debug lines: a failing trial's log tail
            // then says where a room's work stopped.
            ("LOG_LEVEL", "debug".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Clients configured exactly as a deployment using [`Stack::vars`] would be.
    pub fn backends(&self) -> piano_backends::Backends {
        let vars: HashMap<String, String> = self.vars("test").into_iter().collect();
        piano_backends::Backends::from_vars(|k| vars.get(k).cloned()).expect("stack config")
    }

    pub fn start_part(&self, part: Part) {
        let port = self.port(part);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{part:?}.log")))
            .expect("stack log");
        let mut cmd = match part {
            // Through the interpreter rather than the `secantusd-py` script, so a pyenv shim
            // that was not rehashed does not matter.
            Part::Mongo => {
                let mut c = Command::new("python3");
                c.args([
                    "-c",
                    "import sys; from secantus.cli import main; sys.exit(main())",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--log-level",
                    "WARNING",
                    // Like Redis's `appendfsync always`: an acknowledged write survives the
                    // SIGKILL of the fault test (without it WiredTiger may buffer it).
                    "--sync-on-commit",
                    "--storage-path",
                ])
                .arg(self.dir.join("mongo"));
                c
            }
            Part::DataApi => {
                let pkg = repo_root().join("node_modules/mongodb-local-data-api");
                let mut c = Command::new("node");
                // The gateway reads ./package.json: it must run from its own directory.
                c.current_dir(&pkg)
                    .arg("--require")
                    .arg(repo_root().join("tests/support/loopback.cjs"))
                    .arg("bin.js")
                    .args(["--apiPort", &port.to_string()])
                    .arg(format!(
                        "--url=mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=1500&connectTimeoutMS=1500",
                        self.port(Part::Mongo)
                    ))
                    .arg(format!("--key={}", self.api_key));
                c
            }
            Part::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                    ])
                    .arg("--dir")
                    .arg(self.dir.join("redis"));
                c
            }
            Part::RedisRest => {
                let mut c = Command::new("node");
                c.arg("--require")
                    .arg(repo_root().join("tests/support/loopback.cjs"))
                    .arg(
                        repo_root().join(
                            "node_modules/@humanwhocodes/upstash-redis-server/dist/server.js",
                        ),
                    )
                    .env("URS_TOKEN", &self.token)
                    .env("PORT", port.to_string())
                    .env(
                        "REDIS_URL",
                        format!("redis://127.0.0.1:{}", self.port(Part::Redis)),
                    );
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let child = spawn_guarded(cmd).unwrap_or_else(|e| panic!("start {part:?}: {e}"));
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(part, child);
        assert!(
            wait_for_port(port, Duration::from_secs(30)),
            "{part:?} did not listen on {port}:\n{}",
            self.log_tail(part)
        );
    }

    /// Stops one part abruptly (SIGKILL of its process group): an outage, not a shutdown.
    pub fn kill_part(&self, part: Part) {
        let child = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&part);
        if let Some(mut child) = child {
            // SAFETY: signals our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self, part: Part) -> String {
        let log =
            std::fs::read_to_string(self.dir.join(format!("{part:?}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Stack {
    /// Stops every part and removes the stack's data.
    pub fn stop_all(&self) {
        let children: Vec<Child> = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for mut child in children {
            stop_group(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
