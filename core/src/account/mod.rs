//! Member accounts, sessions and token checks, decided once for every host (sans I/O: the
//! hosts pass `now`, random values and what their storage read, and store what comes back).
//!
//! - this file: the record (also the shared MongoDB `accounts` document, so the edge and the
//!   fallback read what the other wrote), the roles, and registration;
//! - [`lookup`]: accounts shared through MongoDB (uniqueness, back-off, imports);
//! - [`session`]: the session life cycle (open, check, refresh with rotation and reuse
//!   detection, logout, limit, expiry);
//! - [`tokens`]: the refresh token's shape, access and guest claims, sign-in bodies;
//! - [`profile`]: profile and role changes;
//! - [`rate`]: the auth rate limit;
//! - [`error`]: [`ApiError`], the one error type each host turns into HTTP in one place;
//! - [`external`]: identities linked from other services and [`external::OAuthError`].

use crate::password::PasswordHash;
use serde::{Deserialize, Serialize};

pub mod error;
pub mod external;
pub mod lookup;
pub mod profile;
pub mod rate;
pub mod session;
pub mod tokens;

pub use error::{ApiError, SessionRefusal};
pub use session::SESSION_TTL_MS;

/// Every role an admin may grant or remove.
pub const ROLES: [&str; 6] = ["guest", "member", "pro", "moderator", "admin", "bot"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountData {
    pub username: String,
    pub tag: String,
    #[serde(default)]
    pub email: Option<String>,
    /// `None`: an account made by a sign-in through a provider (it signs in only that way,
    /// until it sets a password).
    #[serde(default)]
    pub password: Option<PasswordHash>,
    pub roles: Vec<String>,
    pub name: String,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub status: String,
    pub created_at: u64,
    /// Providers' identities linked to it (signing in through them: the `oauth` module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<external::LinkedIdentity>,
    /// The picture a provider gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
}

impl AccountData {
    /// A new member (`username` as typed, trimmed; `tag` and the hash from the host's
    /// randomness).
    pub fn new(
        username: &str,
        email: Option<String>,
        password: PasswordHash,
        admin: bool,
        tag: [u8; 3],
        now: crate::Millis,
    ) -> AccountData {
        let mut roles = vec!["member".to_owned()];
        if admin {
            roles.push("admin".into());
        }
        AccountData {
            username: username.trim().to_owned(),
            tag: crate::hex::encode(&tag),
            email,
            password: Some(password),
            roles,
            name: username.trim().to_owned(),
            color: None,
            status: String::new(),
            created_at: now,
            identities: Vec::new(),
            avatar: None,
        }
    }

    /// A password login's check: an account without a password has none to match.
    pub fn check_password(&self, password: &str) -> bool {
        self.password.as_ref().is_some_and(|h| h.verify(password))
    }

    /// The normalized username: the account's key in every store.
    pub fn key(&self) -> String {
        self.username.to_ascii_lowercase()
    }

    pub fn user_id(&self) -> String {
        format!("user:{}", self.key())
    }

    /// `ADMIN_USERNAMES` at login: a listed name gains `admin`; `true` if that changed it.
    pub fn grant_admin(&mut self) -> bool {
        if self.roles.iter().any(|r| r == "admin") {
            return false;
        }
        self.roles.push("admin".into());
        true
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
            "avatar": self.avatar,
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

/// The checks of `POST /api/auth/register`: the normalized username.
pub fn check_registration(
    username: &str,
    password: &str,
    email: Option<&str>,
) -> Result<String, ApiError> {
    let key = crate::names::username(username).map_err(ApiError::InvalidUsername)?;
    if !(8..=128).contains(&password.chars().count()) {
        return Err(ApiError::InvalidPassword);
    }
    if email
        .is_some_and(|e| e.len() > 254 || !e.contains('@') || e.chars().any(char::is_whitespace))
    {
        return Err(ApiError::InvalidEmail);
    }
    Ok(key)
}

/// `ADMIN_USERNAMES` at registration: a listed name is reserved for whoever presents the
/// deployment's `ADMIN_BOOTSTRAP_SECRET` (request header `x-admin-bootstrap`), so it no longer
/// goes to whoever registers it first. `Ok(true)`: register as admin; `Ok(false)`: an ordinary
/// member; `Err`: refuse (403). Without a configured secret a listed name
/// cannot be registered at all (only accounts that already exist become admins, at login).
pub fn admin_on_register(
    key: &str,
    admins: &[String],
    bootstrap_secret: Option<&str>,
    presented: Option<&str>,
) -> Result<bool, ApiError> {
    if !admins.iter().any(|a| a == key) {
        return Ok(false);
    }
    match (bootstrap_secret, presented) {
        (Some(secret), Some(given)) if !secret.is_empty() && ct_eq(secret, given) => Ok(true),
        _ => Err(ApiError::ReservedUsername),
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
pub(crate) mod tests {
    use super::*;

    /// A member for the tests (a cheap hash: one iteration).
    pub(crate) fn account(username: &str) -> AccountData {
        AccountData::new(
            username,
            None,
            PasswordHash::with_iterations("correct horse", vec![1; 16], 1),
            false,
            [0xab, 0xcd, 0xef],
            7,
        )
    }

    #[test]
    fn a_new_account_is_a_member_keyed_by_its_normalized_name() {
        let a = account(" Ada ");
        assert_eq!((a.username.as_str(), a.name.as_str()), ("Ada", "Ada"));
        assert_eq!(
            (a.key(), a.user_id(), a.usertag()),
            ("ada".into(), "user:ada".into(), "Ada#abcdef".into())
        );
        assert_eq!(a.roles, vec!["member".to_owned()]);
        assert_eq!(a.document()["usertag"], "Ada#abcdef");
        assert_eq!(a.public()["id"], "user:ada");
        assert!(
            a.public().get("password").is_none(),
            "the hash is never public"
        );
        let mut b = a.clone();
        assert!(b.grant_admin());
        assert!(!b.grant_admin(), "granted once");
        assert_eq!(b.roles, vec!["member".to_owned(), "admin".to_owned()]);
        let admin = AccountData::new("root", None, a.password.clone().unwrap(), true, [0; 3], 0);
        assert_eq!(admin.roles, vec!["member".to_owned(), "admin".to_owned()]);
    }

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
                admin_on_register("root", &admins, secret, given).map_err(|e| e.code()),
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
                .code(),
            "invalid_username"
        );
        assert_eq!(
            check_registration("ada", "short", None).unwrap_err().code(),
            "invalid_password"
        );
        assert_eq!(
            check_registration("ada", "correct horse", Some("no at sign"))
                .unwrap_err()
                .code(),
            "invalid_email"
        );
        assert!(check_registration("ada", "correct horse", Some("a@b.example")).is_ok());
    }
}
