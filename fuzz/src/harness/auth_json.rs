//! The JSON bodies of the auth and account endpoints, parsed as both hosts parse them, then run
//! through the core checks they feed.
//!
//! The request structs are local to each host's handler (`src/auth.rs`, `src/accounts.rs`,
//! `k8s-fallback/src/auth.rs`, `k8s-fallback/src/accounts.rs`), so their serde shapes are
//! replicated here field for field; the checks are the core's own functions. Byte 0 picks the
//! endpoint; the rest is the body. Bodies over the 4 KiB cap are refused before parsing, as the
//! hosts do.

use piano_core::account::{ROLES, check_registration};
use piano_core::names;
use piano_core::room::text;
use serde::Deserialize;

/// The hosts' cap on auth request bodies.
pub const MAX_BODY_BYTES: usize = 4096;

#[derive(Deserialize)]
struct Guest {
    name: String,
}

#[derive(Deserialize)]
struct Register {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
}

// The password goes to the account unchecked; it is parsed here as the hosts parse it.
#[allow(dead_code)]
#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct Refresh {
    refresh_token: String,
}

#[derive(Deserialize, Default)]
struct Logout {
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    color: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct Roles {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if body.len() > MAX_BODY_BYTES {
        return;
    }
    match which % 8 {
        0 => {
            if let Ok(g) = serde_json::from_slice::<Guest>(body) {
                display_name(&g.name);
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<Register>(body)
                && let Ok(key) = check_registration(&r.username, &r.password, r.email.as_deref())
            {
                assert_eq!(names::username(&r.username).as_deref(), Ok(key.as_str()));
                username(&key);
                let n = r.password.chars().count();
                assert!((8..=128).contains(&n), "password of {n} characters passed");
            }
        }
        2 => {
            if let Ok(l) = serde_json::from_slice::<Login>(body)
                && let Ok(key) = names::username(&l.username)
            {
                username(&key);
            }
        }
        3 => {
            if let Ok(r) = serde_json::from_slice::<Refresh>(body) {
                super::token::refresh_token(&r.refresh_token);
            }
        }
        4 => {
            // Both hosts treat an unreadable logout body as an empty one.
            let l: Logout = serde_json::from_slice(body).unwrap_or_default();
            if let Some(t) = l.refresh_token {
                super::token::refresh_token(&t);
            }
        }
        5 => {
            if let Ok(p) = serde_json::from_slice::<Profile>(body) {
                if let Some(n) = p.name {
                    display_name(&n);
                }
                if let Some(c) = p.color
                    && let Ok(c) = text::color(&c)
                {
                    assert_eq!(text::color(&c).as_deref(), Ok(c.as_str()));
                }
                if let Some(s) = p.status {
                    let _ = text::optional_line("status", &s, text::MAX_STATUS_CHARS);
                }
            }
        }
        6 => {
            if let Ok(r) = serde_json::from_slice::<Roles>(body) {
                let _ = r
                    .add
                    .iter()
                    .chain(&r.remove)
                    .all(|x| ROLES.contains(&x.as_str()));
            }
        }
        _ => {
            // Records hosts read back from storage and from each other (MongoDB, SQLite,
            // the worker-to-room identity header): they must parse without panicking too.
            let _ = serde_json::from_slice::<piano_core::account::AccountData>(body);
            let _ = serde_json::from_slice::<piano_core::room::ConnRecord>(body);
            let _ = serde_json::from_slice::<piano_core::room::stored::Stored>(body);
            let _ = serde_json::from_slice::<piano_core::lobby::Report>(body);
        }
    }
}

/// A display name that passed must be trimmed, short, clean, and pass again unchanged.
pub fn display_name(raw: &str) {
    if let Ok(n) = names::display_name(raw) {
        assert_eq!(n.trim(), n);
        assert!(!n.is_empty());
        assert!(n.chars().count() <= names::MAX_DISPLAY_NAME_CHARS);
        assert!(!n.chars().any(names::is_forbidden_char));
        assert_eq!(names::display_name(&n).as_deref(), Ok(n.as_str()));
    }
}

/// A normalized username: 3-24 of `a-z0-9_-`, its own normal form.
pub fn username(key: &str) {
    assert!((3..=24).contains(&key.len()), "username {key:?}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'),
        "username {key:?}"
    );
    assert_eq!(names::username(key).as_deref(), Ok(key));
}
