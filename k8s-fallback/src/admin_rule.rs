//! `ADMIN_USERNAMES` at registration (SPEC "Accounts"): a listed name no longer makes whoever
//! registers it first an admin. Registering one needs `ADMIN_BOOTSTRAP_SECRET`, presented as
//! the `x-admin-bootstrap` header; without it (or with no secret configured) the name is
//! refused, 403 `reserved_username`. An existing account with a listed name still becomes
//! admin at login.
//!
//! TODO(lead): the SPEC puts this decision in `piano_core::account` (edge helper) so both hosts
//! call one function; this is the fallback's copy until it lands.

use crate::http::json_error;
use axum::response::Response;

/// Whether a registration of `key` (normalised) may go ahead, and as an admin.
#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
pub fn registration(
    admins: &[String],
    secret: Option<&str>,
    key: &str,
    presented: Option<&str>,
) -> Result<bool, Response> {
    if !admins.iter().any(|a| a == key) {
        return Ok(false);
    }
    match (secret, presented) {
        (Some(s), Some(p)) if crate::auth::same_secret(s.as_bytes(), p.as_bytes()) => Ok(true),
        _ => Err(json_error(
            403,
            "reserved_username",
            "this username is reserved for the operator",
        )),
    }
}
