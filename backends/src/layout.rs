//! Where each kind of data lives in the configured backends (docs/architecture.md §5), in one place so the
//! edge and the native fallback write the same shapes and can share one database.
//!
//! MongoDB (database `MONGODB_DATABASE`, default `pianorhythm`):
//! - `accounts`: `_id` = user id (`user:<normalized name>`); username, tag, usertag, email,
//!   password (PBKDF2 hash record), roles, name, color, status, created_at, updated_at.
//! - `rooms`: `_id` = room name; kind, settings, password (hash), crown, bans, mutes, and
//!   `updated_at`; each field is `$set` as it changes.
//! - `chat`: `_id` = `<deployment>/<room>/<message id>`; room, deployment, id, time,
//!   participant_id, user_id, name, color, text; `deleted_at` / `cleared_at` once removed (the
//!   archive keeps what the room forgot).
//! - `user_stats`: `_id` = `<deployment>/<room>/<user id>`; user_id, room, deployment and the
//!   running totals notes_played, chat_messages, joins, last_seen, written with `$max` (a total
//!   only grows, so a late or repeated write never lowers it). A user's overall stats are the
//!   sum over their documents ([`user_stats_pipeline`]).
//!
//! Redis (keys under `REDIS_KEY_PREFIX`, default `pr:`; each deployment writes its own keys,
//! so two deployments' rooms of one name ("lobby") never overwrite each other, and a
//! deployment that vanishes leaves nothing behind for longer than [`PRESENCE_TTL_SECS`]):
//! - `deployments` set: every deployment that ever wrote presence or a room (readers start here).
//! - `presence:<deployment>:<room>` hash: user id → `{room, name, color, since, deployment}`.
//! - `online:<deployment>` hash: `<user id> <room>` → the same JSON.
//! - `rooms:<deployment>` hash: room name → the room's directory summary plus `deployment`
//!   (listed rooms only: visible and not empty).
//!
//! Readers ([`network_rooms`], [`network_online`]) show a player's room only when it is listed:
//! who is online is public, which hidden room they are in is not.
//! - `revoked:<sid>`: user id, expiring with the last access token the session could have had.
//! - `rate:<scope>:<client>:<window>`: request counters (written directly, not through the
//!   outbox: a limit must be read where it is counted).

use crate::outbox::Op;
use crate::redis::{Command, cmd};
use piano_core::lobby::Summary;
use piano_core::room::stored::{Change, ChatRecord};
use serde_json::{Value, json};

pub const ACCOUNTS: &str = "accounts";
pub const ROOMS: &str = "rooms";
pub const CHAT: &str = "chat";
pub const USER_STATS: &str = "user_stats";

/// A user's running totals in one room (kept by the room's host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsTotals {
    pub notes_played: u64,
    pub chat_messages: u64,
    pub joins: u64,
    pub last_seen: u64,
    /// Time spent in the room as a participant, ms (older documents have none: 0).
    #[serde(default)]
    pub played_ms: u64,
}

pub fn user_stats(deployment: &str, room: &str, user_id: &str, t: &StatsTotals) -> Op {
    Op::upsert(
        USER_STATS,
        json!({ "_id": format!("{deployment}/{room}/{user_id}") }),
        json!({
            "$max": { "notes_played": t.notes_played, "chat_messages": t.chat_messages,
                      "joins": t.joins, "last_seen": t.last_seen, "played_ms": t.played_ms },
            "$setOnInsert": { "user_id": user_id, "room": room, "deployment": deployment },
        }),
    )
}

/// The aggregation that sums a user's stats over every room and deployment.
pub fn user_stats_pipeline(user_id: &str) -> Value {
    json!([
        { "$match": { "user_id": user_id } },
        { "$group": {
            "_id": "$user_id",
            "notes_played": { "$sum": "$notes_played" },
            "chat_messages": { "$sum": "$chat_messages" },
            "joins": { "$sum": "$joins" },
            "played_ms": { "$sum": "$played_ms" },
            "rooms": { "$sum": 1 },
            "last_seen": { "$max": "$last_seen" },
        } },
    ])
}

/// Presence entries also expire, so a deployment that vanishes without saying goodbye does not
/// leave players "online" for ever; rooms rewrite them on every join.
pub const PRESENCE_TTL_SECS: u64 = 24 * 3600;

