//! Analytics events, the same on both hosts: derived here from what the room already hands
//! over ([`Effect::Stats`]: per-user activity, joins, leaves, time played, refused joins), rendered
//! as NDJSON, and batched for an HTTP sink by a bounded [`Batcher`] that is told the time
//! (sans-I/O: the host owns the clock, the socket and the timer; it only delivers batches).
//!
//! One event is one JSON object on one line (the schema: `docs/operating-analytics-envs.md`):
//! `{"v":1,"event":"join","ts":…,"env":…,"deployment":…,"room":…,"user":…,"guest":false,"count":1}`.
//! Guests appear under their random `guest:` id; nothing about them is kept by the hosts.
//!
//! [`Effect::Stats`]: crate::room::Effect::Stats

use crate::Millis;
use crate::room::StatsDelta;
use std::collections::{BTreeMap, VecDeque};

/// The schema version every event carries (`v`).
pub const SCHEMA_VERSION: u32 = 1;

/// What happened, per user and room, over one hand-over of the room's activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Joins (a session in the room begins); `count` of them.
    Join,
    /// Leaves (a session ends); `count` of them.
    Leave,
    /// Joins the room refused (full, banned, wrong password, rate limited); `count` of them.
    JoinFailed,
    /// Notes relayed, chat messages posted and time spent in the room since the last event.
    Activity {
        notes: u64,
        chats: u64,
        played_ms: u64,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::JoinFailed => "join_failed",
            Kind::Activity { .. } => "activity",
        }
    }
}

/// Where the events come from: the same on every event of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// `ENVIRONMENT`: dev, staging or production.
    pub env: String,
    /// `DEPLOYMENT_ID`: the server (or replica, or edge deployment) name.
    pub deployment: String,
}

/// One analytics event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// When the room handed the activity over (ms since the epoch).
    pub ts: Millis,
    pub room: String,
    pub user: String,
    /// The count of a join, leave or refused join (1 or more); 1 for activity.
    pub count: u64,
}

impl Event {
    pub fn guest(&self) -> bool {
        is_guest(&self.user)
    }

    /// The event as one NDJSON line (with its `\n`).
    pub fn ndjson(&self, src: &Source) -> String {
        let mut v = serde_json::json!({
            "v": SCHEMA_VERSION,
            "event": self.kind.name(),
            "ts": self.ts,
            "env": src.env,
            "deployment": src.deployment,
            "room": self.room,
            "user": self.user,
            "guest": self.guest(),
            "count": self.count,
        });
        if let Kind::Activity {
            notes,
            chats,
            played_ms,
        } = self.kind
        {
            v["notes"] = notes.into();
            v["chats"] = chats.into();
            v["played_ms"] = played_ms.into();
        }
        let mut line = v.to_string();
        line.push('\n');
        line
    }
}

/// A member's account key (`user:<key>`, the normalized username), `None` for a guest or any
/// other id: the one rule for whose activity gets stored totals, on both hosts.
pub fn member_key(user_id: &str) -> Option<&str> {
    user_id.strip_prefix("user:").filter(|k| !k.is_empty())
}

/// Whether a user id is a member's ([`member_key`]).
pub fn is_member(user_id: &str) -> bool {
    member_key(user_id).is_some()
}

/// Whether a user id is a guest's (`guest:<random hex>`, `account::tokens`): guests' totals are
/// never stored.
pub fn is_guest(user_id: &str) -> bool {
    user_id.starts_with("guest:")
}

/// A user's totals as `GET /api/users/{id}/stats` answers them, on every host and path (one
/// JSON form: [`UserTotals::to_json`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserTotals {
    pub notes_played: u64,
    pub chat_messages: u64,
    pub joins: u64,
    pub played_ms: u64,
    /// Rooms played in: known only from MongoDB's per-room totals (`null` otherwise).
    #[serde(default)]
    pub rooms: Option<u64>,
    /// When last active, ms since the epoch (`null`: never).
    #[serde(default)]
    pub last_seen: Option<Millis>,
}

impl UserTotals {
    /// From stored counters (`last_seen` 0: never).
    pub fn stored(notes: u64, chats: u64, joins: u64, played_ms: u64, last_seen: Millis) -> Self {
        UserTotals {
            notes_played: notes,
            chat_messages: chats,
            joins,
            played_ms,
            rooms: None,
            last_seen: (last_seen > 0).then_some(last_seen),
        }
    }

    /// From MongoDB's `user_stats` aggregation (a missing field: 0, or `null` for `last_seen`).
    pub fn from_aggregate(v: &serde_json::Value) -> Self {
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        UserTotals {
            notes_played: n("notes_played"),
            chat_messages: n("chat_messages"),
            joins: n("joins"),
            played_ms: n("played_ms"),
            rooms: Some(n("rooms")),
            last_seen: v
                .get("last_seen")
                .and_then(serde_json::Value::as_u64)
                .filter(|t| *t > 0),
        }
    }

