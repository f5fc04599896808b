//! Member accounts as every host stores them: the record (also the shared MongoDB `accounts`
//! document, so the edge and the fallback read what the other wrote), the roles, the session
//! lifetime, and the checks a registration must pass. Storage and sessions are the hosts'.

use crate::password::PasswordHash;
use serde::{Deserialize, Serialize};

/// How long a session (its refresh token) lives without being refreshed.
pub const SESSION_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Every role an admin may grant or remove.
pub const ROLES: [&str; 6] = ["guest", "member", "pro", "moderator", "admin", "bot"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountData {
    pub username: String,
    pub tag: String,
    #[serde(default)]
    pub email: Option<String>,
    pub password: PasswordHash,
    pub roles: Vec<String>,
    pub name: String,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub status: String,
    pub created_at: u64,
}

impl AccountData {
    pub fn user_id(&self) -> String {
        format!("user:{}", self.username.to_ascii_lowercase())
    }

    pub fn usertag(&self) -> String {
        format!("{}#{}", self.username, self.tag)
    }

    /// What anyone may see.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.user_id(),
            "username": self.username,
            "usertag": self.usertag(),
            "name": self.name,
            "color": self.color,
            "status": self.status,
            "roles": self.roles,
            "created_at": self.created_at,
        })
    }

    /// The shared document: the record plus its usertag.
    pub fn document(&self) -> serde_json::Value {
        let mut doc = serde_json::to_value(self).unwrap_or_default();
        doc["usertag"] = self.usertag().into();
        doc
    }
}

/// The checks of `POST /api/auth/register`: the normalized username, or the error code and
/// message to answer 400 with.
pub fn check_registration(
    username: &str,
    password: &str,
    email: Option<&str>,
) -> Result<String, (&'static str, String)> {
    let key = crate::names::username(username).map_err(|e| ("invalid_username", e))?;
    if !(8..=128).contains(&password.chars().count()) {
        return Err((
            "invalid_password",
            "password must be 8-128 characters".into(),
        ));
    }
    if email
        .is_some_and(|e| e.len() > 254 || !e.contains('@') || e.chars().any(char::is_whitespace))
    {
        return Err(("invalid_email", "email is not an address".into()));
    }
    Ok(key)
}

/// `ADMIN_USERNAMES` at registration: a listed name is reserved for whoever presents the
/// deployment's `ADMIN_BOOTSTRAP_SECRET` (request header `x-admin-bootstrap`), so it no longer
/// goes to whoever registers it first. `Ok(true)`: register as admin; `Ok(false)`: an ordinary
/// member; `Err`: refuse with 403 and this code. Without a configured secret a listed name
/// cannot be registered at all (only accounts that already exist become admins, at login).
pub fn admin_on_register(
    key: &str,
    admins: &[String],
    bootstrap_secret: Option<&str>,
    presented: Option<&str>,
) -> Result<bool, (&'static str, &'static str)> {
    if !admins.iter().any(|a| a == key) {
        return Ok(false);
    }
    match (bootstrap_secret, presented) {
        (Some(secret), Some(given)) if !secret.is_empty() && ct_eq(secret, given) => Ok(true),
        _ => Err((
            "reserved_username",
            "this username is reserved for the deployment's administrators",
        )),
    }
}

/// `ADMIN_USERNAMES` at login: an existing account with a listed name is an admin.
pub fn admin_on_login(key: &str, admins: &[String]) -> bool {
    admins.iter().any(|a| a == key)
}

/// Compares secrets without an early exit on the first differing byte.
fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_names_need_the_bootstrap_secret() {
        let admins = vec!["root".to_owned()];
        assert_eq!(admin_on_register("ada", &admins, None, None), Ok(false));
        assert_eq!(
            admin_on_register("ada", &admins, Some("s3"), Some("x")),
            Ok(false)
        );
        assert_eq!(
            admin_on_register("root", &admins, Some("s3cret"), Some("s3cret")),
            Ok(true)
        );
        for (secret, given) in [
            (None, None),
            (None, Some("")),
            (Some("s3cret"), None),
            (Some("s3cret"), Some("s3cre")),
            (Some("s3cret"), Some("S3CRET")),
            (Some(""), Some("")),
        ] {
            assert_eq!(
                admin_on_register("root", &admins, secret, given).map_err(|e| e.0),
                Err("reserved_username"),
                "{secret:?} {given:?}"
            );
        }
        assert!(admin_on_login("root", &admins));
        assert!(!admin_on_login("ada", &admins));
    }

    #[test]
    fn registrations_are_checked_in_order() {
        assert_eq!(
            check_registration(" Ada_1 ", "correct horse", None),
            Ok("ada_1".into())
        );
        assert_eq!(
            check_registration("a", "correct horse", None)
                .unwrap_err()
                .0,
            "invalid_username"
        );
        assert_eq!(
            check_registration("ada", "short", None).unwrap_err().0,
            "invalid_password"
        );
        assert_eq!(
            check_registration("ada", "correct horse", Some("no at sign"))
                .unwrap_err()
                .0,
            "invalid_email"
        );
        assert!(check_registration("ada", "correct horse", Some("a@b.example")).is_ok());
    }
}
