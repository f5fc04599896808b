//! Resuming after a dropped connection (docs/resume.md): a joined connection that drops is
//! suspended for the grace period instead of leaving; a new connection of the same user that
//! presents its resume token takes its place (nobody sees a leave or a join) and gets, in order,
//! what it missed from the replay buffer (`replay.rs`), or a snapshot when that is gone.
//!
//! Client messages may be numbered (`ClientMessage.seq`): the room processes each number once
//! per connection, so a client re-sends what it is unsure of after a resume and nothing arrives
//! twice. What a host must keep for a room that loses its memory meanwhile (hibernation, a
//! restart, a failover) is reported as [`Keep`] effects and handed back as [`Kept`].

use super::replay::{REPLAY_KEEP_ON_SUSPEND, ReplayDurability, ReplayEntry, first_seq};
use super::{ConnId, ConnRecord, Effect, Out, Protocol, Room, S, send_one};
use crate::Millis;
use crate::limits::close;
use crate::proto::{self, ResumeFailure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A resumable connection as a host keeps it: upserted by `record.conn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub record: ConnRecord,
    /// SHA-256 of the resume token, hex (the token itself is never stored).
    pub token_hash: String,
    /// The highest `ClientMessage.seq` processed from this connection.
    #[serde(default)]
    pub client_seq: u64,
    /// The room's seq when the connection joined or resumed: a resume never replays from
    /// before it.
    #[serde(default)]
    pub from_seq: u64,
    /// While suspended: when the place is given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
    /// The id of the first connection of this chain of resumes: replay entries name the
    /// connections they skipped and came from by it (0: `record.conn`).
    #[serde(default)]
    pub chain: ConnId,
}

/// What a host stores so connections can resume after the room's memory is gone.
// Sessions are kept at joins, drops and pings, not per note: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Insert or replace the session of `record.conn`.
    Session(Session),
    SessionGone(ConnId),
    /// Append one replay entry.
    Replay(ReplayEntry),
    /// Forget replay entries numbered below this.
    ReplayTrim(u64),
    ReplayClear,
}

/// What a host kept, handed back to [`Room::restore_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub sessions: Vec<Session>,
    pub replay: Vec<ReplayEntry>,
}

impl Kept {
    /// Applies a [`Keep`] as a host's storage would (the model the hosts agree with).
    pub fn apply(&mut self, keep: Keep) {
        match keep {
            Keep::Session(s) => {
                self.sessions.retain(|o| o.record.conn != s.record.conn);
                self.sessions.push(s);
            }
            Keep::SessionGone(conn) => self.sessions.retain(|s| s.record.conn != conn),
            Keep::Replay(e) => self.replay.push(e),
            Keep::ReplayTrim(below) => self.replay.retain(|e| e.seq >= below),
            Keep::ReplayClear => self.replay.clear(),
        }
    }
}

/// A joined connection's resume state ([`super::Conn::resume`]).
#[derive(Debug, Clone)]
pub(super) struct Resumable {
    /// [`Session::chain`].
    pub chain: ConnId,
    pub token_hash: [u8; 32],
    pub client_seq: u64,
    /// `client_seq` as last reported in a [`Keep::Session`].
    pub kept_client_seq: u64,
    pub from_seq: u64,
    pub until: Option<Millis>,
}

