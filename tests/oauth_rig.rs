//! The sign-in providers every target is configured with (`tests/support/oauth-rig.mjs`, one
//! Node process per [`crate::Server`], on a port of its own): `local`, a real OpenID Connect
//! provider (`oidc-provider`); `discord`, a stand-in for Discord's OAuth2 endpoints; `evil`, an
//! OpenID Connect provider that misbehaves on request. It lives as long as its server (across
//! restarts) and logs to `target/e2e-logs/oauth-rig-<server port>.log`.

use crate::process::{log_dir, spawn_guarded, stop_group, tail};
use crate::repo_root;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Mutex;

/// The clients registered at the rig's providers (ids as in `oauth-rig.mjs`).
pub const LOCAL_CLIENT_ID: &str = "piano";
pub const DISCORD_CLIENT_ID: &str = "1234567890";
pub const EVIL_CLIENT_ID: &str = "piano-evil";
const SECRETS: [(&str, &str); 3] = [
    ("LOCAL", "e2e-local-client-secret"),
    ("DISCORD", "e2e-discord-client-secret"),
    ("EVIL", "e2e-evil-client-secret"),
];

pub struct OAuthRig {
    /// The rig and its stdout (kept open: the rig may still write to it).
    child: Mutex<Option<(Child, BufReader<ChildStdout>)>>,
    pub port: u16,
    pub log: PathBuf,
}

impl OAuthRig {
    /// Starts the rig for a server whose origin is `http://127.0.0.1:<server_port>` and waits
    /// for its `ready <port>` line.
    pub fn start(server_port: u16) -> OAuthRig {
        let log = log_dir().join(format!("oauth-rig-{server_port}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let mut cmd = Command::new("node");
        cmd.current_dir(repo_root())
            .arg("tests/support/oauth-rig.mjs")
            .arg(format!("http://127.0.0.1:{server_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file);
        for (id, secret) in SECRETS {
            cmd.env(format!("OAUTH_RIG_SECRET_{id}"), secret);
        }
        let mut child = spawn_guarded(cmd).expect("node runs tests/support/oauth-rig.mjs");
        let mut out = BufReader::new(child.stdout.take().expect("the rig's stdout"));
        let mut line = String::new();
        // The rig prints its line once listening, or exits (stdout closes) on an error.
        let _ = out.read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                stop_group(&mut child);
                panic!(
                    "the OAuth rig did not start ({line:?}):\n{}",
                    tail(&log, 40)
                )
            });
        OAuthRig {
            child: Mutex::new(Some((child, out))),
            port,
            log,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's configuration: `OAUTH_PROVIDERS` and the three client secrets.
    pub fn server_env(&self) -> Vec<(String, String)> {
        let base = self.base();
        let providers = serde_json::json!([
            {"id": "local", "kind": "oidc", "name": "Local OIDC", "issuer": format!("{base}/oidc"),
             "client_id": LOCAL_CLIENT_ID},
            {"id": "discord", "kind": "discord", "client_id": DISCORD_CLIENT_ID,
             "base_url": format!("{base}/discord"), "cdn_url": format!("{base}/discord/cdn")},
            {"id": "evil", "kind": "oidc", "issuer": format!("{base}/evil"),
             "client_id": EVIL_CLIENT_ID},
        ]);
        let mut env = vec![("OAUTH_PROVIDERS".to_owned(), providers.to_string())];
        env.extend(
            SECRETS
                .iter()
                .map(|(id, s)| (format!("OAUTH_CLIENT_SECRET_{id}"), (*s).to_owned())),
        );
        env
    }

    pub fn stop(&self) {
        if let Some((mut child, _)) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            stop_group(&mut child);
        }
    }
}
