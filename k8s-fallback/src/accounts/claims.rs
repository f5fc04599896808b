//! Providers' identities in the fallback's stores (storage only: the rules are
//! `piano_core::oauth::link`). One identity belongs to one account through its **claim**, made
//! first, in one atomic step of the store:
//!
//! - **SQLite**: `identity_claims` (primary key: the identity key): set-if-absent is
//!   `INSERT OR IGNORE` then `SELECT`; replace is `UPDATE … WHERE` the old claim's every column;
//!   release is `DELETE … WHERE account = ?`.
//! - **Redis**: `piano:identity:{key}` (the claim's JSON): `SET NX` and `GET` in one
//!   `MULTI`; replace and release are Lua scripts (compare, then write), as account updates are.
//!
//! [`Accounts::settle`] runs the core's [`Linker`] against them; accounts are created through
//! the registration's path (the name free here and in MongoDB, mirrored there) and changed
//! through the store's compare-and-set update.

use super::store::{Accounts, Backend, CAS, Failure};
use super::unavailable;
use piano_core::account::lookup;
use piano_core::account::{AccountData, ApiError};
use piano_core::oauth::LinkedIdentity;
use piano_core::oauth::OAuthError;
use piano_core::oauth::link::{self, Added, Claim, Linker, Want};
use rusqlite::OptionalExtension;
use std::sync::{Arc, Mutex};

/// Steps a linker may take before the sign-in is given up (it needs about ten at most).
const MAX_STEPS: usize = 32;

pub(super) fn claim_key(identity: &str) -> String {
    format!("piano:identity:{identity}")
}

/// KEYS: the claim. ARGV: the account. Deletes the claim if it names that account.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['account'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0";

fn claim_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claim> {
    Ok(Claim {
        account: r.get(0)?,
        at: r.get::<_, i64>(1)?.max(0) as u64,
        by: r.get(2)?,
    })
}

fn claim_json(c: &Claim) -> Result<String, Failure> {
    serde_json::to_string(c).map_err(|e| e.to_string())
}

