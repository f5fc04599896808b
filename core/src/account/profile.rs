//! Changes to an account after registration: the member's own profile (`PUT /api/users/me`)
//! and an admin's role changes (`POST /api/admin/users/{id}/roles`). Checked whole before
//! anything is stored, applied to the record the host read (inside its transaction or
//! compare-and-set).

use super::error::ApiError;
use super::{AccountData, ROLES};
use crate::room::text;
use serde::Deserialize;

/// `{"name"?, "color"?, "status"?}` as sent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProfileRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

/// A checked profile change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChange {
    name: Option<String>,
    color: Option<String>,
    status: Option<String>,
}

impl ProfileChange {
    pub fn check(r: ProfileRequest) -> Result<ProfileChange, ApiError> {
        let name = r
            .name
            .map(|n| crate::names::display_name(&n))
            .transpose()
            .map_err(|e| ApiError::InvalidName(e.to_string()))?;
        let color = r
            .color
            .map(|c| text::color(&c))
            .transpose()
            .map_err(ApiError::InvalidColor)?;
        let status = r
            .status
            .map(|s| text::optional_line("status", &s, text::MAX_STATUS_CHARS))
            .transpose()
            .map_err(ApiError::InvalidStatus)?;
        Ok(ProfileChange {
            name,
            color,
            status,
        })
    }

    pub fn apply(&self, a: &mut AccountData) {
        if let Some(n) = &self.name {
            a.name = n.clone();
        }
        if let Some(c) = &self.color {
            a.color = Some(c.clone());
        }
        if let Some(s) = &self.status {
            a.status = s.clone();
        }
    }
}

/// `{"add": [...], "remove": [...]}`, every role one of [`ROLES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RoleChange {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl RoleChange {
    pub fn check(self) -> Result<RoleChange, ApiError> {
        match self
            .add
            .iter()
            .chain(&self.remove)
            .find(|x| !ROLES.contains(&x.as_str()))
        {
            Some(bad) => Err(ApiError::InvalidRole(bad.clone())),
            None => Ok(self),
        }
    }

    /// Applies the change; `true` if the roles changed (then the member's open sockets close
    /// with 4002 and reconnect with the new roles).
    pub fn apply(&self, a: &mut AccountData) -> bool {
        let before = a.roles.clone();
        a.roles.retain(|x| !self.remove.contains(x));
        for role in &self.add {
            if !a.roles.contains(role) {
                a.roles.push(role.clone());
            }
        }
        a.roles != before
    }
}

/// Only admins change roles.
pub fn may_change_roles(roles: &[String]) -> Result<(), ApiError> {
    if roles.iter().any(|r| r == "admin") {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The account key of a `user:<name>` path segment (percent-encoded), or 404.
pub fn user_key(raw_id: &str) -> Result<String, ApiError> {
    crate::names::percent_decode(raw_id)
        .and_then(|id| {
            id.strip_prefix("user:")
                .and_then(|u| crate::names::username(u).ok())
        })
        .ok_or(ApiError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::tests::account;

    fn req(name: Option<&str>, color: Option<&str>, status: Option<&str>) -> ProfileRequest {
        ProfileRequest {
            name: name.map(Into::into),
            color: color.map(Into::into),
            status: status.map(Into::into),
        }
    }

    #[test]
    fn profile_changes_are_checked_whole_then_applied() {
        let cases = [
            (req(None, None, None), Ok(("ada", None, ""))),
            (req(Some(" Ada L "), None, None), Ok(("Ada L", None, ""))),
            (
                req(None, Some("#a0B0c0"), Some("hi")),
                Ok(("ada", Some("#a0b0c0"), "hi")),
            ),
            (req(Some(""), None, None), Err("invalid_name")),
            (req(None, Some("red"), None), Err("invalid_color")),
            (
                req(Some("Ok"), None, Some(&"x".repeat(200))),
                Err("invalid_status"),
            ),
        ];
        for (r, want) in cases {
            let got = ProfileChange::check(r.clone()).map(|c| {
                let mut a = account("ada");
                c.apply(&mut a);
                (a.name, a.color, a.status)
            });
            let got = got
                .as_ref()
                .map(|(n, c, s)| (n.as_str(), c.as_deref(), s.as_str()))
                .map_err(|e| e.code());
            assert_eq!(got, want, "{r:?}");
        }
    }

    #[test]
    fn role_changes_name_known_roles_and_report_a_change() {
        let change = |add: &[&str], remove: &[&str]| RoleChange {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        };
        type Want = Result<(&'static [&'static str], bool), &'static str>;
        let cases: [(RoleChange, Want); 5] = [
            (change(&["pro"], &[]), Ok((&["member", "pro"], true))),
            (change(&["member"], &[]), Ok((&["member"], false))),
            (change(&[], &["member"]), Ok((&[], true))),
            (change(&["king"], &[]), Err("invalid_role")),
            (change(&[], &["root"]), Err("invalid_role")),
        ];
        for (c, want) in cases {
            let got = c.clone().check().map(|c| {
                let mut a = account("ada");
                let changed = c.apply(&mut a);
                (a.roles, changed)
            });
            match (got, want) {
                (Ok((roles, changed)), Ok((want_roles, want_changed))) => {
                    assert_eq!(roles, want_roles, "{c:?}");
                    assert_eq!(changed, want_changed, "{c:?}");
                }
                (Err(e), Err(code)) => assert_eq!(e.code(), code),
                (got, want) => panic!("{c:?}: {got:?} vs {want:?}"),
            }
        }
        assert!(may_change_roles(&["member".into(), "admin".into()]).is_ok());
        assert_eq!(
            may_change_roles(&["moderator".into()]).map_err(|e| e.code()),
            Err("forbidden")
        );
    }

    #[test]
    fn user_ids_in_paths_name_an_account_key() {
        for (raw, want) in [
            ("user:ada", Ok("ada")),
            ("user%3AAda", Ok("ada")),
            ("guest:abc", Err("not_found")),
            ("user:a", Err("not_found")),
            ("ada", Err("not_found")),
            ("%zz", Err("not_found")),
        ] {
            assert_eq!(
                user_key(raw).as_deref().map_err(|e| e.code()),
                want,
                "{raw}"
            );
        }
    }
}