/// Redis key names under the deployment's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn deployments(&self) -> String {
        format!("{}deployments", self.prefix)
    }
    pub fn presence(&self, deployment: &str, room: &str) -> String {
        format!("{}presence:{deployment}:{room}", self.prefix)
    }
    pub fn online(&self, deployment: &str) -> String {
        format!("{}online:{deployment}", self.prefix)
    }
    pub fn rooms(&self, deployment: &str) -> String {
        format!("{}rooms:{deployment}", self.prefix)
    }
    pub fn revoked(&self, sid: &str) -> String {
        format!("{}revoked:{sid}", self.prefix)
    }
    pub fn rate(&self, scope: &str, client: &str, window: u64) -> String {
        format!("{}rate:{scope}:{client}:{window}", self.prefix)
    }
}

pub fn chat_id(deployment: &str, room: &str, id: u64) -> String {
    format!("{deployment}/{room}/{id}")
}

/// The MongoDB write mirroring one change of a room's durable state.
pub fn room_change(deployment: &str, room: &str, change: &Change, now: u64) -> Op {
    let set_field = |field: &str, value: Value| {
        Op::upsert(
            ROOMS,
            json!({ "_id": room }),
            json!({ "$set": { field: value, "updated_at": now },
                    "$setOnInsert": { "kind": piano_core::room::stored::RoomKind::of(room).as_str() } }),
        )
    };
    match change {
        Change::Settings(s) => set_field("settings", json!(s)),
        Change::Password(p) => set_field("password", json!(p)),
        Change::Crown(c) => set_field("crown", json!(c)),
        Change::Bans(b) => set_field("bans", json!(b)),
        Change::Mutes(m) => set_field("mutes", json!(m)),
        Change::ChatAppended(r) => chat_appended(deployment, room, r),
        // A message that never reached the archive (deleted before delivery) gets no document:
        // the update only marks existing ones.
        Change::ChatDeleted(id) => Op::update_many(
            CHAT,
            json!({ "_id": chat_id(deployment, room, *id) }),
            json!({ "$set": { "deleted_at": now } }),
        ),
        Change::ChatCleared => Op::update_many(
            CHAT,
            json!({ "room": room, "deployment": deployment, "cleared_at": { "$exists": false } }),
            json!({ "$set": { "cleared_at": now } }),
        ),
        // The room was never configured and its last player left (issue 13): the shared
        // document only holds who came first, so that is reset; nothing is deleted (some
        // Data API gateways mishandle deleteOne).
        Change::Discard => set_field("crown", json!(piano_core::room::stored::Crown::default())),
    }
}

/// Inserted once: a redelivery finds the document and changes nothing.
fn chat_appended(deployment: &str, room: &str, r: &ChatRecord) -> Op {
    Op::upsert(
        CHAT,
        json!({ "_id": chat_id(deployment, room, r.id) }),
        json!({ "$setOnInsert": {
            "room": room, "deployment": deployment, "id": r.id, "time": r.time,
            "participant_id": r.participant_id, "user_id": r.user_id, "name": r.name,
            "color": r.color, "text": r.text,
        } }),
    )
}