impl Accounts {
    /// Sets `identity`'s claim to `claim` unless it has one; answers the claim it has now.
    pub async fn claim_identity(&self, identity: &str, claim: &Claim) -> Result<Claim, Failure> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let (identity, c) = (identity.to_owned(), claim.clone());
                self.sql(move |conn| {
                    conn.execute(
                        "INSERT OR IGNORE INTO identity_claims (identity, account, at, by) VALUES (?1, ?2, ?3, ?4)",
                        (&identity, &c.account, c.at as i64, &c.by),
                    )?;
                    conn.query_row(
                        "SELECT account, at, by FROM identity_claims WHERE identity = ?1",
                        [&identity],
                        claim_row,
                    )
                })
                .await
            }
            Backend::Redis(conn) => {
                let key = claim_key(identity);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("SET")
                    .arg(&key)
                    .arg(claim_json(claim)?)
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(&key);
                let (held,): (Option<String>,) = conn
                    .pipe(&pipe)
                    .await
                    .map_err(|e| Self::redis_failed("claiming an identity", e))?;
                let held = held.ok_or("the claim vanished")?;
                serde_json::from_str(&held).map_err(|e| format!("stored claim is unreadable: {e}"))
            }
        }
    }

    /// Replaces `identity`'s claim by `to` only if it is still exactly `from`.
    pub async fn replace_claim(
        &self,
        identity: &str,
        from: &Claim,
        to: &Claim,
    ) -> Result<bool, Failure> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let (identity, from, to) = (identity.to_owned(), from.clone(), to.clone());
                self.sql(move |conn| {
                    conn.execute(
                        "UPDATE identity_claims SET account = ?5, at = ?6, by = ?7
                         WHERE identity = ?1 AND account = ?2 AND at = ?3 AND by = ?4",
                        (
                            &identity,
                            &from.account,
                            from.at as i64,
                            &from.by,
                            &to.account,
                            to.at as i64,
                            &to.by,
                        ),
                    )
                    .map(|n| n == 1)
                })
                .await
            }
            Backend::Redis(conn) => {
                // Claims are only ever written by `claim_json`: equal claims are equal text.
                let script = redis::Script::new(CAS);
                let mut call = script.key(claim_key(identity));
                call.arg(claim_json(from)?).arg(claim_json(to)?);
                let swapped: i64 = conn
                    .script(&call)
                    .await
                    .map_err(|e| Self::redis_failed("replacing an identity claim", e))?;
                Ok(swapped == 1)
            }
        }
    }

    /// Deletes `identity`'s claim if it names `account`; `true` if it did.
    pub async fn release_claim(&self, identity: &str, account: &str) -> Result<bool, Failure> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let (identity, account) = (identity.to_owned(), account.to_owned());
                self.sql(move |conn| {
                    conn.execute(
                        "DELETE FROM identity_claims WHERE identity = ?1 AND account = ?2",
                        (&identity, &account),
                    )
                    .map(|n| n == 1)
                })
                .await
            }
            Backend::Redis(conn) => {
                let script = redis::Script::new(RELEASE);
                let mut call = script.key(claim_key(identity));
                call.arg(account);
                let n: i64 = conn
                    .script(&call)
                    .await
                    .map_err(|e| Self::redis_failed("releasing an identity claim", e))?;
                Ok(n == 1)
            }
        }
    }

    /// The claim `identity` has, if any.
    pub async fn identity_claim(&self, identity: &str) -> Result<Option<Claim>, Failure> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let identity = identity.to_owned();
                self.sql(move |conn| {
                    conn.query_row(
                        "SELECT account, at, by FROM identity_claims WHERE identity = ?1",
                        [&identity],
                        claim_row,
                    )
                    .optional()
                })
                .await
            }
            Backend::Redis(conn) => {
                let mut get = redis::cmd("GET");
                get.arg(claim_key(identity));
                let raw: Option<String> = conn
                    .cmd(&get)
                    .await
                    .map_err(|e| Self::redis_failed("reading an identity claim", e))?;
                raw.map(|r| serde_json::from_str(&r).map_err(|e| e.to_string()))
                    .transpose()
            }
        }
    }

    /// Runs a sign-in or link to its end: the account's key and whether it is new.
    pub async fn settle(&self, mut linker: Linker) -> Result<(String, bool), ApiError> {
        let failed = |e: Failure| unavailable(&e);
        for _ in 0..MAX_STEPS {
            match linker.want() {
                Want::Claim { identity, claim } => {
                    let held = self.claim_identity(&identity, &claim).await;
                    linker.claimed(held.map_err(failed)?);
                }
                Want::Load { key } => {
                    let account = self.load(&key).await.map_err(failed)?;
                    linker.loaded(account.as_ref());
                }
                Want::Replace { identity, from, to } => {
                    let done = self.replace_claim(&identity, &from, &to).await;
                    linker.replaced(done.map_err(failed)?);
                }
                Want::Create { account } => {
                    let created = self.create_external(&account).await?;
                    linker.created(created);
                }
                Want::Add { key, identity } => {
                    let outcome = self.add_identity(&key, &identity).await?;
                    linker.added(outcome);
                }
                Want::Release { identity, account } => {
                    self.release_claim(&identity, &account)
                        .await
                        .map_err(failed)?;
                    linker.released();
                }
                Want::Done { key, created } => return Ok((key, created)),
                Want::Failed(e) => return Err(e),
            }
        }
        Err(unavailable("the sign-in did not settle"))
    }

    /// A first sign-in's account, created as a registration would be: only if the name is free
    /// here and in MongoDB; mirrored there.
    async fn create_external(&self, a: &AccountData) -> Result<bool, ApiError> {
        let key = a.key();
        let found = self.find(&key).await.map_err(|e| unavailable(&e))?;
        match lookup::may_register(&found) {
            Ok(()) => {}
            Err(ApiError::UsernameTaken) => return Ok(false),
            Err(e) => return Err(e),
        }
        let created = self.create(&key, a).await.map_err(|e| unavailable(&e))?;
        if created {
            self.mirror(a, true);
            tracing::info!(user = key, "member registered through a provider");
        }
        Ok(created)
    }

    /// A link: the identity added to the member's account (compare-and-set).
    async fn add_identity(&self, key: &str, identity: &LinkedIdentity) -> Result<Added, ApiError> {
        // An account registered elsewhere is imported first (as at login).
        self.find(key).await.map_err(|e| unavailable(&e))?;
        let outcome = Arc::new(Mutex::new(Added::NoAccount));
        let (seen, identity) = (outcome.clone(), identity.clone());
        let updated = self
            .update(key, move |a| {
                // The last attempt of the compare-and-set loop is the one stored.
                *crate::lock(&seen) = match link::add_identity(a, &identity) {
                    Ok(_) => Added::Done,
                    Err(e) => Added::Refused(e),
                };
            })
            .await
            .map_err(|e| unavailable(&e))?;
        if updated.is_none() {
            return Ok(Added::NoAccount);
        }
        Ok(crate::lock(&outcome).clone())
    }

    /// An unlink: the account's identity of `provider` removed (unless it is its last way in),
    /// then its claim released.
    pub async fn unlink(&self, key: &str, provider: &str) -> Result<(), ApiError> {
        self.find(key).await.map_err(|e| unavailable(&e))?;
        let outcome = Arc::new(Mutex::new(Err(OAuthError::NotLinked)));
        let (seen, provider) = (outcome.clone(), provider.to_owned());
        let updated = self
            .update(key, move |a| {
                *crate::lock(&seen) = link::remove_identity(a, &provider);
            })
            .await
            .map_err(|e| unavailable(&e))?;
        if updated.is_none() {
            return Err(ApiError::NotFound);
        }
        let removed = crate::lock(&outcome).clone().map_err(ApiError::OAuth)?;
        let identity = link::identity_key(&removed.provider, &removed.subject);
        self.release_claim(&identity, key)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}
