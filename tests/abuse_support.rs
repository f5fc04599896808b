//! What the abuse trials (`tests/abuse*.rs`) need from the harness beyond clients: looking at a
//! server's storage from outside (to show that probes create none), the admin account, and the
//! protocol numbers of issue 13 as the integers messages carry.

use crate::{ADMIN_BOOTSTRAP_SECRET, Host, Server};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `ErrorCode` values (`proto/pianorhythm/v1/room.proto`), as the `i32`s messages carry.
pub mod error_code {
    use piano_core::proto::ErrorCode;
    pub const RATE_LIMITED: i32 = ErrorCode::RateLimited as i32;
    pub const TOO_MANY_CONNECTIONS: i32 = ErrorCode::TooManyConnections as i32;
    pub const TOO_MANY_SUBSCRIPTIONS: i32 = ErrorCode::TooManySubscriptions as i32;
}

/// `JoinFailure` values.
pub mod join_failure {
    use piano_core::proto::JoinFailure;
    pub const WRONG_PASSWORD: i32 = JoinFailure::WrongPassword as i32;
    pub const BANNED: i32 = JoinFailure::Banned as i32;
    pub const RATE_LIMITED: i32 = JoinFailure::RateLimited as i32;
    pub const TOO_MANY_CONNECTIONS: i32 = JoinFailure::TooManyConnections as i32;
}

/// WebSocket close codes (`core/src/limits.rs`).
pub use piano_core::limits::close;

impl Server {
    /// The Durable Objects of one class that hold data under `wrangler dev`'s state directory
    /// (`<persist>/v3/do/<script>-<Class>/<id>.sqlite`), each with the tables it has.
    ///
    /// `wrangler dev` (miniflare) opens a file for every object it starts by name and records
    /// the name in a `__miniflare_do_name` table of its own: a development artefact, so such a
    /// file with no other table holds nothing of ours and is not counted.
    pub fn durable_objects_with_data(&self, class: &str) -> Vec<(PathBuf, Vec<String>)> {
        assert_eq!(
            self.host,
            Host::Edge,
            "Durable Objects live at the edge only"
        );
        let mut files = BTreeSet::new();
        let suffix = format!("-{class}");
        visit(&self.dir.join("state"), &mut |dir| {
            let is_class = dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix));
            if !is_class {
                return;
            }
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = entry.path();
                let ours = p.extension().is_some_and(|e| e == "sqlite")
                    && p.file_stem().is_some_and(|n| n != "metadata");
                if ours {
                    files.insert(p);
                }
            }
        });
        files
            .into_iter()
            .filter_map(|p| {
                let tables = app_tables(&p);
                (!tables.is_empty()).then_some((p, tables))
            })
            .collect()
    }

    /// Rows the standalone fallback's room store (`DATA_DIR/rooms.sqlite3`) holds for `room`.
    pub fn fallback_room_rows(&self, room: &str) -> usize {
        assert_eq!(self.host, Host::Fallback, "the standalone fallback's store");
        let db = self.dir.join("state/rooms.sqlite3");
        count_rows(
            &db,
            &[
                "SELECT COUNT(*) FROM room_meta WHERE room = ?1",
                "SELECT COUNT(*) FROM chat WHERE room = ?1",
            ],
            room,
        )
    }

    /// Rows the standalone fallback's account store holds for the user id `user:<name>` (its
    /// key is the normalized username).
    pub fn fallback_account_rows(&self, user_id: &str) -> usize {
        assert_eq!(self.host, Host::Fallback, "the standalone fallback's store");
        let db = self.dir.join("state/accounts.sqlite3");
        let key = user_id.strip_prefix("user:").unwrap_or(user_id);
        count_rows(
            &db,
            &["SELECT COUNT(*) FROM accounts WHERE key = ?1"],
            &key.to_ascii_lowercase(),
        )
    }

    /// An admin's access token: `root-admin` (in `ADMIN_USERNAMES`), registered with the
    /// bootstrap secret by the first trial that asks (the others wait for it: trials that
    /// raced to register it could each find it neither free nor there yet), then logged in.
    pub async fn admin_token(&self) -> String {
        let body = serde_json::json!({"username": "root-admin", "password": "admin password"});
        let client = crate::http();
        self.admin_registered
            .get_or_init(|| async {
                let resp = client
                    .post(self.http("/api/auth/register"))
                    .header("x-admin-bootstrap", ADMIN_BOOTSTRAP_SECRET)
                    .json(&body)
                    .send()
                    .await
                    .expect("register root-admin");
                let status = resp.status().as_u16();
                let answer: serde_json::Value = resp.json().await.unwrap_or_default();
                // 409: a server restarted on its storage still has it.
                assert!(
                    status == 201 || (status == 409 && answer["error"]["code"] == "username_taken"),
                    "registering root-admin: {status} {answer}"
                );
            })
            .await;
        let resp = client
            .post(self.http("/api/auth/login"))
            .json(&body)
            .send()
            .await
            .expect("log in root-admin");
        let status = resp.status().as_u16();
        let answer: serde_json::Value = resp.json().await.unwrap_or_default();
        let roles = answer["user"]["roles"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            status == 200 && roles.iter().any(|r| r == "admin"),
            "root-admin is no admin: {status} {answer}"
        );
        answer["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }
}

/// The tables of one object's database that are not SQLite's, Cloudflare's (`_cf_*`) or
/// miniflare's (`__miniflare_*`). A file that cannot be read counts as holding data.
fn app_tables(db: &Path) -> Vec<String> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return vec!["(unreadable)".into()];
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    let names = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut q| {
            q.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        });
    match names {
        Ok(names) => names
            .into_iter()
            .filter(|n| {
                !n.starts_with("sqlite_") && !n.starts_with("_cf_") && !n.starts_with("__miniflare")
            })
            .collect(),
        Err(e) => vec![format!("(unreadable: {e})")],
    }
}

fn visit(dir: &Path, f: &mut impl FnMut(&Path)) {
    f(dir);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            visit(&p, f);
        }
    }
}

/// Sums `COUNT(*)` queries over one database, read-only (the server keeps writing it in WAL
/// mode; a reader sees what it committed). A database or table not created yet counts 0.
fn count_rows(db: &Path, queries: &[&str], key: &str) -> usize {
    if !db.exists() {
        return 0;
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    queries
        .iter()
        .map(|q| {
            conn.query_row(q, [key], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
                .unwrap_or(0)
        })
        .sum()
}
