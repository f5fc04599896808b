//! What a session hands the client: the refresh token's shape (made and parsed here only), the
//! access token's claims, the guest token's claims, and the JSON body of a sign-in.

use crate::identity::Claims;

/// Longest user and session id part a refresh token may carry (drift 4: both hosts cap them,
/// before anything is looked up or any object named).
pub const MAX_ID_PART: usize = 64;
/// Longest secret part (the hosts issue 64 hex digits).
pub const MAX_SECRET_PART: usize = 128;

/// A refresh token, `<username>.<sid>.<secret>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshToken<'a> {
    /// The normalized username (the account's key).
    pub user: &'a str,
    pub sid: &'a str,
    pub secret: &'a str,
}

impl<'a> RefreshToken<'a> {
    /// `None` for anything the hosts never issued: a missing part, an empty or over-long part,
    /// a user part that is not a normalized username, a session id or secret that is not
    /// ASCII letters and digits.
    pub fn parse(token: &'a str) -> Option<RefreshToken<'a>> {
        let mut parts = token.splitn(3, '.');
        let (user, sid, secret) = (parts.next()?, parts.next()?, parts.next()?);
        let plain = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        let normalized =
            user.len() <= MAX_ID_PART && crate::names::username(user).is_ok_and(|u| u == user);
        (normalized && plain(sid, MAX_ID_PART) && plain(secret, MAX_SECRET_PART))
            .then_some(RefreshToken { user, sid, secret })
    }

    pub fn format(user: &str, sid: &str, secret: &str) -> String {
        format!("{user}.{sid}.{secret}")
    }
}

/// Who signs, for whom, for how long.
#[derive(Debug, Clone)]
pub struct Issuer<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub ttl_secs: u64,
}

impl Issuer<'_> {
    /// A member's access token of session `sid` at `generation`, from the account's public
    /// view ([`super::AccountData::public`]: what the edge's Account object answers with, too).
    pub fn member(
        &self,
        public: &serde_json::Value,
        sid: &str,
        generation: u64,
        now_secs: u64,
    ) -> Claims {
        Claims {
            sub: public["id"].as_str().unwrap_or_default().to_owned(),
            name: public["name"].as_str().unwrap_or_default().to_owned(),
            roles: serde_json::from_value(public["roles"].clone()).unwrap_or_default(),
            iat: now_secs,
            exp: now_secs + self.ttl_secs,
            nbf: None,
            iss: self.issuer.to_owned(),
            aud: self.audience.to_owned(),
            sid: Some(sid.to_owned()),
            generation: Some(generation),
        }
    }

    /// A guest's token; `id` is the host's random hex, `name` an already checked display name.
    pub fn guest(&self, id: &str, name: String, now_secs: u64) -> Claims {
        Claims {
            sub: format!("guest:{id}"),
            name,
            roles: vec!["guest".into()],
            iat: now_secs,
            exp: now_secs + self.ttl_secs,
            nbf: None,
            iss: self.issuer.to_owned(),
            aud: self.audience.to_owned(),
            sid: None,
            generation: None,
        }
    }
}

/// The body of a successful register, login or refresh (`access`: the signed `claims`,
/// `public`: the account's public view).
pub fn session_body(
    access: &str,
    claims: &Claims,
    public: serde_json::Value,
    sid: &str,
    secret: &str,
) -> serde_json::Value {
    let user = claims.sub.strip_prefix("user:").unwrap_or_default();
    serde_json::json!({
        "access_token": access,
        "token": access,
        "expires_at": claims.exp,
        "refresh_token": RefreshToken::format(user, sid, secret),
        "user": public,
    })
}

/// The body of a guest sign-in.
pub fn guest_body(token: &str, claims: &Claims) -> serde_json::Value {
    serde_json::json!({
        "token": token,
        "expires_at": claims.exp,
        "user": { "id": claims.sub, "name": claims.name, "roles": claims.roles },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_parse_only_in_the_shape_the_hosts_issue() {
        let long = "a".repeat(MAX_ID_PART);
        let too_long = "a".repeat(MAX_ID_PART + 1);
        let longest_user = "u".repeat(24);
        let ok = |user, sid, secret| Some(RefreshToken { user, sid, secret });
        let t1 = format!("{longest_user}.{long}.s");
        let t2 = format!("{too_long}.sid.s");
        let t3 = format!("ada.{too_long}.s");
        let t4 = format!("ada.sid.{}", "f".repeat(MAX_SECRET_PART + 1));
        let cases: Vec<(&str, Option<RefreshToken>)> = vec![
            ("ada.0123abcd.deadbeef", ok("ada", "0123abcd", "deadbeef")),
            (&t1, ok(&longest_user, &long, "s")),
            (&t2, None),
            (&t3, None),
            (&t4, None),
            ("ada.sid", None),
            ("ada", None),
            ("", None),
            ("..", None),
            ("ada..secret", None),
            ("ada.sid.", None),
            ("Ada.sid.secret", None),
            (" ada.sid.secret", None),
            ("a.sid.secret", None),
            ("ada.s-d.secret", None),
            ("ada.sid.sec.ret", None),
            ("ada.sid.sécret", None),
        ];
        for (token, want) in cases {
            assert_eq!(RefreshToken::parse(token), want, "{token:?}");
        }
        let made = RefreshToken::format("ada", "0a", "ff");
        assert_eq!(RefreshToken::parse(&made), ok("ada", "0a", "ff"));
    }

    #[test]
    fn access_and_guest_claims_carry_what_the_checks_need() {
        let a = crate::account::tests::account("Ada");
        let issuer = Issuer {
            issuer: "iss",
            audience: "aud",
            ttl_secs: 900,
        };
        let c = issuer.member(&a.public(), "s1", 3, 100);
        assert_eq!(c.sub, "user:ada");
        assert_eq!(
            (c.name.as_str(), c.roles.clone()),
            ("Ada", vec!["member".to_owned()])
        );
        assert_eq!((c.iat, c.exp), (100, 1000));
        assert_eq!((c.sid.as_deref(), c.generation), (Some("s1"), Some(3)));
        assert_eq!((c.iss.as_str(), c.aud.as_str()), ("iss", "aud"));
        let body = session_body("jwt", &c, a.public(), "s1", "sec");
        assert_eq!(body["user"]["usertag"], "Ada#abcdef");
        assert_eq!(body["refresh_token"], "ada.s1.sec");
        assert_eq!(body["access_token"], body["token"]);
        assert_eq!(body["expires_at"], 1000);
        let g = issuer.guest("abcd", "Bo".into(), 5);
        assert_eq!((g.sub.as_str(), g.exp), ("guest:abcd", 905));
        assert_eq!(g.roles, vec!["guest".to_owned()]);
        assert!(g.sid.is_none() && g.generation.is_none());
        assert_eq!(guest_body("t", &g)["user"]["id"], "guest:abcd");
    }
}
