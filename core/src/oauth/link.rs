//! External identities (provider + subject) and member accounts.
//!
//! One identity belongs to at most one account. That rests on a **claim**: a record per identity
//! naming its account, set in one atomic step of the store only when absent (an Account object
//! at the edge, a primary key or `SET NX` on the fallback). Every sign-in and link claims first,
//! then creates or changes the account; so two concurrent links of one identity give one claim,
//! one success and one `identity_linked_elsewhere`. A claim is valid while its account exists
//! and lists the identity; one left invalid for [`STALE_CLAIM_MS`] (ten minutes: a host died
//! between the two steps, or an unlink stopped half-way) may be taken over.
//!
//! [`Linker`] is the procedure, sans I/O: the host asks [`Linker::want`] what to do, does it
//! against its store and reports the answer, until [`Want::Done`] or [`Want::Failed`].

use super::{LinkedIdentity, OAuthError};
use crate::Millis;
use crate::account::{AccountData, ApiError};
use serde::{Deserialize, Serialize};

/// How long an invalid claim is respected (a sign-in in progress) before it may be taken over.
/// Far above the longest a sign-in can take (its requests time out after 10 s each): a
/// sign-in that still creates or adds after its claim was taken over would put the identity on
/// two accounts, since creating and adding do not re-read the claim.
pub const STALE_CLAIM_MS: Millis = 10 * 60 * 1000;
/// Usernames tried for a new account before giving up.
pub const CANDIDATES: usize = 4;
/// The random bytes [`Linker::sign_in`] consumes (username suffixes).
pub const SIGN_IN_RANDOM: usize = 16;

/// What a provider says about the player, checked and made safe to store and show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalProfile {
    pub provider: String,
    pub subject: String,
    /// A username made of the provider's name (`a-z 0-9 _ -`, 3-17).
    pub username_base: String,
    pub display_name: String,
    pub avatar: Option<String>,
}

impl ExternalProfile {
    pub fn new(
        provider: &str,
        subject: &str,
        username_hint: Option<&str>,
        display_name: Option<&str>,
        avatar: Option<&str>,
    ) -> ExternalProfile {
        let mut base: String = username_hint
            .unwrap_or("")
            .chars()
            .filter_map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '_' | '-') => Some(c),
                ' ' | '.' => Some('_'),
                _ => None,
            })
            .take(17)
            .collect();
        if base.len() < 3 {
            base = "player".into();
        }
        let display_name = display_name
            .map(|n| {
                n.chars()
                    .filter(|c| !crate::names::is_forbidden_char(*c))
                    .take(crate::names::MAX_DISPLAY_NAME_CHARS)
                    .collect::<String>()
            })
            .and_then(|n| crate::names::display_name(&n).ok())
            .unwrap_or_else(|| base.clone());
        let avatar = avatar
            .filter(|a| a.len() <= 512)
            .and_then(|a| super::config::provider_url(a).ok());
        ExternalProfile {
            provider: provider.to_owned(),
            subject: subject.to_owned(),
            username_base: base,
            display_name,
            avatar,
        }
    }

    /// The claim's key in every store: `provider:subject` (the subject percent-encoded, so it
    /// is safe in an object name or a Redis key).
    pub fn key(&self) -> String {
        identity_key(&self.provider, &self.subject)
    }

    fn linked(&self, now: Millis) -> LinkedIdentity {
        LinkedIdentity {
            provider: self.provider.clone(),
            subject: self.subject.clone(),
            name: self.display_name.clone(),
            linked_at: now,
        }
    }

    /// The usernames a new account tries, in order: the base, then with random suffixes. Names
    /// in `ADMIN_USERNAMES` are never given to a provider's account.
    pub fn candidates(&self, random: &[u8; SIGN_IN_RANDOM], admins: &[String]) -> Vec<String> {
        let mut out = vec![
            self.username_base.clone(),
            format!(
                "{}-{}",
                self.username_base,
                crate::hex::encode(&random[0..2])
            ),
            format!(
                "{}-{}",
                self.username_base,
                crate::hex::encode(&random[2..4])
            ),
            format!(
                "{}-{}",
                self.username_base,
                crate::hex::encode(&random[4..7])
            ),
        ];
        out.retain(|n| crate::names::username(n).is_ok() && !admins.contains(n));
        out.truncate(CANDIDATES);
        out
    }
}

pub fn identity_key(provider: &str, subject: &str) -> String {
    format!("{provider}:{}", crate::names::percent_encode(subject))
}

/// The record that makes an identity one account's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub account: String,
    pub at: Millis,
    /// Which sign-in made it (random): two first sign-ins choosing one username are told apart.
    #[serde(default)]
    pub by: String,
}