impl Resumable {
    fn of(s: &Session, client_seq: u64) -> Option<Resumable> {
        let mut token_hash = [0u8; 32];
        let bytes = crate::hex::decode(&s.token_hash)?;
        token_hash.copy_from_slice(bytes.get(..32)?);
        Some(Resumable {
            chain: if s.chain == 0 { s.record.conn } else { s.chain },
            token_hash,
            client_seq,
            kept_client_seq: s.client_seq,
            from_seq: s.from_seq,
            until: s.until,
        })
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Room {
    /// How long a dropped connection keeps its place (0: resuming is off).
    fn grace(&self) -> u64 {
        self.limits.resume_grace_ms
    }

    /// Which replay entries the room asks its host to keep ([`Keep`]).
    pub fn keep_replay(&mut self, durability: ReplayDurability) {
        self.durability = durability;
        self.keeping = durability == ReplayDurability::Always
            || (durability == ReplayDurability::WhileSuspended && self.any_suspended());
    }

    pub(super) fn any_suspended(&self) -> bool {
        self.conns.values().any(|c| c.is_suspended())
    }

    /// Connections suspended now.
    pub fn suspended_count(&self) -> usize {
        self.conns.values().filter(|c| c.is_suspended()).count()
    }

    /// A fresh token for `conn` (it must exist): 128 bits from the room's seed, a counter and
    /// the time (the core has no random source; hosts seed each room from theirs).
    pub(super) fn issue_token(&mut self, conn: ConnId, now: Millis) -> Option<String> {
        if self.grace() == 0 || !self.conns.get(&conn)?.protocol.is_protobuf() {
            return None;
        }
        self.salts_made += 1;
        let mut h = Sha256::new();
        h.update(b"resume");
        h.update(self.seed);
        h.update(self.name.as_bytes());
        h.update(self.salts_made.to_le_bytes());
        h.update(conn.to_le_bytes());
        h.update(now.to_le_bytes());
        let token = URL_SAFE_NO_PAD.encode(&h.finalize()[..16]);
        let (seq, token_hash) = (self.seq, hash(&token));
        let c = self.conns.get_mut(&conn)?;
        let client_seq = c.resume.as_ref().map_or(0, |r| r.client_seq);
        let chain = c.resume.as_ref().map_or(conn, |r| r.chain);
        c.resume = Some(Resumable {
            chain,
            token_hash,
            client_seq,
            kept_client_seq: client_seq,
            from_seq: seq,
            until: None,
        });
        Some(token)
    }

    /// The session a host keeps for `conn`.
    pub(super) fn session(&self, conn: ConnId) -> Option<Session> {
        let r = self.conns.get(&conn)?.resume.as_ref()?;
        Some(Session {
            record: self.record(conn)?,
            token_hash: crate::hex::encode(&r.token_hash),
            client_seq: r.client_seq,
            from_seq: r.from_seq,
            until: r.until,
            chain: r.chain,
        })
    }

    /// How replay entries name `conn`: its chain of resumes, or itself.
    pub(super) fn chain_of(&self, conn: ConnId) -> ConnId {
        self.conns
            .get(&conn)
            .and_then(|c| c.resume.as_ref())
            .map_or(conn, |r| r.chain)
    }

    pub(super) fn keep_session(&mut self, conn: ConnId, out: &mut Out) {
        if let Some(s) = self.session(conn) {
            if let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.resume.as_mut()) {
                r.kept_client_seq = r.client_seq;
            }
            out.push(Effect::Keep(Keep::Session(s)));
        }
    }

    /// The room's memory goes on purpose ([`super::Input::Stop`]: a drain, a restart): every
    /// session whose client seq moved since it was last kept is kept again, so what the room
    /// processed is not processed twice after the resume.
    pub(super) fn keep_moved_sessions(&mut self, out: &mut Out) {
        let moved: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.resume
                    .as_ref()
                    .is_some_and(|r| r.client_seq > r.kept_client_seq)
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in moved {
            self.keep_session(conn, out);
        }
    }

    /// A numbered message from `conn`: false when it was processed before (drop it).
    pub(super) fn first_time(&mut self, conn: ConnId, seq: u64) -> bool {
        let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.resume.as_mut()) else {
            return true;
        };
        if seq <= r.client_seq {
            return false;
        }
        r.client_seq = seq;
        self.origin = Some((r.chain, seq));
        true
    }

    /// The highest client seq processed from `conn`, reported (kept) when it moved since.
    pub(super) fn ack(&mut self, conn: ConnId, out: &mut Out) -> u64 {
        let Some(r) = self.conns.get(&conn).and_then(|c| c.resume.as_ref()) else {
            return 0;
        };
        let seq = r.client_seq;
        if seq > r.kept_client_seq {
            self.keep_session(conn, out);
        }
        seq
    }