    /// The answer's body.
    pub fn to_json(&self, user_id: &str) -> serde_json::Value {
        serde_json::json!({
            "user_id": user_id,
            "notes_played": self.notes_played,
            "chat_messages": self.chat_messages,
            "joins": self.joins,
            "played_ms": self.played_ms,
            "rooms": self.rooms,
            "last_seen": self.last_seen,
        })
    }
}

/// The events of one hand-over of a room's activity ([`Effect::Stats`]), per user in order:
/// refused joins, joins, activity, leaves.
///
/// [`Effect::Stats`]: crate::room::Effect::Stats
pub fn events(room: &str, stats: &BTreeMap<String, StatsDelta>, now: Millis) -> Vec<Event> {
    let mut out = Vec::new();
    for (user, d) in stats {
        let ev = |kind, count| Event {
            kind,
            ts: now,
            room: room.to_owned(),
            user: user.clone(),
            count,
        };
        if d.join_failures > 0 {
            out.push(ev(Kind::JoinFailed, d.join_failures));
        }
        if d.joins > 0 {
            out.push(ev(Kind::Join, d.joins));
        }
        if d.notes > 0 || d.chats > 0 || d.played_ms > 0 {
            let kind = Kind::Activity {
                notes: d.notes,
                chats: d.chats,
                played_ms: d.played_ms,
            };
            out.push(ev(kind, 1));
        }
        if d.leaves > 0 {
            out.push(ev(Kind::Leave, d.leaves));
        }
    }
    out
}

/// How a [`Batcher`] batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Events held at most; more are dropped (and counted) while the sink is slow or down.
    pub queue: usize,
    /// Events per batch at most; a full batch is due at once.
    pub batch: usize,
    /// How long the first queued event waits at most for its batch.
    pub max_wait_ms: Millis,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            queue: 10_000,
            batch: 500,
            max_wait_ms: 5_000,
        }
    }
}

/// A bounded queue of NDJSON lines cut into batches by count and by time. It never waits: a
/// full queue drops the new event, a failed delivery drops its batch, and both are counted
/// (nothing is retried: analytics must never hold a room back).
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    src: Source,
    lines: VecDeque<String>,
    /// When the oldest queued line came (the batch's deadline is `max_wait_ms` later).
    oldest: Option<Millis>,
    pub counters: Counters,
}

/// What happened to events so far (hosts export them: `/metrics`, logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events accepted into the queue.
    pub queued: u64,
    /// Events in batches the sink accepted.
    pub delivered: u64,
    /// Events dropped: queue full, or their batch failed.
    pub dropped: u64,
    /// Batches the sink refused or that could not be sent.
    pub failed_batches: u64,
}

/// One batch to POST: its NDJSON body and how many events it holds (for [`Batcher::delivered`]
/// or [`Batcher::failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub body: String,
    pub events: usize,
}

impl Batcher {
    pub fn new(src: Source, limits: BatchLimits) -> Self {
        Batcher {
            limits: BatchLimits {
                queue: limits.queue.max(1),
                batch: limits.batch.max(1),
                ..limits
            },
            src,
            lines: VecDeque::new(),
            oldest: None,
            counters: Counters::default(),
        }
    }

    /// Queues the events; those that do not fit are dropped and counted.
    pub fn push(&mut self, events: impl IntoIterator<Item = Event>, now: Millis) {
        for ev in events {
            if self.lines.len() >= self.limits.queue {
                self.counters.dropped += 1;
                continue;
            }
            self.oldest.get_or_insert(now);
            self.lines.push_back(ev.ndjson(&self.src));
            self.counters.queued += 1;
        }
    }

