//! The session life cycle, decided here and stored by the hosts (the Account object's SQLite,
//! the fallback's SQLite; the fallback's Redis runs the same rules as Lua scripts, which must
//! be atomic there).
//!
//! A login opens a session (generation 1) whose refresh secret is stored only as a SHA-256
//! hash. Every refresh rotates the secret and bumps the generation; access tokens carry `sid`
//! and `gen` and are checked at every use ([`check`]). A rotated-away secret presented again
//! revokes the session (reuse detection); a secret the session never had changes nothing (a
//! guess must not end someone's session). Opening a session forgets expired ones and, with a
//! session limit, revokes the oldest live ones beyond it.

use super::error::{ApiError, SessionRefusal};
use crate::Millis;
use sha2::{Digest, Sha256};

/// How long a session (its refresh token) lives without being refreshed, unless the host's
/// `REFRESH_TOKEN_TTL_SECS` says otherwise.
pub const SESSION_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// The lifetimes `REFRESH_TOKEN_TTL_SECS` may set (seconds): from 1 s (trials that watch a
/// session expire) to a year.
pub const SESSION_TTL_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=365 * 86_400;

/// How many rotated-away secret hashes a session remembers, to tell a stolen refresh token
/// presented after its owner refreshed (reuse) from a made-up one.
pub const OLD_SECRETS: usize = 8;

/// A session as stored (hosts fill what they read; a check needs only the last four fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    pub sid: String,
    pub secret_hash: String,
    /// Rotated-away secret hashes, oldest first, at most [`OLD_SECRETS`].
    pub old_hashes: Vec<String>,
    pub created: Millis,
    pub generation: u64,
    pub expires: Millis,
    pub revoked: bool,
}

/// The stored form of a refresh secret.
pub fn hash_secret(secret: &str) -> String {
    crate::hex::encode(&Sha256::digest(secret.as_bytes()))
}

impl Session {
    /// A new session living `ttl_ms`; `sid` and `secret` are the host's random values.
    pub fn new(sid: String, secret: &str, now: Millis, ttl_ms: Millis) -> Session {
        Session {
            sid,
            secret_hash: hash_secret(secret),
            old_hashes: Vec::new(),
            created: now,
            generation: 1,
            expires: now + ttl_ms,
            revoked: false,
        }
    }

    pub fn is_live(&self, now: Millis) -> bool {
        !self.revoked && self.expires > now
    }

    /// Whether the session holds, or held, this secret.
    pub fn held(&self, secret: &str) -> bool {
        let presented = hash_secret(secret);
        self.secret_hash == presented || self.old_hashes.contains(&presented)
    }

    /// `old_hashes` as the hosts store it: comma-separated.
    pub fn old_hashes_text(&self) -> String {
        self.old_hashes.join(",")
    }

    pub fn parse_old_hashes(text: &str) -> Vec<String> {
        text.split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A member's access token, as its session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Live until `expires_at` (ms), unless it ends sooner.
    Live { expires_at: Millis },
    /// Logged out, refreshed away, revoked, expired, or of an account that is not there.
    Ended,
    /// Not a session this store holds (another deployment's, sharing the signing key): the
    /// host decides (accepted on its signature unless the shared revocation list names it).
    Unknown,
}

/// Whether the token's session (`sid`, `gen`) is the live one.
pub fn check(
    account_exists: bool,
    session: Option<&Session>,
    generation: u64,
    now: Millis,
) -> Check {
    match session {
        None => Check::Unknown,
        Some(s) if account_exists && s.is_live(now) && s.generation == generation => Check::Live {
            expires_at: s.expires,
        },
        Some(_) => Check::Ended,
    }
}

/// What a refresh does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Store this session (new secret, next generation, later expiry) and issue its tokens.
    Rotate(Session),
    /// A rotated-away secret came back: revoke the session, answer [`SessionRefusal::Reused`].
    RevokeReused,
    /// Change nothing and refuse.
    Refuse(SessionRefusal),
}

