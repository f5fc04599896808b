//! The Account object's routes for signing in through a provider (`piano_core::oauth::link`):
//! the worker drives the core's `Linker` and these carry out its steps on the account, each
//! with no `await` between its read and its write (one atomic step of the object):
//!
//! - `POST /create-external {"account", "max_sessions"}`: create the account only if the
//!   username is free (here and, with MongoDB, in the shared database, as registration does);
//!   `{"created"}`;
//! - `GET /data`: the account as the linker reads it (without its password hash), or 404;
//! - `POST /add-identity {"identity"}`: `{"outcome": "done" | "no_account"}` or the refusal;
//! - `POST /unlink {"provider"}`: removes the identity, answers it (`{"identity"}`);
//! - `GET /identities`: `GET /api/auth/identities`'s body;
//! - `POST /session {"max_sessions", "admin"}`: a session for a member who signed in through a
//!   provider, opened exactly as a password login opens one.

use super::{Account, AccountData, Answer, ApiError};
use piano_core::account::lookup::{self, Lookup};
use piano_core::oauth::LinkedIdentity;
use piano_core::oauth::link;
use serde::Deserialize;
use worker::*;

#[derive(Deserialize)]
pub(super) struct CreateReq {
    account: Box<AccountData>,
}

#[derive(Deserialize)]
pub(super) struct AddReq {
    identity: LinkedIdentity,
}

#[derive(Deserialize)]
pub(super) struct UnlinkReq {
    provider: String,
}

#[derive(Deserialize)]
pub(super) struct SessionReq {
    #[serde(default)]
    max_sessions: u32,
    #[serde(default)]
    admin: bool,
}

impl Account {
    /// Routes of this module, `None` for another path.
    pub(super) async fn external_route(
        &self,
        req: &mut Request,
        now: u64,
    ) -> Result<Option<Answer>> {
        Ok(Some(match (req.method(), req.path().as_str()) {
            (Method::Post, "/create-external") => self.create_external(req.json().await?).await?,
            (Method::Get, "/data") => match self.load()? {
                Some(mut a) => {
                    a.password = None;
                    Ok(Response::from_json(&serde_json::json!({ "account": a }))?)
                }
                None => Err(ApiError::NotFound),
            },
            (Method::Post, "/add-identity") => self.add_identity(req.json().await?)?,
            (Method::Post, "/unlink") => self.unlink(req.json().await?)?,
            (Method::Get, "/identities") => match self.load()? {
                Some(a) => Ok(Response::from_json(&link::identities_body(&a))?),
                None => Err(ApiError::NotAMember),
            },
            (Method::Post, "/session") => self.external_session(req.json().await?, now)?,
            _ => return Ok(None),
        }))
    }

    async fn create_external(&self, r: CreateReq) -> Result<Answer> {
        let account = *r.account;
        let key = account.username.clone();
        let created = |c: bool| Response::from_json(&serde_json::json!({ "created": c }));
        // The object's name is the username: the worker asks the right object, and a name
        // that is no username never becomes an account.
        if piano_core::names::username(&key).ok().as_deref() != Some(key.as_str()) {
            return Ok(Err(ApiError::NotFound));
        }
        if self.load()?.is_some() {
            return Ok(Ok(created(false)?));
        }
        match lookup::may_register(&self.import(&key).await?) {
            Ok(()) => {}
            Err(ApiError::UsernameTaken) => return Ok(Ok(created(false)?)),
            // Unavailable: creating now could take a name another deployment gave out.
            Err(e) => return Ok(Err(e)),
        }
        // From here to the save nothing awaits, so this check holds.
        if self.load()?.is_some() {
            return Ok(Ok(created(false)?));
        }
        self.state.storage().sql().exec(super::SCHEMA, None)?;
        self.save(&account, true)?;
        Ok(Ok(created(true)?))
    }

    fn add_identity(&self, r: AddReq) -> Result<Answer> {
        let outcome = |o: &str| Response::from_json(&serde_json::json!({ "outcome": o }));
        let Some(mut a) = self.load()? else {
            return Ok(Ok(outcome("no_account")?));
        };
        match link::add_identity(&mut a, &r.identity) {
            Ok(true) => self.save(&a, false)?,
            Ok(false) => {}
            Err(e) => return Ok(Err(ApiError::OAuth(e))),
        }
        Ok(Ok(outcome("done")?))
    }

    fn unlink(&self, r: UnlinkReq) -> Result<Answer> {
        let Some(mut a) = self.load()? else {
            return Ok(Err(ApiError::NotAMember));
        };
        match link::remove_identity(&mut a, &r.provider) {
            Ok(identity) => {
                self.save(&a, false)?;
                Ok(Ok(Response::from_json(
                    &serde_json::json!({ "identity": identity }),
                )?))
            }
            Err(e) => Ok(Err(ApiError::OAuth(e))),
        }
    }

    fn external_session(&self, r: SessionReq, now: u64) -> Result<Answer> {
        let found = match self.load()? {
            Some(a) => Lookup::Found(a),
            None => Lookup::Absent,
        };
        let mut account = match lookup::login_account(found) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        if r.admin && account.grant_admin() {
            self.save(&account, false)?;
        }
        self.new_session(&account, r.max_sessions, now, 200)
    }
}
