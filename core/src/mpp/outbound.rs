//! Server → client: the room's `ServerMessage`s as MPP JSON messages.
//!
//! Several MPP messages carry the whole channel (`ch` with `ppl` after a settings or crown
//! change), while the room sends only the change; [`Channel`] mirrors what the room has said so
//! far (fed every message, as an MPP client would be) to fill them in. One mirror serves every
//! MPP connection of a room: nothing in it is per connection (a broadcast `ch` has no `p`, which
//! MPP clients treat as "you are who you were").

use super::keys;
use crate::identity::participant_id;
use crate::limits::CROWN_CLAIM_DELAY_MS;
use crate::proto::{self, note_event::Kind, server_message::Msg as S};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// MPP's history window on join.
pub const CHAT_HISTORY: usize = 32;
/// What MPP clients take as "no note quota" (the Black MIDI rooms here).
const UNLIMITED_ALLOWANCE: u64 = 1_000_000;
/// MPP's note quota period, ms; ours is scaled to it.
const MPP_QUOTA_PERIOD_MS: u64 = 2000;

/// What the room has said about itself so far, to write whole `ch` messages.
#[derive(Debug, Clone, Default)]
pub struct Channel {
    name: String,
    participants: Vec<proto::Participant>,
    settings: proto::RoomSettings,
    ownership: proto::Ownership,
    /// Each present participant's last cursor position (as sent in `m`), for `ppl` and `p`:
    /// known from the first cursor move this mirror saw (it is fed only while the room has an
    /// MPP player); bounded by the participants, as leavers are forgotten.
    pub(super) cursors: HashMap<String, (Value, Value)>,
}

impl Channel {
    pub fn new() -> Channel {
        Channel::default()
    }

    /// Brings the mirror's room name and participants in line with the room's own (a room
    /// rebuilt after hibernation has a fresh mirror).
    pub fn sync(&mut self, name: &str, participants: Vec<proto::Participant>) {
        name.clone_into(&mut self.name);
        self.participants = participants;
        self.forget_leavers();
    }

    fn forget_leavers(&mut self) {
        let present = &self.participants;
        self.cursors
            .retain(|id, _| present.iter().any(|p| &p.id == id));
    }

    /// A participant's info with its last cursor position, if known.
    fn info_of(&self, p: &proto::Participant) -> Map<String, Value> {
        let mut info = participant(p);
        if let Some((x, y)) = self.cursors.get(&p.id) {
            info.insert("x".into(), x.clone());
            info.insert("y".into(), y.clone());
        }
        info
    }