impl AccountData {
    /// A member made by a first sign-in through a provider: no password, the provider's name
    /// and avatar.
    pub fn external(key: &str, p: &ExternalProfile, tag: [u8; 3], now: Millis) -> AccountData {
        AccountData {
            username: key.to_owned(),
            tag: crate::hex::encode(&tag),
            email: None,
            password: None,
            roles: vec!["member".to_owned()],
            name: p.display_name.clone(),
            color: None,
            status: String::new(),
            created_at: now,
            identities: vec![p.linked(now)],
            avatar: p.avatar.clone(),
        }
    }

    pub fn has_identity(&self, provider: &str, subject: &str) -> bool {
        self.identities
            .iter()
            .any(|i| i.provider == provider && i.subject == subject)
    }
}

/// Adds an identity to an account (a link): `Ok(false)` if it was there already; refused when
/// the account has another identity of that provider (unlink it first).
pub fn add_identity(a: &mut AccountData, identity: &LinkedIdentity) -> Result<bool, OAuthError> {
    if a.has_identity(&identity.provider, &identity.subject) {
        return Ok(false);
    }
    if a.identities.iter().any(|i| i.provider == identity.provider) {
        return Err(OAuthError::AlreadyLinked);
    }
    a.identities.push(identity.clone());
    Ok(true)
}

/// Removes the account's identity of `provider` (an unlink), unless it is the account's last
/// way in. The host saves the account, then releases the claim of the returned identity.
pub fn remove_identity(a: &mut AccountData, provider: &str) -> Result<LinkedIdentity, OAuthError> {
    let at = a
        .identities
        .iter()
        .position(|i| i.provider == provider)
        .ok_or(OAuthError::NotLinked)?;
    if a.password.is_none() && a.identities.len() == 1 {
        return Err(OAuthError::LastWayIn);
    }
    Ok(a.identities.remove(at))
}

/// `GET /api/auth/identities`.
pub fn identities_body(a: &AccountData) -> serde_json::Value {
    serde_json::json!({
        "identities": a.identities,
        "has_password": a.password.is_some(),
    })
}

/// What the host does next for a [`Linker`].
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// Set `identity`'s claim to `claim` if it has none; report the claim it has afterwards
    /// ([`Linker::claimed`]).
    Claim {
        identity: String,
        claim: Claim,
    },
    /// Read the account `key` ([`Linker::loaded`]).
    Load {
        key: String,
    },
    /// Replace `identity`'s claim by `to` only if it is still exactly `from`
    /// ([`Linker::replaced`]).
    Replace {
        identity: String,
        from: Claim,
        to: Claim,
    },
    /// Create `account` only if its username is free ([`Linker::created`]).
    Create {
        account: Box<AccountData>,
    },
    /// Load `key`, [`add_identity`], save it if unchanged meanwhile ([`Linker::added`]).
    Add {
        key: String,
        identity: LinkedIdentity,
    },
    /// Delete `identity`'s claim if it still names `account`; then ask again.
    Release {
        identity: String,
        account: String,
    },
    /// Sign in to the account `key`; `created`: it is new.
    Done {
        key: String,
        created: bool,
    },
    Failed(ApiError),
}

/// What adding an identity came to ([`Want::Add`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    Done,
    NoAccount,
    Refused(OAuthError),
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    Claiming,
    Checking(Claim),
    TakingOver,
    Creating,
    Moving,
    Adding,
    Releasing(ApiError),
    Over,
}

/// The sign-in or link procedure for one verified identity.
#[derive(Debug, Clone)]
pub struct Linker {
    profile: ExternalProfile,
    /// A link: the member asking. A sign-in: `None`.
    member: Option<String>,
    candidates: Vec<String>,
    tried: usize,
    ours: Claim,
    tag: [u8; 3],
    now: Millis,
    stage: Stage,
    want: Option<Want>,
}

fn busy() -> ApiError {
    // Another sign-in of the same identity is half-way: a moment later it is done.
    ApiError::Unavailable {
        retry_after_secs: Some(2),
    }
}

impl Linker {
    /// A sign-in: finds the identity's account, or creates one.
    pub fn sign_in(
        profile: ExternalProfile,
        random: &[u8; SIGN_IN_RANDOM],
        admins: &[String],
        now: Millis,
    ) -> Linker {
        let candidates = profile.candidates(random, admins);
        let first = candidates
            .first()
            .cloned()
            .unwrap_or_else(|| "player".into());
        Linker::new(profile, None, candidates, first, random, now)
    }

    /// A link to the signed-in member `member` (an account key).
    pub fn link(
        profile: ExternalProfile,
        member: &str,
        random: &[u8; SIGN_IN_RANDOM],
        now: Millis,
    ) -> Linker {
        Linker::new(
            profile,
            Some(member.to_owned()),
            Vec::new(),
            member.to_owned(),
            random,
            now,
        )
    }