    /// The socket of `conn` failed or closed without a goodbye.
    pub(super) fn on_dropped(&mut self, conn: ConnId, now: Millis, out: &mut Out) {
        let grace = self.grace();
        let resumable = self.conns.get(&conn).is_some_and(|c| {
            c.joined.is_some()
                && c.protocol == Protocol::Protobuf
                && c.resume.as_ref().is_some_and(|r| r.until.is_none())
        });
        if !resumable || grace == 0 {
            return self.on_disconnect(conn, now, out);
        }
        let mut was_subscribed = None;
        if let Some(c) = self.conns.get_mut(&conn) {
            if let Some(r) = c.resume.as_mut() {
                r.until = Some(now + grace);
            }
            c.pending_join = None;
            if std::mem::take(&mut c.subscribed) {
                was_subscribed = Some(c.identity.user_id.clone());
            }
        }
        if was_subscribed.is_some() {
            self.subscription_ended(was_subscribed, out);
        }
        self.keep_session(conn, out);
        // A user keeps at most as many suspended connections as it may hold open: dropping
        // sockets over and over cannot pile up places.
        let user = self.conns.get(&conn).map(|c| c.identity.user_id.clone());
        let mut mine: Vec<(Millis, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_suspended() && Some(&c.identity.user_id) == user.as_ref())
            .filter_map(|(id, c)| Some((c.resume.as_ref()?.until?, *id)))
            .collect();
        mine.sort_unstable();
        let excess = mine.len().saturating_sub(self.limits.conns_per_user);
        for (_, old) in mine.into_iter().take(excess) {
            self.on_disconnect(old, now, out);
        }
        if self.durability == ReplayDurability::WhileSuspended && !self.keeping {
            self.keeping = true;
            out.extend(
                self.replay
                    .newest(REPLAY_KEEP_ON_SUSPEND)
                    .map(|e| Effect::Keep(Keep::Replay(e.clone()))),
            );
        }
    }