    /// The MPP messages for one server message (none when MPP has no form for it, see
    /// README "MPP clients"), updating the mirror.
    pub fn encode(&mut self, msg: &S) -> Vec<Value> {
        match msg {
            // The host answers MPP's `hi` itself ([`super::hi`]), before any room.
            S::Welcome(w) => {
                self.name.clone_from(&w.room);
                vec![]
            }
            S::Joined(j) => {
                self.name.clone_from(&j.room);
                self.participants.clone_from(&j.participants);
                self.forget_leavers();
                self.settings = j.settings.clone().unwrap_or_default();
                self.ownership = j.ownership.clone().unwrap_or_default();
                let you = j.you.as_ref().map(|p| p.id.clone());
                let skip = j.chat_history.len().saturating_sub(CHAT_HISTORY);
                let history: Vec<Value> = j.chat_history[skip..].iter().map(chat).collect();
                let mut out = vec![self.ch(you.as_deref()), json!({"m": "c", "c": history})];
                out.extend(j.quota.as_ref().map(nq));
                out
            }
            S::ParticipantJoined(proto::ParticipantJoined {
                participant: Some(p),
            })
            | S::ParticipantUpdated(proto::ParticipantUpdated {
                participant: Some(p),
            }) => {
                match self.participants.iter_mut().find(|q| q.id == p.id) {
                    Some(q) => *q = p.clone(),
                    None => self.participants.push(p.clone()),
                }
                let mut info = self.info_of(p);
                info.insert("m".into(), "p".into());
                vec![Value::Object(info)]
            }
            S::ParticipantJoined(_) | S::ParticipantUpdated(_) => vec![],
            S::ParticipantLeft(l) => {
                self.participants.retain(|p| p.id != l.participant_id);
                self.cursors.remove(&l.participant_id);
                vec![json!({"m": "bye", "p": l.participant_id})]
            }
            S::Notes(batch) => notes(batch).into_iter().collect(),
            S::Pong(p) => {
                let mut t = json!({"m": "t", "t": p.server_time});
                if p.client_time != 0.0 {
                    t["e"] = json!(p.client_time);
                }
                vec![t]
            }
            S::Error(e) => vec![super::notification("Error", &e.message)],
            S::FellBehind(f) => vec![super::fell_behind(f.skipped)],
            // MPP has no resuming: its connections never send Resume.
            S::Resumed(_) | S::ResumeFailed(_) => vec![],
            S::JoinFailed(f) => vec![super::notification("Could not join", &f.message)],
            S::Chat(c) => vec![chat(c)],
            // MPP sends `c` when chat is cleared.
            S::ChatCleared(_) => vec![json!({"m": "c", "c": []})],
            S::SettingsChanged(s) => {
                self.settings = s.settings.clone().unwrap_or_default();
                vec![self.ch(None)]
            }
            S::OwnerChanged(o) => {
                self.ownership = o.ownership.clone().unwrap_or_default();
                vec![self.ch(None)]
            }
            S::Quota(q) => vec![nq(q)],
            S::Kicked(k) => {
                let text = if k.banned_until > 0 {
                    "You were banned from this room for a while."
                } else {
                    "You were removed from this room."
                };
                vec![super::notification("Kicked", text)]
            }
            S::Cursor(c) => {
                let (x, y) = (json!(format!("{:.2}", c.x)), json!(format!("{:.2}", c.y)));
                if self.participants.iter().any(|p| p.id == c.participant_id) {
                    let at = (x.clone(), y.clone());
                    self.cursors.insert(c.participant_id.clone(), at);
                }
                vec![json!({"m": "m", "id": c.participant_id, "x": x, "y": y})]
            }
            S::RoomList(l) => vec![json!({
                "m": "ls", "c": true,
                "u": l.rooms.iter().map(summary).collect::<Vec<_>>(),
            })],
            S::RoomListChanged(d) => {
                let mut u: Vec<Value> = d.upserted.iter().map(summary).collect();
                // MPP has no removal: a room that left the list shows empty and hidden.
                u.extend(d.removed.iter().map(|name| {
                    json!({"_id": name, "id": name, "count": 0, "settings": {"visible": false}})
                }));
                vec![json!({"m": "ls", "c": false, "u": u})]
            }
            // Left out: MPP has no typing indicator, no chat deletion, and tracks its own quota.
            S::Typing(_) | S::ChatDeleted(_) | S::NotesDropped(_) => vec![],
        }
    }

    /// A whole `ch`; `you` only on the joiner's own copy.
    fn ch(&self, you: Option<&str>) -> Value {
        let ppl: Vec<Value> = self
            .participants
            .iter()
            .map(|p| Value::Object(self.info_of(p)))
            .collect();
        let mut ch = json!({"m": "ch", "ch": self.info(), "ppl": ppl});
        if let Some(you) = you {
            ch["p"] = you.into();
        }
        ch
    }

    fn info(&self) -> Value {
        let s = &self.settings;
        let lobby = s.kind == "lobby";
        let mut settings = json!({
            "visible": s.visible,
            "chat": !s.owner_only_chat,
            "crownsolo": s.owner_only_play,
            "limit": s.max_players,
            "color": s.color,
            "no cussing": s.profanity_filter,
            "noindex": false,
        });
        if lobby {
            settings["lobby"] = true.into();
        }
        let mut info = json!({
            "_id": self.name, "id": self.name,
            "count": self.participants.len(),
            "settings": settings,
        });
        if let Some(crown) = crown(&self.ownership).filter(|_| !lobby) {
            info["crown"] = crown;
        }
        info
    }
}