/// Presenting `secret` for `session`; `new_secret` is the host's random value for the rotation,
/// which lives `ttl_ms` from now.
pub fn refresh(
    session: Option<&Session>,
    secret: &str,
    new_secret: &str,
    now: Millis,
    ttl_ms: Millis,
) -> Refresh {
    let Some(s) = session else {
        return Refresh::Refuse(SessionRefusal::NotValid);
    };
    if !s.is_live(now) {
        return Refresh::Refuse(SessionRefusal::Ended);
    }
    let presented = hash_secret(secret);
    if s.secret_hash != presented {
        return if s.old_hashes.contains(&presented) {
            Refresh::RevokeReused
        } else {
            Refresh::Refuse(SessionRefusal::NotValid)
        };
    }
    let mut old = s.old_hashes.clone();
    old.push(s.secret_hash.clone());
    let excess = old.len().saturating_sub(OLD_SECRETS);
    old.drain(..excess);
    Refresh::Rotate(Session {
        secret_hash: hash_secret(new_secret),
        old_hashes: old,
        generation: s.generation + 1,
        expires: now + ttl_ms,
        ..s.clone()
    })
}

/// Logout with a refresh token: the secret (now or before) is the proof; a user name and
/// session id alone end nothing. `Ok`: revoke the session.
pub fn logout(session: Option<&Session>, secret: &str) -> Result<(), ApiError> {
    match session {
        Some(s) if s.held(secret) => Ok(()),
        _ => Err(ApiError::InvalidSession(SessionRefusal::NotValid)),
    }
}

/// What opening a session changes besides storing the new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opening {
    /// Sessions to delete: expired, they can no longer be presented (drift 6: both hosts).
    pub forget: Vec<String>,
    /// Live sessions beyond the limit, oldest first: revoke (and tell their sockets).
    pub revoke: Vec<String>,
}

