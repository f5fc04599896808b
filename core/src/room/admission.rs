//! Admission: who may hold a socket in the room, and who may join it.
//!
//! Every socket passes admission, a user already present included (one token once opened 500
//! sockets into a room of 20): at most [`budget::MAX_CONNS_PER_USER`] sockets per user and
//! [`budget::MAX_CONNS_PER_NETWORK`] per network, checked by hosts before the upgrade
//! ([`Room::admit_connection`]) and again at `Connect`. Every Join passes bans (by user, and by
//! network for guests), capacity (for a user not present yet), guests/bots settings and the
//! password. Password guessing is slowed three ways: the connection's join budget, a delay per
//! user (and per network, for guests) that doubles with each wrong guess, and a room-wide cap
//! on checks per second. The check
//! itself (a KDF) leaves the room's thread: [`Effect::VerifyPassword`] out,
//! [`Input::PasswordChecked`] back in, and admission runs again then, since the room may have
//! filled (or banned the user) meanwhile.
//!
//! [`Input::PasswordChecked`]: super::Input::PasswordChecked

use super::budget::{self, Bucket, Kind};
use super::perms::Actor;
use super::stored::{Change, PasswordHash};
use super::{ConnId, Effect, Out, Room, S, send_one};
use crate::Millis;
use crate::identity::Identity;
use crate::limits::close;
use crate::proto::{self, ErrorCode, JoinFailure};
use std::collections::BTreeMap;

/// A Join waiting for its password check, with the hash it is checked against (if the owner
/// changes the password meanwhile, the answer no longer counts).
#[derive(Debug)]
pub struct PendingJoin {
    join: proto::Join,
    hash: PasswordHash,
}

/// The room-wide part of the password defences.
#[derive(Debug, Default)]
pub struct Guard {
    /// Password checks, whoever asks (`None` until the first one: then full).
    checks: Option<Bucket>,
    /// Wrong guesses in a row, and until when the next guess must wait: per user id, and per
    /// network for guests (a new guest identity is free to make; its network is not).
    failures: BTreeMap<String, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    until: Millis,
}

/// Why a Join is refused: reason, message, retry-after.
type Refusal = (JoinFailure, String, u64);

/// Refuses a new connection: the typed error, then close 4004.
pub(super) fn refuse_connection(conn: ConnId, code: ErrorCode, out: &mut Out) {
    super::error(
        out,
        conn,
        code,
        "you hold too many connections to this room: close one first",
    );
    out.push(Effect::Close {
        conn,
        code: close::TOO_MANY_CONNECTIONS,
        reason: "too many connections",
    });
}

/// Whose wrong guesses slow `who` down: the user, and for a guest its network too. The network
/// key cannot collide with a user id (those never start with a NUL).
fn guess_keys(who: &Identity) -> impl Iterator<Item = String> {
    let guest = who.roles.iter().any(|r| r == "guest");
    let network = who.network.as_deref().filter(|_| guest);
    std::iter::once(who.user_id.clone()).chain(network.map(|n| format!("\0net:{n}")))
}

fn rate_limited(message: impl Into<String>, retry: u64) -> Refusal {
    (JoinFailure::RateLimited, message.into(), retry)
}

impl Room {
    /// Refuses a Join with its typed reason, counted as a join failure (analytics).
    fn join_failed(
        &mut self,
        now: Millis,
        out: &mut Out,
        conn: ConnId,
        (reason, message, retry): Refusal,
    ) {
        self.count_join_failure(conn, now);
        out.push(send_one(
            conn,
            S::JoinFailed(proto::JoinFailed {
                reason: reason as i32,
                message,
                retry_after_ms: retry,
            }),
        ));
    }
    /// Whether a new socket for `who` may be accepted: hosts ask before the upgrade (and answer
    /// HTTP 429 `too_many_connections`); `Connect` asks again (error, then close 4004).
    pub fn admit_connection(&self, who: &Identity) -> Result<(), ErrorCode> {
        // Suspended connections (docs/resume.md) have no socket: the player reconnecting to
        // resume one must not be refused for it.
        let per_user = self
            .conns
            .values()
            .filter(|c| c.identity.user_id == who.user_id && !c.is_suspended())
            .count();
        if per_user >= self.limits.conns_per_user {
            return Err(ErrorCode::TooManyConnections);
        }
        let staff = Actor::from_roles(&who.roles, false).staff();
        if let Some(network) = who.network.as_deref().filter(|_| !staff) {
            let per_network = self
                .conns
                .values()
                .filter(|c| {
                    c.identity.network.as_deref() == Some(network)
                        && !c.is_suspended()
                        && !Actor::from_roles(&c.identity.roles, false).staff()
                })
                .count();
            if per_network >= self.limits.conns_per_network {
                return Err(ErrorCode::TooManyConnections);
            }
        }
        Ok(())
    }