/// Participant info: `id` and `_id` are both our participant id (stable per user in a room),
/// as MPP keeps them identical.
pub fn participant(p: &proto::Participant) -> Map<String, Value> {
    let mut info = Map::new();
    info.insert("_id".into(), p.id.clone().into());
    info.insert("id".into(), p.id.clone().into());
    info.insert("name".into(), p.name.clone().into());
    info.insert("color".into(), p.color.clone().into());
    // MPP's "not moved yet" position.
    info.insert("x".into(), 200.into());
    info.insert("y".into(), 100.into());
    info.insert("afk".into(), false.into());
    if let Some(tag) = tag(&p.roles) {
        info.insert("tag".into(), tag);
    }
    info
}

/// MPP's tag for the most notable role.
fn tag(roles: &[String]) -> Option<Value> {
    let has = |r: &str| roles.iter().any(|x| x == r);
    let (text, color) = if has("admin") {
        ("ADMIN", "#a00")
    } else if has("moderator") {
        ("MOD", "#0a0")
    } else if has("bot") {
        ("BOT", "#55f")
    } else {
        return None;
    };
    Some(json!({"text": text, "color": color}))
}

fn crown(o: &proto::Ownership) -> Option<Value> {
    let pos = json!({"x": 50, "y": 50});
    if !o.owner_id.is_empty() {
        return Some(json!({
            "userId": o.owner_id, "participantId": o.owner_id,
            "time": 0, "startPos": pos, "endPos": pos,
        }));
    }
    if o.previous_owner_user_id.is_empty() {
        return None;
    }
    // Dropped: no participantId; MPP's clients count the same 15 s from `time` as we do.
    Some(json!({
        "userId": participant_id(&o.previous_owner_user_id),
        "time": o.claimable_at.saturating_sub(CROWN_CLAIM_DELAY_MS),
        "startPos": pos, "endPos": pos,
    }))
}

fn chat(c: &proto::ChatMessage) -> Value {
    json!({
        "m": "a",
        "id": c.id.to_string(),
        "t": c.time,
        "a": c.text,
        "p": {"_id": c.participant_id, "id": c.participant_id, "name": c.name, "color": c.color},
    })
}

fn nq(q: &proto::Quota) -> Value {
    let (allowance, max) = if q.unlimited || q.max == 0 {
        (UNLIMITED_ALLOWANCE, UNLIMITED_ALLOWANCE * 3)
    } else {
        let per = u64::from(q.interval_ms.max(1));
        (
            u64::from(q.allowance) * MPP_QUOTA_PERIOD_MS / per,
            u64::from(q.max),
        )
    };
    json!({"m": "nq", "allowance": allowance, "max": max, "maxHistLen": 3})
}

/// An MPP `n`, or `None` when nothing in the batch has an MPP form (sustain and other controls,
/// program changes, pitch bends, notes off the 88 keys are left out).
fn notes(batch: &proto::NoteBatch) -> Option<Value> {
    let n: Vec<Value> = batch
        .events
        .iter()
        .filter_map(|e| {
            let mut note = match e.kind.as_ref()? {
                Kind::NoteOn(on) => {
                    json!({"n": keys::name(on.note)?, "v": keys::mpp_velocity(on.velocity)})
                }
                Kind::NoteOff(off) => json!({"n": keys::name(off.note)?, "s": 1}),
                _ => return None,
            };
            if e.delay > 0 {
                note["d"] = e.delay.into();
            }
            Some(note)
        })
        .collect();
    (!n.is_empty()).then(|| json!({"m": "n", "t": batch.time, "p": batch.sender_id, "n": n}))
}

/// A directory entry as MPP channel info (the list knows no colours or crown holders' ids).
fn summary(r: &proto::RoomSummary) -> Value {
    let mut settings =
        json!({"visible": r.visible, "limit": r.capacity, "chat": true, "crownsolo": false});
    if r.kind == "lobby" {
        settings["lobby"] = true.into();
    }
    json!({"_id": r.name, "id": r.name, "count": r.players, "settings": settings})
}
