//! What accounts keep about sign-ins through other services: the identities linked to an
//! account, and every way such a sign-in (or a cookie-authenticated request) fails. The flow
//! itself is `crate::oauth`, which builds on this.

use crate::Millis;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An identity as the account lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedIdentity {
    pub provider: String,
    pub subject: String,
    /// The provider's name for the player when linked (shown on the account page).
    #[serde(default)]
    pub name: String,
    pub linked_at: Millis,
}

/// Why a sign-in through a provider, a link or an unlink failed. Each host answers it through
/// [`super::ApiError::OAuth`], as a page (`oauth::error_page`) or JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    UnknownProvider,
    BadReturnTo,
    /// No flow cookie, a bad signature, expired, another provider's, or `state` differs.
    Flow(&'static str),
    /// The player refused (or the provider answered another `error`).
    Denied(String),
    /// The provider refused the code (replayed, expired, wrong verifier).
    Code,
    /// The ID token or the profile failed a check (which one, for the log).
    Token(&'static str),
    /// The provider is unreachable or answered something unusable.
    Provider(String),
    LinkedElsewhere,
    /// The account has another identity of this provider (unlink it first).
    AlreadyLinked,
    LastWayIn,
    NotLinked,
    /// Cookie-authenticated request from another site, or without the CSRF token.
    CrossSite,
}

impl OAuthError {
    pub fn status(&self) -> u16 {
        use OAuthError::*;
        match self {
            UnknownProvider | NotLinked => 404,
            BadReturnTo | Flow(_) | Code => 400,
            Denied(_) | CrossSite => 403,
            Token(_) => 401,
            Provider(_) => 502,
            LinkedElsewhere | AlreadyLinked | LastWayIn => 409,
        }
    }

    pub fn code(&self) -> &'static str {
        use OAuthError::*;
        match self {
            UnknownProvider => "unknown_provider",
            BadReturnTo => "bad_return_to",
            Flow(_) => "oauth_flow",
            Denied(_) => "oauth_denied",
            Code => "oauth_code",
            Token(_) => "oauth_token",
            Provider(_) => "oauth_provider",
            LinkedElsewhere => "identity_linked_elsewhere",
            AlreadyLinked => "provider_already_linked",
            LastWayIn => "last_way_in",
            NotLinked => "not_linked",
            CrossSite => "cross_site",
        }
    }

    /// What the player reads (no detail an attacker could use beyond the code).
    pub fn message(&self) -> String {
        use OAuthError::*;
        match self {
            UnknownProvider => "no such sign-in provider".into(),
            BadReturnTo => "return_to must be a path on this site".into(),
            Flow(_) => "this sign-in expired or was started elsewhere; please start again".into(),
            Denied(_) => "sign-in was cancelled at the provider".into(),
            Code => "the provider refused this sign-in; please start again".into(),
            Token(_) => "the provider's answer could not be verified".into(),
            Provider(_) => "the sign-in provider is unavailable; try again later".into(),
            LinkedElsewhere => "this account of the provider is linked to another member".into(),
            AlreadyLinked => "another account of this provider is linked; unlink it first".into(),
            LastWayIn => "this is the account's only way to sign in; set a password or link another provider first".into(),
            NotLinked => "this provider is not linked to the account".into(),
            CrossSite => "cross-site request refused".into(),
        }
    }

    /// The detail for the log line (never shown to the player).
    pub fn detail(&self) -> String {
        use OAuthError::*;
        match self {
            Flow(d) | Token(d) => (*d).to_owned(),
            Denied(d) | Provider(d) => d.chars().take(200).collect(),
            _ => String::new(),
        }
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.detail())
    }
}