/// Opening `new` next to the account's `existing` sessions, with `max_sessions` live ones at
/// most (0: no limit). The new session is always kept.
pub fn open(existing: &[Session], new: &Session, max_sessions: u32, now: Millis) -> Opening {
    let mut opening = Opening::default();
    let mut live: Vec<&Session> = Vec::new();
    for s in existing.iter().filter(|s| s.sid != new.sid) {
        if s.expires <= now {
            opening.forget.push(s.sid.clone());
        } else if !s.revoked {
            live.push(s);
        }
    }
    if max_sessions > 0 {
        // Newest first; the new session takes one place.
        live.sort_by(|a, b| b.created.cmp(&a.created).then(a.sid.cmp(&b.sid)));
        let keep = max_sessions as usize - 1;
        let mut beyond: Vec<String> = live.iter().skip(keep).map(|s| s.sid.clone()).collect();
        beyond.reverse();
        opening.revoke = beyond;
    }
    opening
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sid: &str, created: Millis, revoked: bool) -> Session {
        Session {
            revoked,
            ..Session::new(
                sid.into(),
                &format!("secret-{sid}"),
                created,
                SESSION_TTL_MS,
            )
        }
    }

    #[test]
    fn a_check_is_live_only_for_the_current_generation_of_a_live_session() {
        let s = session("a", 1_000, false);
        let expires = s.expires;
        let revoked = Session {
            revoked: true,
            ..s.clone()
        };
        let cases = [
            (true, None, 1, 2_000, Check::Unknown),
            (
                true,
                Some(&s),
                1,
                2_000,
                Check::Live {
                    expires_at: expires,
                },
            ),
            (true, Some(&s), 2, 2_000, Check::Ended),
            (true, Some(&s), 0, 2_000, Check::Ended),
            (false, Some(&s), 1, 2_000, Check::Ended),
            (true, Some(&revoked), 1, 2_000, Check::Ended),
            (true, Some(&s), 1, expires, Check::Ended),
            (
                true,
                Some(&s),
                1,
                expires - 1,
                Check::Live {
                    expires_at: expires,
                },
            ),
        ];
        for (exists, row, generation, now, want) in cases {
            assert_eq!(
                check(exists, row, generation, now),
                want,
                "{exists} {row:?} {generation} {now}"
            );
        }
    }

    #[test]
    fn refresh_rotates_detects_reuse_and_ignores_guesses() {
        let s = Session::new("a".into(), "one", 0, SESSION_TTL_MS);
        let Refresh::Rotate(second) = refresh(Some(&s), "one", "two", 10, SESSION_TTL_MS) else {
            panic!("the current secret rotates");
        };
        assert_eq!(second.generation, 2);
        assert_eq!(second.expires, 10 + SESSION_TTL_MS);
        assert_eq!(second.secret_hash, hash_secret("two"));
        assert_eq!(second.old_hashes, vec![hash_secret("one")]);
        let ended = Session {
            expires: 5,
            ..s.clone()
        };
        let cases = [
            (None, "one", 10, Refresh::Refuse(SessionRefusal::NotValid)),
            (Some(&second), "one", 20, Refresh::RevokeReused),
            (
                Some(&second),
                "guess",
                20,
                Refresh::Refuse(SessionRefusal::NotValid),
            ),
            (
                Some(&ended),
                "one",
                10,
                Refresh::Refuse(SessionRefusal::Ended),
            ),
        ];
        for (row, secret, now, want) in cases {
            assert_eq!(
                refresh(row, secret, "new", now, SESSION_TTL_MS),
                want,
                "{secret}"
            );
        }
    }

    #[test]
    fn only_the_last_old_secrets_are_remembered() {
        let mut s = Session::new("a".into(), "s0", 0, SESSION_TTL_MS);
        for i in 1..=OLD_SECRETS + 3 {
            let Refresh::Rotate(next) = refresh(
                Some(&s),
                &format!("s{}", i - 1),
                &format!("s{i}"),
                0,
                SESSION_TTL_MS,
            ) else {
                panic!("rotation {i}");
            };
            s = next;
        }
        assert_eq!(s.old_hashes.len(), OLD_SECRETS);
        assert!(!s.held("s0") && !s.held("s2"), "forgotten");
        assert!(s.held("s3") && s.held(&format!("s{}", OLD_SECRETS + 3)));
        assert_eq!(
            Session::parse_old_hashes(&s.old_hashes_text()),
            s.old_hashes
        );
        assert!(Session::parse_old_hashes("").is_empty());
    }

    #[test]
    fn logout_needs_a_secret_the_session_holds_or_held() {
        let s = Session::new("a".into(), "one", 0, SESSION_TTL_MS);
        let Refresh::Rotate(s2) = refresh(Some(&s), "one", "two", 0, SESSION_TTL_MS) else {
            panic!()
        };
        for (row, secret, ok) in [
            (Some(&s2), "two", true),
            (Some(&s2), "one", true),
            (Some(&s2), "three", false),
            (Some(&s2), "", false),
            (None, "two", false),
        ] {
            assert_eq!(logout(row, secret).is_ok(), ok, "{secret}");
        }
    }

    #[test]
    fn opening_forgets_expired_sessions_and_revokes_the_oldest_beyond_the_limit() {
        let now = SESSION_TTL_MS + 100;
        let expired = session("x", 0, false); // expires at SESSION_TTL_MS
        let expired_revoked = session("y", 50, true);
        let a = session("a", 200, false);
        let b = session("b", 300, false);
        let c = session("c", 300, false);
        let gone = session("g", 400, true);
        let all = vec![expired, expired_revoked, a, b, c, gone];
        let new = session("n", now, false);
        let cases: [(u32, &[&str]); 5] = [
            (0, &[]),
            (4, &[]),
            (3, &["a"]),
            (2, &["a", "c"]),
            (1, &["a", "c", "b"]),
        ];
        for (max, revoke) in cases {
            let o = open(&all, &new, max, now);
            assert_eq!(o.forget, vec!["x".to_owned(), "y".to_owned()], "max {max}");
            assert_eq!(o.revoke, revoke.to_vec(), "max {max}");
        }
        assert_eq!(open(&[], &new, 1, now), Opening::default());
    }

    /// Drift 6 with a configured lifetime (`REFRESH_TOKEN_TTL_SECS`): the session expires when
    /// it says, a refresh after that is refused, and the next opening forgets it.
    #[test]
    fn a_configured_lifetime_expires_the_session_and_the_next_opening_forgets_it() {
        let ttl = 2_000;
        let s = Session::new("a".into(), "one", 100, ttl);
        assert_eq!(s.expires, 2_100);
        let Refresh::Rotate(r) = refresh(Some(&s), "one", "two", 1_000, ttl) else {
            panic!("a live session rotates")
        };
        assert_eq!(r.expires, 3_000);
        assert_eq!(
            refresh(Some(&r), "two", "three", 3_000, ttl),
            Refresh::Refuse(SessionRefusal::Ended)
        );
        let new = Session::new("b".into(), "x", 3_000, ttl);
        assert_eq!(open(&[r], &new, 0, 3_000).forget, vec!["a".to_owned()]);
    }
}