    /// Where the events come from (environment, deployment).
    pub fn source(&self) -> &Source {
        &self.src
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// When the next batch is due if nothing else arrives (the host's timer), like
    /// quinn-proto's `poll_timeout`.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.lines.len() >= self.limits.batch {
            return self.oldest.map(|_| 0);
        }
        self.oldest.map(|t| t + self.limits.max_wait_ms)
    }

    /// The next batch, if one is due (full, or its oldest event waited long enough), or at
    /// once with `flush` (a room or server stopping).
    pub fn poll_batch(&mut self, now: Millis, flush: bool) -> Option<Batch> {
        let due = self.poll_timeout().is_some_and(|d| d <= now);
        if self.lines.is_empty() || !(flush || due) {
            return None;
        }
        let n = self.lines.len().min(self.limits.batch);
        let body: String = self.lines.drain(..n).collect();
        self.oldest = (!self.lines.is_empty()).then_some(now);
        Some(Batch { body, events: n })
    }

    /// The sink accepted a batch.
    pub fn delivered(&mut self, batch: &Batch) {
        self.counters.delivered += batch.events as u64;
    }

    /// A batch could not be delivered: it is dropped, and counted.
    pub fn failed(&mut self, batch: &Batch) {
        self.counters.dropped += batch.events as u64;
        self.counters.failed_batches += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(f: impl FnOnce(&mut StatsDelta)) -> StatsDelta {
        let mut d = StatsDelta::default();
        f(&mut d);
        d
    }

    #[test]
    fn user_totals_have_one_json_form() {
        let embedded = UserTotals::stored(3, 1, 1, 500, 0).to_json("user:ada");
        let mongo = UserTotals::from_aggregate(&serde_json::json!({"notes_played": 3,
            "chat_messages": 1, "joins": 1, "played_ms": 500, "rooms": 2}))
        .to_json("user:ada");
        let keys = |v: &serde_json::Value| {
            v.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(keys(&embedded), keys(&mongo));
        assert_eq!(embedded["last_seen"], serde_json::Value::Null);
        assert_eq!(embedded["rooms"], serde_json::Value::Null);
        assert_eq!(mongo["rooms"], 2);
        assert_eq!(UserTotals::stored(0, 0, 0, 0, 7).last_seen, Some(7));
    }

    #[test]
    fn members_are_user_ids_with_a_key() {
        assert_eq!(member_key("user:ada"), Some("ada"));
        assert!(is_member("user:ada"));
        assert!(!is_member("user:"));
        assert!(!is_member("guest:ab12"));
        assert!(!is_member("ada"));
    }

    #[test]
    fn a_hand_over_becomes_ordered_events() {
        let mut stats = BTreeMap::new();
        stats.insert(
            "user:a".to_owned(),
            delta(|d| {
                d.joins = 1;
                d.notes = 7;
                d.chats = 2;
                d.played_ms = 1500;
                d.leaves = 1;
            }),
        );
        stats.insert("guest:ff".to_owned(), delta(|d| d.join_failures = 2));
        let ev = events("r1", &stats, 42);
        let kinds: Vec<(&str, &str, u64)> = ev
            .iter()
            .map(|e| (e.user.as_str(), e.kind.name(), e.count))
            .collect();
        assert_eq!(
            kinds,
            [
                ("guest:ff", "join_failed", 2),
                ("user:a", "join", 1),
                ("user:a", "activity", 1),
                ("user:a", "leave", 1),
            ]
        );
        let src = Source {
            env: "staging".into(),
            deployment: "d1".into(),
        };
        let line: serde_json::Value = serde_json::from_str(ev[2].ndjson(&src).trim()).unwrap();
        assert_eq!(line["event"], "activity");
        assert_eq!(line["notes"], 7);
        assert_eq!(line["chats"], 2);
        assert_eq!(line["played_ms"], 1500);
        assert_eq!(line["env"], "staging");
        assert_eq!(line["guest"], false);
        assert!(ev[0].ndjson(&src).contains("\"guest\":true"));
    }

    fn ev(user: &str) -> Event {
        Event {
            kind: Kind::Join,
            ts: 0,
            room: "r".into(),
            user: user.into(),
            count: 1,
        }
    }

    #[test]
    fn batches_by_count_and_by_time_and_drops_when_full() {
        let limits = BatchLimits {
            queue: 5,
            batch: 2,
            max_wait_ms: 100,
        };
        let mut b = Batcher::new(Source::default(), limits);
        b.push([ev("a")], 10);
        assert_eq!(b.poll_timeout(), Some(110));
        assert_eq!(b.poll_batch(50, false), None);
        let one = b.poll_batch(110, false).expect("due by time");
        assert_eq!(one.events, 1);
        assert_eq!(b.poll_timeout(), None);
        b.push((0..7).map(|i| ev(&format!("u{i}"))), 200);
        assert_eq!(b.counters.dropped, 2, "queue of 5");
        assert_eq!(b.poll_timeout(), Some(0), "a full batch is due at once");
        let two = b.poll_batch(200, false).expect("full");
        assert_eq!((two.events, two.body.lines().count()), (2, 2));
        b.failed(&two);
        b.delivered(&one);
        assert_eq!(
            b.counters,
            Counters {
                queued: 6,
                delivered: 1,
                dropped: 4,
                failed_batches: 1
            }
        );
        let rest = b.poll_batch(201, true).expect("flush");
        assert_eq!(rest.events, 2);
        assert_eq!(b.len(), 1);
    }
}