    /// The abuse limits in force.
    pub fn limits(&self) -> &budget::Limits {
        &self.limits
    }

    /// Replaces the abuse limits (hosts with configured numbers). Connections already open
    /// keep their budgets' current fill.
    pub fn set_limits(&mut self, limits: budget::Limits) {
        self.limits = limits;
    }

    pub(super) fn on_join(
        &mut self,
        conn: ConnId,
        mut join: proto::Join,
        now: Millis,
        out: &mut Out,
    ) {
        if !self.join_budget(conn, now, out) {
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.joined.is_some() {
            return super::error(
                out,
                conn,
                ErrorCode::AlreadyJoined,
                "this connection has already joined",
            );
        }
        if c.pending_join.is_some() {
            return self.join_failed(
                now,
                out,
                conn,
                rate_limited("your previous join is still being checked", 0),
            );
        }
        let identity = c.identity.clone();
        let bans = self.stored.bans.len();
        self.stored.bans.retain(|b| b.until > now);
        if self.stored.bans.len() != bans {
            out.push(Effect::Persist(Change::Bans(self.stored.bans.clone())));
        }
        if let Err(refusal) = self.admission(&identity, now) {
            return self.join_failed(now, out, conn, refusal);
        }
        let Some(hash) = self.password_to_check(&identity) else {
            return self.complete_join(conn, join, now, out);
        };
        if join.password.is_empty() {
            // Not a guess: the client learns the room is locked (and asks its user).
            return self.join_failed(
                now,
                out,
                conn,
                (
                    JoinFailure::WrongPassword,
                    "this room needs a password".into(),
                    0,
                ),
            );
        }
        let until = guess_keys(&identity)
            .filter_map(|k| self.guard.failures.get(&k))
            .map(|f| f.until)
            .max()
            .unwrap_or(0);
        if until > now {
            let wait = until - now;
            return self.join_failed(
                now,
                out,
                conn,
                rate_limited(
                    format!(
                        "too many wrong passwords: try again in {} s",
                        wait.div_ceil(1000)
                    ),
                    wait,
                ),
            );
        }
        let rate = self.limits.password_checks;
        let checks = self.guard.checks.get_or_insert(Bucket::full(rate, now));
        if let Err(wait) = checks.take(rate, now) {
            return self.join_failed(
                now,
                out,
                conn,
                rate_limited(
                    "too many password attempts in this room: try again soon",
                    wait,
                ),
            );
        }
        let password = std::mem::take(&mut join.password);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending_join = Some(Box::new(PendingJoin {
                join,
                hash: hash.clone(),
            }));
        }
        out.push(Effect::VerifyPassword {
            conn,
            password,
            hash,
        });
    }

    pub(super) fn on_password_checked(
        &mut self,
        conn: ConnId,
        ok: bool,
        now: Millis,
        out: &mut Out,
    ) {
        // The connection may have left meanwhile: nothing to answer.
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(pending) = c.pending_join.take() else {
            return;
        };
        let identity = c.identity.clone();
        let PendingJoin { join, hash } = *pending;
        let still_locked_by = self.password_to_check(&identity);
        if still_locked_by.as_ref().is_some_and(|h| *h != hash) {
            // The password changed while this one was checked: the answer is about the old one.
            return self.join_failed(
                now,
                out,
                conn,
                (
                    JoinFailure::WrongPassword,
                    "the room's password changed: try again".into(),
                    0,
                ),
            );
        }
        if !ok && still_locked_by.is_some() {
            let wait = self.password_failed(&identity, now);
            return self.join_failed(
                now,
                out,
                conn,
                (
                    JoinFailure::WrongPassword,
                    format!("wrong password: try again in {} s", wait.div_ceil(1000)),
                    wait,
                ),
            );
        }
        self.guard.failures.remove(&identity.user_id);
        // The room may have filled, or banned the user, while the password was checked.
        if let Err(refusal) = self.admission(&identity, now) {
            return self.join_failed(now, out, conn, refusal);
        }
        self.complete_join(conn, join, now, out);
    }