/// A new account: inserted only if no account of that id exists, so a registration racing
/// one on another deployment never overwrites it (the loser's account stays local).
pub fn account_created(user_id: &str, fields: Value, now: u64) -> Op {
    let mut doc = match fields {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    doc.remove("_id");
    doc.insert("updated_at".into(), now.into());
    Op::upsert(
        ACCOUNTS,
        json!({ "_id": user_id }),
        json!({ "$setOnInsert": doc }),
    )
}

/// A change to an existing account (profile, roles): applied only to the document of the same
/// registration (same `tag`), never upserted, so it cannot take over an account of the same
/// name that another deployment registered first.
pub fn account_updated(user_id: &str, tag: &str, fields: Value, now: u64) -> Op {
    let mut set = match fields {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    for immutable in ["_id", "tag", "username", "usertag", "created_at"] {
        set.remove(immutable);
    }
    set.insert("updated_at".into(), now.into());
    Op::Mongo {
        action: crate::outbox::MongoAction::UpdateOne,
        collection: ACCOUNTS.into(),
        filter: json!({ "_id": user_id, "tag": tag }),
        update: json!({ "$set": set }),
        upsert: false,
    }
}

/// The whole account document, `$set` on every change (profile, roles, password). Prefer
/// [`account_created`] and [`account_updated`], which cannot overwrite another deployment's
/// account of the same name.
pub fn account(user_id: &str, fields: Value, now: u64) -> Op {
    let mut set = match fields {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    set.remove("_id");
    set.insert("updated_at".into(), now.into());
    Op::upsert(ACCOUNTS, json!({ "_id": user_id }), json!({ "$set": set }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry<'a> {
    pub room: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
    pub color: &'a str,
}

pub fn presence_joined(keys: &Keys, deployment: &str, p: &PresenceEntry<'_>, now: u64) -> Op {
    let value = json!({ "room": p.room, "name": p.name, "color": p.color, "since": now,
                        "deployment": deployment })
    .to_string();
    let room_key = keys.presence(deployment, p.room);
    let online_key = keys.online(deployment);
    let ttl = PRESENCE_TTL_SECS.to_string();
    Op::redis(vec![
        cmd(["HSET", &room_key, p.user_id, &value]),
        cmd(["EXPIRE", &room_key, &ttl]),
        cmd([
            "HSET",
            &online_key,
            &online_field(p.user_id, p.room),
            &value,
        ]),
        cmd(["EXPIRE", &online_key, &ttl]),
        cmd(["SADD", &keys.deployments(), deployment]),
    ])
}

pub fn presence_left(keys: &Keys, deployment: &str, room: &str, user_id: &str) -> Op {
    Op::redis(vec![
        cmd(["HDEL", &keys.presence(deployment, room), user_id]),
        cmd([
            "HDEL",
            &keys.online(deployment),
            &online_field(user_id, room),
        ]),
    ])
}

/// User ids contain no spaces (`user:<name>`, `guest:<id>`), so the first space splits.
pub fn online_field(user_id: &str, room: &str) -> String {
    format!("{user_id} {room}")
}

/// A session was ended: remember it as long as an access token of it could still be presented.
pub fn session_revoked(keys: &Keys, sid: &str, user_id: &str, ttl_secs: u64) -> Op {
    Op::redis(vec![cmd([
        "SET",
        &keys.revoked(sid),
        user_id,
        "EX",
        &ttl_secs.max(1).to_string(),
    ])])
}

/// A listed room's entry in this deployment's index (refreshing the index's expiry).
pub fn room_listed(keys: &Keys, deployment: &str, summary: &Summary) -> Vec<Command> {
    let mut value = json!(summary);
    if let Value::Object(m) = &mut value {
        m.insert("deployment".into(), deployment.into());
    }
    let key = keys.rooms(deployment);
    vec![
        cmd(["HSET", &key, &summary.name, &value.to_string()]),
        cmd(["EXPIRE", &key, &PRESENCE_TTL_SECS.to_string()]),
        cmd(["SADD", &keys.deployments(), deployment]),
    ]
}

pub fn room_unlisted(keys: &Keys, deployment: &str, name: &str) -> Vec<Command> {
    vec![cmd(["HDEL", &keys.rooms(deployment), name])]
}

/// The commands that read the shared index back: `SMEMBERS deployments` first, then, for each
/// deployment `d` it names, [`network_reads`]`(keys, d)`.
pub fn network_reads(keys: &Keys, deployment: &str) -> [Command; 2] {
    [
        cmd(["HGETALL", &keys.rooms(deployment)]),
        cmd(["HGETALL", &keys.online(deployment)]),
    ]
}

/// One deployment's `HGETALL` answers (flat `[field, value, …]`), as read by [`network_reads`].
#[derive(Debug, Clone, Default)]
pub struct NetworkSnapshot {
    pub rooms: Vec<String>,
    pub online: Vec<String>,
}

fn pairs(flat: &[String]) -> impl Iterator<Item = (&str, Value)> {
    flat.chunks_exact(2)
        .filter_map(|p| Some((p[0].as_str(), serde_json::from_str::<Value>(&p[1]).ok()?)))
}

/// Every deployment's listed rooms, busiest first.
pub fn network_rooms(snapshots: &[NetworkSnapshot]) -> Vec<Value> {
    let mut rooms: Vec<Value> = snapshots
        .iter()
        .flat_map(|s| pairs(&s.rooms).map(|(_, v)| v))
        .filter(Value::is_object)
        .collect();
    rooms.sort_by(|a, b| {
        let players = |v: &Value| v["players"].as_u64().unwrap_or(0);
        players(b)
            .cmp(&players(a))
            .then_with(|| a["name"].as_str().cmp(&b["name"].as_str()))
    });
    rooms
}

/// Everyone online on every deployment: `{user_id, name, color, since, deployment, room}`,
/// with `room` null unless the room is listed (a hidden room's name is not for everyone).
pub fn network_online(snapshots: &[NetworkSnapshot]) -> Vec<Value> {
    let mut users = Vec::new();
    for s in snapshots {
        let listed: std::collections::HashSet<&str> =
            s.rooms.chunks_exact(2).map(|p| p[0].as_str()).collect();
        for (field, v) in pairs(&s.online) {
            let (Some((user_id, room)), Value::Object(mut m)) = (field.split_once(' '), v) else {
                continue;
            };
            m.insert("user_id".into(), user_id.into());
            m.insert(
                "room".into(),
                if listed.contains(room) {
                    room.into()
                } else {
                    Value::Null
                },
            );
            users.push(Value::Object(m));
        }
    }
    users.sort_by(|a, b| {
        (
            a["deployment"].as_str(),
            a["room"].as_str(),
            a["user_id"].as_str(),
        )
            .cmp(&(
                b["deployment"].as_str(),
                b["room"].as_str(),
                b["user_id"].as_str(),
            ))
    });
    users
}

/// The key under which a newer op makes an older queued one redundant, so an outbox that backs
/// up during an outage holds one write per document field rather than every intermediate one:
/// a later `$set`/`$max` of the same fields of the same document, a later join or leave of the
/// same user in the same room. Inserts (chat), `updateMany` and other Redis writes never
/// supersede anything.
pub fn supersede_key(keys: &Keys, op: &Op) -> Option<String> {
    match op {
        Op::Mongo {
            action: crate::outbox::MongoAction::UpdateOne,
            collection,
            filter,
            update,
            ..
        } => {
            let filter = filter.as_object()?;
            let id = filter.get("_id")?.as_str()?;
            if filter.len() != 1 {
                return None;
            }
            let mut fields: Vec<String> = update
                .as_object()?
                .iter()
                .filter(|(operator, _)| matches!(operator.as_str(), "$set" | "$max"))
                .flat_map(|(operator, fields)| {
                    fields
                        .as_object()
                        .into_iter()
                        .flat_map(|m| m.keys())
                        .filter(|k| k.as_str() != "updated_at")
                        .map(move |k| format!("{operator}.{k}"))
                })
                .collect();
            if fields.is_empty() {
                return None;
            }
            fields.sort();
            Some(format!("mongo/{collection}/{id}/{}", fields.join(",")))
        }
        Op::Redis { commands } => {
            let first = commands.first()?;
            let (name, key, field) = (first.first()?, first.get(1)?, first.get(2)?);
            let presence = format!("{}presence:", keys.prefix);
            (matches!(name.as_str(), "HSET" | "HDEL") && key.starts_with(&presence))
                .then(|| format!("redis/{key}/{field}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_documents_are_keyed_by_deployment_room_and_id() {
        let r = ChatRecord {
            id: 7,
            time: 1,
            participant_id: "p".into(),
            user_id: "user:a".into(),
            name: "A".into(),
            color: "#fff".into(),
            text: "hi".into(),
        };
        let Op::Mongo {
            filter,
            update,
            upsert,
            ..
        } = room_change("edge", "r", &Change::ChatAppended(r), 5)
        else {
            panic!("chat goes to MongoDB");
        };
        assert_eq!(filter, json!({"_id": "edge/r/7"}));
        assert!(upsert);
        assert_eq!(update["$setOnInsert"]["text"], "hi");
    }

    #[test]
    fn later_writes_of_the_same_fields_supersede_earlier_ones() {
        let keys = Keys {
            prefix: "p:".into(),
        };
        let crown = |owner: &str| {
            let c = piano_core::room::stored::Crown {
                owner_user: Some(owner.into()),
                ..Default::default()
            };
            room_change("e", "r", &Change::Crown(c), 1)
        };
        assert_eq!(
            supersede_key(&keys, &crown("a")),
            supersede_key(&keys, &crown("b"))
        );
        assert!(supersede_key(&keys, &crown("a")).is_some());
        let settings = room_change(
            "e",
            "r",
            &Change::Settings(piano_core::room::stored::Settings::defaults(
                piano_core::room::stored::RoomKind::Normal,
            )),
            1,
        );
        assert_ne!(
            supersede_key(&keys, &settings),
            supersede_key(&keys, &crown("a"))
        );
        let chat = room_change(
            "e",
            "r",
            &Change::ChatAppended(ChatRecord {
                id: 1,
                time: 1,
                participant_id: "p".into(),
                user_id: "u".into(),
                name: "n".into(),
                color: "c".into(),
                text: "t".into(),
            }),
            1,
        );
        assert_eq!(supersede_key(&keys, &chat), None, "chat is never coalesced");
        assert_eq!(
            supersede_key(&keys, &room_change("e", "r", &Change::ChatCleared, 1)),
            None
        );
        let p = PresenceEntry {
            room: "r",
            user_id: "u",
            name: "n",
            color: "c",
        };
        assert_eq!(
            supersede_key(&keys, &presence_joined(&keys, "e", &p, 1)),
            supersede_key(&keys, &presence_left(&keys, "e", "r", "u"))
        );
        let stats = |n| {
            user_stats(
                "e",
                "r",
                "u",
                &StatsTotals {
                    notes_played: n,
                    ..Default::default()
                },
            )
        };
        assert_eq!(
            supersede_key(&keys, &stats(1)),
            supersede_key(&keys, &stats(2))
        );
        assert_eq!(
            supersede_key(&keys, &session_revoked(&keys, "s", "u", 9)),
            None
        );
    }

    #[test]
    fn presence_is_written_and_removed_under_the_prefix() {
        let keys = Keys {
            prefix: "t:".into(),
        };
        let p = PresenceEntry {
            room: "r",
            user_id: "user:a",
            name: "A",
            color: "#fff",
        };
        let Op::Redis { commands } = presence_joined(&keys, "edge", &p, 9) else {
            panic!()
        };
        assert_eq!(commands[0][..3], ["HSET", "t:presence:edge:r", "user:a"]);
        assert_eq!(commands[2][..3], ["HSET", "t:online:edge", "user:a r"]);
        assert_eq!(commands[4], ["SADD", "t:deployments", "edge"]);
        let Op::Redis { commands } = presence_left(&keys, "edge", "r", "user:a") else {
            panic!()
        };
        assert_eq!(commands[1], ["HDEL", "t:online:edge", "user:a r"]);
        // A prefix that happens to contain "presence:" does not make other writes supersede.
        let odd = Keys {
            prefix: "presence:".into(),
        };
        let summary = Summary {
            name: "x".into(),
            players: 1,
            capacity: 20,
            visible: true,
            locked: false,
            owner_name: String::new(),
            kind: piano_core::room::stored::RoomKind::Normal,
            last_activity: 0,
        };
        assert_eq!(
            supersede_key(&odd, &Op::redis(room_listed(&odd, "edge", &summary))),
            None
        );
    }

    #[test]
    fn the_network_views_merge_deployments_and_hide_unlisted_rooms() {
        let flat = |pairs: &[(&str, Value)]| -> Vec<String> {
            pairs
                .iter()
                .flat_map(|(k, v)| [k.to_string(), v.to_string()])
                .collect()
        };
        let edge = NetworkSnapshot {
            rooms: flat(&[(
                "lobby",
                json!({"name": "lobby", "players": 2, "deployment": "edge"}),
            )]),
            online: flat(&[
                ("user:a lobby", json!({"name": "A", "deployment": "edge"})),
                ("user:b secret", json!({"name": "B", "deployment": "edge"})),
                ("broken", json!({"name": "C"})),
            ]),
        };
        let fallback = NetworkSnapshot {
            rooms: flat(&[
                (
                    "lobby",
                    json!({"name": "lobby", "players": 5, "deployment": "fallback"}),
                ),
                ("junk", json!("not an object")),
            ]),
            online: vec!["user:c lobby".into(), "not json".into()],
        };
        let rooms = network_rooms(&[edge.clone(), fallback.clone()]);
        let order: Vec<_> = rooms
            .iter()
            .map(|r| (r["deployment"].as_str(), r["players"].as_u64()))
            .collect();
        assert_eq!(
            order,
            [(Some("fallback"), Some(5)), (Some("edge"), Some(2))]
        );
        let online = network_online(&[edge, fallback]);
        let seen: Vec<_> = online
            .iter()
            .map(|u| (u["user_id"].as_str(), u["room"].as_str()))
            .collect();
        assert_eq!(
            seen,
            [(Some("user:b"), None), (Some("user:a"), Some("lobby"))]
        );
    }
}