    /// Gives up the places of suspended connections whose grace ended.
    pub(super) fn expire_suspended(&mut self, now: Millis, out: &mut Out) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.resume
                    .as_ref()
                    .and_then(|r| r.until)
                    .is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in expired {
            self.on_disconnect(conn, now, out);
        }
    }

    /// The earliest end of a grace period.
    pub(super) fn next_expiry(&self) -> Option<Millis> {
        self.conns
            .values()
            .filter_map(|c| c.resume.as_ref()?.until)
            .min()
    }

    /// After a connection with a session went: the host forgets it, and the replay entries it
    /// kept for suspended connections once none is left.
    pub(super) fn session_gone(&mut self, conn: ConnId, out: &mut Out) {
        out.push(Effect::Keep(Keep::SessionGone(conn)));
        self.stop_keeping_if_unneeded(out);
    }

    /// Entries are kept for suspended connections only (short of `Always`): with none left the
    /// host forgets them.
    fn stop_keeping_if_unneeded(&mut self, out: &mut Out) {
        if self.keeping && self.durability != ReplayDurability::Always && !self.any_suspended() {
            self.keeping = false;
            out.push(Effect::Keep(Keep::ReplayClear));
        }
    }

    /// Numbers a broadcast every joined connection is sent, keeps it for replay, and returns
    /// its frame.
    pub(super) fn numbered(&mut self, msg: S, except: Option<ConnId>, out: &mut Out) -> Bytes {
        self.seq += 1;
        let frame = super::wire::encode_seq(msg, self.seq);
        let entry = ReplayEntry {
            seq: self.seq,
            frame: frame.clone(),
            except: except.map(|c| self.chain_of(c)),
            origin: self.origin,
        };
        if self.keeping {
            out.push(Effect::Keep(Keep::Replay(entry.clone())));
        }
        if let Some(below) = self.replay.push(entry)
            && self.keeping
        {
            out.push(Effect::Keep(Keep::ReplayTrim(below)));
        }
        frame
    }

    /// `Resume` on `conn`: take over the connection the token names.
    pub(super) fn on_resume(
        &mut self,
        conn: ConnId,
        resume: proto::Resume,
        now: Millis,
        out: &mut Out,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.joined.is_some() || c.pending_join.is_some() {
            return resume_failed(out, conn, ResumeFailure::AlreadyJoined, "already joined");
        }
        let user = c.identity.user_id.clone();
        self.expire_suspended(now, out);
        let h = hash(&resume.token);
        let old = self.conns.iter().find_map(|(id, o)| {
            let r = o.resume.as_ref()?;
            (*id != conn && bool::from(subtle::ConstantTimeEq::ct_eq(&r.token_hash[..], &h[..])))
                .then_some(*id)
        });
        let Some(old) = old else {
            return resume_failed(
                out,
                conn,
                ResumeFailure::Expired,
                "nothing to resume here (the grace period is over): join",
            );
        };
        if self.conns.get(&old).map(|o| o.identity.user_id.as_str()) != Some(user.as_str()) {
            return resume_failed(
                out,
                conn,
                ResumeFailure::Invalid,
                "that resume token is not yours",
            );
        }
        let Some(mut prev) = self.conns.remove(&old) else {
            return;
        };
        let live = prev.resume.as_ref().is_some_and(|r| r.until.is_none());
        if live {
            // A half-open socket the host has not noticed yet: the newer one wins.
            out.push(Effect::Close {
                conn: old,
                code: close::RESUMED_ELSEWHERE,
                reason: "resumed on another connection",
            });
        }
        if prev.subscribed {
            self.subscription_ended(Some(user.clone()), out);
        }
        let (client_seq, from_seq) = prev
            .resume
            .as_ref()
            .map_or((0, 0), |r| (r.client_seq, r.from_seq));
        if let Some(m) = self.members.iter_mut().find(|m| m.conns.contains(&old)) {
            for x in m.conns.iter_mut().filter(|x| **x == old) {
                *x = conn;
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.joined = prev.joined;
            c.profile = std::mem::take(&mut prev.profile);
            // Budgets carry over: dropping and resuming never buys a fresh allowance.
            c.budget = prev.budget;
            c.resume = prev.resume.take();
        }
        out.push(Effect::Keep(Keep::SessionGone(old)));
        let token = self.issue_token(conn, now).unwrap_or_default();
        if let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.resume.as_mut()) {
            r.client_seq = client_seq;
            r.from_seq = from_seq;
        }
        self.keep_session(conn, out);
        out.extend(self.record(conn).map(Effect::Remember));
        let last = resume.last_seq.max(from_seq);
        let chain = self.chain_of(conn);
        // A number from the future was not given by this room's memory (a host whose clock
        // went back, a forged one): nothing can be vouched for, so a snapshot.
        let missed: Option<Vec<Bytes>> = (resume.last_seq <= self.seq)
            .then(|| self.replay.after(last, chain))
            .flatten()
            .map(|v| v.into_iter().map(|e| e.frame.clone()).collect());
        let snapshot = match missed {
            Some(_) => None,
            None => Some(self.joined_proto(conn, String::new(), now)),
        };
        let resumed = proto::Resumed {
            you: self.participant_for(conn),
            last_client_seq: client_seq,
            complete: missed.is_some(),
            replayed: missed.as_ref().map_or(0, |m| m.len() as u32),
            snapshot,
            resume_token: token,
            server_time: now,
        };
        out.push(send_one(conn, S::Resumed(resumed)));
        let complete = missed.is_some();
        for frame in missed.into_iter().flatten() {
            out.push(Effect::Send {
                to: super::Targets::One(conn),
                frame,
                delivery: super::Delivery::Reliable,
            });
        }
        // Quota notices go to one connection and are not replayed: the current one follows
        // (a snapshot carries it already).
        if complete && let Some(m) = self.member_index_of_conn(conn) {
            let quota = self.members[m].quota.to_proto(now);
            out.push(send_one(conn, S::Quota(quota)));
        }
        self.stop_keeping_if_unneeded(out);
    }

    /// The records of kept sessions whose sockets were lost with the room's memory and whose
    /// grace is not over: they come back as suspended connections ([`Room::restore_with`]).
    pub(super) fn lost_sessions(
        &self,
        live: &[ConnRecord],
        kept: &Kept,
        now: Millis,
        out: &mut Out,
    ) -> Vec<ConnRecord> {
        let mut lost = Vec::new();
        for s in &kept.sessions {
            if live.iter().any(|r| r.conn == s.record.conn) {
                continue;
            }
            let over = s.until.is_some_and(|t| t <= now);
            if self.grace() == 0 || over || s.record.joined.is_none() {
                out.push(Effect::Keep(Keep::SessionGone(s.record.conn)));
            } else {
                lost.push(s.record.clone());
            }
        }
        lost
    }

    /// Rebuilds the resume state a host kept (the connections are back already): the replay
    /// buffer, the room's numbering, and each session: attached to its live connection, or
    /// suspended from `now` (its socket went with the room's memory).
    pub(super) fn restore_kept(&mut self, kept: Kept, lost: &[ConnId], now: Millis, out: &mut Out) {
        let mut replay = kept.replay;
        replay.sort_by_key(|e| e.seq);
        replay.dedup_by_key(|e| e.seq);
        self.seq = first_seq(now);
        self.replay.complete_after = match replay.first() {
            Some(e) => e.seq.saturating_sub(1),
            None => self.seq,
        };
        for e in replay {
            self.seq = self.seq.max(e.seq);
            self.replay.push(e);
        }
        let grace = self.grace();
        for s in kept.sessions {
            let conn = s.record.conn;
            if self.conns.get(&conn).is_none_or(|c| c.joined.is_none()) {
                continue;
            }
            let live = !lost.contains(&conn);
            self.seq = self.seq.max(s.from_seq);
            let Some(mut r) = Resumable::of(&s, 0) else {
                out.push(Effect::Keep(Keep::SessionGone(conn)));
                continue;
            };
            r.client_seq = s.client_seq.max(self.replay.origin_seq(r.chain));
            r.until = if live {
                None
            } else {
                Some(s.until.unwrap_or(now + grace).min(now + grace))
            };
            // A grace period that starts now is kept: a host that loses the room's memory again
            // before it ends (the edge hibernates when idle) must not start it over at each wake.
            let starts_now = !live && s.until != r.until;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.resume = Some(r);
            }
            if starts_now {
                self.keep_session(conn, out);
            }
        }
        // Until the host says how it keeps entries ([`Room::keep_replay`], right after the
        // restore), what the rebuild itself broadcasts (a crown whose owner's grace ended) is
        // offered to it whenever someone may still resume.
        self.keeping = self.durability == ReplayDurability::Always || self.any_suspended();
    }

    /// Every record the host is told to remember of a connection with a session is kept with
    /// the session too (a suspended connection comes back with its latest profile).
    pub(super) fn keep_remembered(&mut self, out: &mut Out) {
        let conns: Vec<ConnId> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Remember(r) => Some(r.conn),
                _ => None,
            })
            .filter(|c| {
                !out.iter()
                    .any(|e| matches!(e, Effect::Keep(Keep::Session(s)) if s.record.conn == *c))
            })
            .collect();
        for conn in conns {
            self.keep_session(conn, out);
        }
    }
}

fn resume_failed(out: &mut Out, conn: ConnId, reason: ResumeFailure, message: &str) {
    out.push(send_one(
        conn,
        S::ResumeFailed(proto::ResumeFailed {
            reason: reason as i32,
            message: message.into(),
        }),
    ));
}
