//! The native fallback (`k8s-fallback`) as the e2e suites' [`Server`]: the same harness, the
//! same clients and the same trials, against the tokio host instead of `wrangler dev`.
//!
//! It runs standalone (no Redis): one process, rooms in SQLite under the server's own
//! throw-away directory, a fresh signing key plus a previous key in `JWT_VERIFY_KEYS`, exactly
//! like the edge harness. `k8s-fallback/tests/e2e_subset.rs` runs the shared trials with it.
//! Trials that restart the server ([`Server::restart`]) are edge-only: a restart spawns wrangler.

use crate::{
    ADMIN_BOOTSTRAP_SECRET, ADMIN_USERNAMES, CORS_ALLOWED_ORIGIN, Host, Server, free_port, now_ms,
    random_key_pem, repo_root, spawn_guarded,
};
use piano_core::identity::SigningKey;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

impl Server {
    /// Builds `k8s-fallback` (debug, incrementally) and starts it.
    pub fn start_fallback() -> Server {
        eprintln!("e2e: building k8s-fallback");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "k8s-fallback"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build -p k8s-fallback");
        assert!(status.success(), "cargo build -p k8s-fallback failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target"));
        Server::start_fallback_binary(&target.join("debug/k8s-fallback"), &[])
    }

    /// Starts an already built `k8s-fallback` binary with extra environment variables.
    pub fn start_fallback_binary(binary: &Path, vars: &[(String, String)]) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "piano-fallback-e2e-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let pem = random_key_pem();
        let previous_key = SigningKey::from_pkcs8_pem(&random_key_pem()).expect("test key parses");
        let previous_x = previous_key.public_jwk()["x"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let server = Server {
            child: std::sync::Mutex::new(None),
            port: free_port(),
            dir,
            key: SigningKey::from_pkcs8_pem(&pem).expect("test key parses"),
            key_pem: pem,
            previous_key,
            issuer: "pianorhythm".into(),
            audience: "pianorhythm".into(),
            host: if vars.iter().any(|(k, _)| k == "REDIS_URL") {
                Host::FallbackCluster
            } else {
                Host::Fallback
            },
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(server.log_path())
            .expect("create server log");
        let mut cmd = Command::new(binary);
        cmd.env("PORT", server.port.to_string())
            .env("BIND", "127.0.0.1")
            .env("DATA_DIR", server.dir.join("state"))
            .env("JWT_PRIVATE_KEY", &server.key_pem)
            .env("JWT_VERIFY_KEYS", previous_x)
            // The shared server must not rate-limit the suite's own sign-ins.
            .env("AUTH_RATE_LIMIT_PER_MINUTE", "100000")
            .env("STATIC_DIR", repo_root().join("web/dist"))
            .env("ADMIN_USERNAMES", ADMIN_USERNAMES)
            .env("ADMIN_BOOTSTRAP_SECRET", ADMIN_BOOTSTRAP_SECRET)
            .env("CORS_ORIGINS", CORS_ALLOWED_ORIGIN)
            // Loopback is the trusted proxy, so a trial can play clients of several networks
            // (`Client::connect_from`); without the header the peer is the client.
            .env("TRUSTED_PROXIES", "127.0.0.1/32")
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = spawn_guarded(cmd).expect("start k8s-fallback");
        *server.lock_child() = Some(child);
        server.wait_ready();
        eprintln!("e2e: k8s-fallback ready on {}", server.http(""));
        server
    }
}