    /// Records a wrong guess; returns how long the guesser now waits.
    fn password_failed(&mut self, who: &Identity, now: Millis) -> u64 {
        let max = self.limits.password_delay_max_ms;
        // Forget guessers who stopped a while ago (bounded: the room-wide check budget caps
        // how fast entries can be added).
        self.guard
            .failures
            .retain(|_, f| f.until.saturating_add(max) > now);
        let mut wait = 0;
        for key in guess_keys(who) {
            let f = self
                .guard
                .failures
                .entry(key)
                .or_insert(Failures { count: 0, until: 0 });
            f.count = f.count.saturating_add(1);
            let delay = self.limits.password_delay(f.count);
            f.until = now.saturating_add(delay);
            wait = wait.max(delay);
        }
        wait
    }

    /// The hash `who` must match, if the room is locked for them (staff and the owner, present
    /// or previous, pass without).
    fn password_to_check(&self, who: &Identity) -> Option<PasswordHash> {
        let hash = self.stored.password.as_ref()?;
        let crown = &self.stored.crown;
        let owner = [&crown.owner_user, &crown.previous_user]
            .iter()
            .any(|u| u.as_deref() == Some(who.user_id.as_str()));
        let staff = Actor::from_roles(&who.roles, false).staff();
        (!staff && !owner).then(|| hash.clone())
    }

    /// Whether `who` may join, the password aside: bans (by user; by network for guests),
    /// capacity (unless already present), guests and bots.
    fn admission(&self, who: &Identity, now: Millis) -> Result<(), Refusal> {
        let guest = who.roles.iter().any(|r| r == "guest");
        let banned = self.stored.bans.iter().find(|b| {
            b.until > now
                && (b.user_id == who.user_id
                    || (guest && b.network.is_some() && b.network == who.network))
        });
        if let Some(ban) = banned {
            let left = ban.until - now;
            return Err((
                JoinFailure::Banned,
                format!(
                    "you are banned from this room for {} more seconds",
                    left.div_ceil(1000)
                ),
                left,
            ));
        }
        let actor = Actor::from_roles(&who.roles, false);
        let s = &self.stored.settings;
        let present = self.member_index_by_user(&who.user_id).is_some();
        if !present && !actor.staff() && self.members.len() >= s.max_players as usize {
            return Err((
                JoinFailure::RoomFull,
                format!("the room is full ({} players)", s.max_players),
                0,
            ));
        }
        if !s.allow_guests && guest && !actor.staff() {
            return Err((
                JoinFailure::GuestsNotAllowed,
                "this room does not allow guests: sign in".into(),
                0,
            ));
        }
        if !s.allow_bots && who.roles.iter().any(|r| r == "bot") {
            return Err((
                JoinFailure::NotAllowed,
                "this room does not allow bots".into(),
                0,
            ));
        }
        Ok(())
    }

    /// Charges a Join to the connection's join budget; refused (at most one answer per notice
    /// interval) when over it.
    pub(super) fn join_budget(&mut self, conn: ConnId, now: Millis, out: &mut Out) -> bool {
        let limits = &self.limits;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Err(wait) = c.budget.charge(limits, Kind::Join, now) else {
            return true;
        };
        let over = c.budget.dropped(limits, Kind::Join, wait, now);
        if over.close {
            self.close_abusive(conn, now, out);
        } else if let Some(wait) = over.notice {
            self.join_failed(
                now,
                out,
                conn,
                rate_limited("too many join attempts: slow down", wait),
            );
        }
        false
    }
}
