//! Accounts shared between deployments through MongoDB: a username this deployment does not
//! hold may have been registered by another one. The hosts ask MongoDB (the edge's Data API,
//! the fallback's driver) and pass the answer here.
//!
//! - Uniqueness first: while MongoDB cannot be asked, a registration is refused (503
//!   `unavailable`), never decided locally (drift 1: the fallback used to register).
//! - After a failed lookup the host does not ask again for [`LOOKUP_BACKOFF_MS`] (one number for
//!   both hosts, drift 2), answering `unavailable` with that `Retry-After`: each ask could cost
//!   a whole timeout.
//! - An imported document counts only if its username normalizes to the key it was found
//!   under (drift 3: both hosts), so a stray or forged document cannot hand out another name.

use super::AccountData;
use super::error::ApiError;
use crate::Millis;

/// How long after a failed lookup the host answers without asking MongoDB again.
pub const LOOKUP_BACKOFF_MS: u64 = 5_000;

/// What the shared database says about a username.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // short-lived, and the account is what callers want
pub enum Lookup {
    Found(AccountData),
    Absent,
    Unavailable,
}

/// The refusal while the shared database cannot be asked.
pub fn unavailable() -> ApiError {
    ApiError::Unavailable {
        retry_after_secs: Some(LOOKUP_BACKOFF_MS.div_ceil(1000)),
    }
}

/// A failed lookup at `now`: the host skips lookups until the returned time.
pub fn skip_until(now: Millis) -> Millis {
    now + LOOKUP_BACKOFF_MS
}

/// Whether the host may ask now, given the time it stored from [`skip_until`].
pub fn may_ask(skip_until: Millis, now: Millis) -> bool {
    skip_until <= now
}

/// The account in a document found under `key` (`user:<key>`), if it is one and is that
/// user's.
pub fn imported(key: &str, doc: Option<serde_json::Value>) -> Option<AccountData> {
    let account = serde_json::from_value::<AccountData>(integral(doc?)).ok()?;
    (account.key() == key && crate::names::username(&account.username).is_ok_and(|k| k == key))
        .then_some(account)
}

/// Whole numbers stored as doubles (a document written through a JSON gateway: every number
/// is a double there) read back as integers.
fn integral(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && (0.0..9.0e15).contains(&f) => {
                Value::from(f as u64)
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integral).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, integral(v))).collect())
        }
        other => other,
    }
}

/// Registration may go on only when the name is known to be free everywhere.
pub fn may_register(lookup: &Lookup) -> Result<(), ApiError> {
    match lookup {
        Lookup::Absent => Ok(()),
        Lookup::Found(_) => Err(ApiError::UsernameTaken),
        Lookup::Unavailable => Err(unavailable()),
    }
}

/// The account to check a password against. An unknown name answers like a wrong password
/// (which usernames exist is not revealed); a name that may live on another deployment
/// answers `unavailable` rather than "wrong".
pub fn login_account(lookup: Lookup) -> Result<AccountData, ApiError> {
    match lookup {
        Lookup::Found(a) => Ok(a),
        Lookup::Absent => Err(ApiError::InvalidCredentials),
        Lookup::Unavailable => Err(unavailable()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::tests::account;

    #[test]
    fn lookups_back_off_for_one_interval() {
        let until = skip_until(1_000);
        assert_eq!(until, 1_000 + LOOKUP_BACKOFF_MS);
        for (now, ask) in [(0, true), (1_000, false), (until - 1, false), (until, true)] {
            assert_eq!(may_ask(if now == 0 { 0 } else { until }, now), ask, "{now}");
        }
        assert_eq!(
            unavailable().headers(),
            vec![("retry-after", "5".to_owned())]
        );
    }

    /// The document as a JSON-only gateway stores it: every number a double.
    fn doubles(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
            Value::Array(a) => Value::Array(a.into_iter().map(doubles).collect()),
            Value::Object(m) => {
                Value::Object(m.into_iter().map(|(k, v)| (k, doubles(v))).collect())
            }
            other => other,
        }
    }

    #[test]
    fn only_a_document_of_the_user_its_key_names_is_imported() {
        let doc = |name: &str| Some(account(name).document());
        let cases = [
            ("ada", doc("Ada"), true),
            ("ada", doc("ada"), true),
            ("ada", doc("bob"), false),
            ("ada", doc("ada2"), false),
            ("ada", None, false),
            ("ada", Some(serde_json::json!({"username": "ada"})), false),
            ("ada", Some(serde_json::json!("ada")), false),
            ("ada", doc("Ada").map(doubles), true),
        ];
        for (key, doc, ok) in cases {
            assert_eq!(imported(key, doc.clone()).is_some(), ok, "{key} {doc:?}");
        }
    }

    #[test]
    fn registration_needs_a_known_free_name_and_login_a_known_account() {
        let cases = [
            (Lookup::Absent, Ok(()), Err("invalid_credentials")),
            (Lookup::Found(account("ada")), Err("username_taken"), Ok(())),
            (Lookup::Unavailable, Err("unavailable"), Err("unavailable")),
        ];
        for (lookup, register, login) in cases {
            assert_eq!(may_register(&lookup).map_err(|e| e.code()), register);
            assert_eq!(login_account(lookup).map(drop).map_err(|e| e.code()), login);
        }
    }
}