    fn new(
        profile: ExternalProfile,
        member: Option<String>,
        candidates: Vec<String>,
        first: String,
        random: &[u8; SIGN_IN_RANDOM],
        now: Millis,
    ) -> Linker {
        let by = crate::hex::encode(&random[8..]);
        let tag = [random[5], random[6], random[7]];
        let ours = Claim {
            account: first,
            at: now,
            by,
        };
        let want = Want::Claim {
            identity: profile.key(),
            claim: ours.clone(),
        };
        Linker {
            profile,
            member,
            candidates,
            tried: 0,
            ours,
            tag,
            now,
            stage: Stage::Claiming,
            want: Some(want),
        }
    }

    /// What to do now. After `Done` or `Failed`, it keeps answering that.
    pub fn want(&mut self) -> Want {
        match self.want.take() {
            Some(w) => {
                if matches!(w, Want::Done { .. } | Want::Failed(_)) {
                    self.stage = Stage::Over;
                    self.want = Some(w.clone());
                }
                w
            }
            None => Want::Failed(ApiError::Unavailable {
                retry_after_secs: None,
            }),
        }
    }

    fn create(&mut self) -> Want {
        self.stage = Stage::Creating;
        let key = self.ours.account.clone();
        Want::Create {
            account: Box::new(AccountData::external(
                &key,
                &self.profile,
                self.tag,
                self.now,
            )),
        }
    }

    fn add(&mut self) -> Want {
        self.stage = Stage::Adding;
        Want::Add {
            key: self.ours.account.clone(),
            identity: self.profile.linked(self.now),
        }
    }

    fn won(&mut self) -> Want {
        if self.member.is_some() {
            self.add()
        } else {
            self.create()
        }
    }

    fn release(&mut self, then: ApiError) -> Want {
        self.stage = Stage::Releasing(then);
        Want::Release {
            identity: self.profile.key(),
            account: self.ours.account.clone(),
        }
    }

    fn set(&mut self, w: Want) {
        self.want = Some(w);
    }

    /// The claim the identity has after [`Want::Claim`].
    pub fn claimed(&mut self, holder: Claim) {
        let w = if holder == self.ours
            || (self.member.is_some() && holder.account == self.ours.account)
        {
            self.won()
        } else {
            self.stage = Stage::Checking(holder.clone());
            Want::Load {
                key: holder.account,
            }
        };
        self.set(w);
    }

    /// The account read for [`Want::Load`] (`None`: there is none).
    pub fn loaded(&mut self, account: Option<&AccountData>) {
        let Stage::Checking(holder) = self.stage.clone() else {
            return self.set(Want::Failed(busy()));
        };
        let valid =
            account.is_some_and(|a| a.has_identity(&self.profile.provider, &self.profile.subject));
        let w = if valid {
            match &self.member {
                Some(_) => Want::Failed(ApiError::OAuth(OAuthError::LinkedElsewhere)),
                None => Want::Done {
                    key: holder.account,
                    created: false,
                },
            }
        } else if self.now.saturating_sub(holder.at) >= STALE_CLAIM_MS {
            self.stage = Stage::TakingOver;
            Want::Replace {
                identity: self.profile.key(),
                from: holder,
                to: self.ours.clone(),
            }
        } else if self.member.is_some() {
            Want::Failed(ApiError::OAuth(OAuthError::LinkedElsewhere))
        } else {
            Want::Failed(busy())
        };
        self.set(w);
    }

    /// Whether [`Want::Replace`] replaced the claim.
    pub fn replaced(&mut self, done: bool) {
        let w = match (&self.stage, done) {
            (Stage::TakingOver | Stage::Moving, true) => {
                if self.member.is_some() {
                    self.add()
                } else {
                    self.create()
                }
            }
            (_, _) if self.member.is_some() => {
                Want::Failed(ApiError::OAuth(OAuthError::LinkedElsewhere))
            }
            _ => Want::Failed(busy()),
        };
        self.set(w);
    }

    /// Whether [`Want::Create`] created the account (`false`: the username is taken).
    pub fn created(&mut self, created: bool) {
        if created {
            let key = self.ours.account.clone();
            return self.set(Want::Done { key, created: true });
        }
        self.tried += 1;
        let w = match self.candidates.get(self.tried).cloned() {
            Some(next) => {
                let from = self.ours.clone();
                self.ours = Claim {
                    account: next,
                    ..self.ours.clone()
                };
                self.stage = Stage::Moving;
                Want::Replace {
                    identity: self.profile.key(),
                    from,
                    to: self.ours.clone(),
                }
            }
            None => self.release(ApiError::UsernameTaken),
        };
        self.set(w);
    }

    /// What [`Want::Add`] came to.
    pub fn added(&mut self, outcome: Added) {
        let key = self.ours.account.clone();
        let w = match outcome {
            Added::Done => Want::Done {
                key,
                created: false,
            },
            Added::NoAccount => self.release(ApiError::NotAMember),
            Added::Refused(e) => self.release(ApiError::OAuth(e)),
        };
        self.set(w);
    }

    /// [`Want::Release`] is done.
    pub fn released(&mut self) {
        let w = match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Releasing(e) => Want::Failed(e),
            _ => Want::Failed(busy()),
        };
        self.set(w);
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
