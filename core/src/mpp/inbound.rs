//! Client → server: a text frame into typed MPP messages ([`parse_frame`]), and each message into
//! what the room (or the host) does with it ([`MppIn::into_action`]).
//!
//! Parsing is lenient where MPP's own clients are (numbers sent as strings, `limit: "50"`) and
//! strict elsewhere: a message with a wrong type is refused alone, with a typed error, and the
//! other messages of its frame still count.

use super::keys;
use super::{FrameError, MAX_MESSAGES_PER_FRAME, MppError};
use crate::limits::MAX_FRAME_BYTES;
use crate::proto::{self, client_message::Msg as C, note_event::Kind};
use serde_json::{Map, Value};

/// Channel settings as MPP sends them (`ch`'s `set`, `chset`); absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelSettings {
    pub visible: Option<bool>,
    pub chat: Option<bool>,
    pub crownsolo: Option<bool>,
    pub limit: Option<u32>,
    pub color: Option<String>,
    pub no_cussing: Option<bool>,
}

/// One note event of an MPP `n` message.
#[derive(Debug, Clone, PartialEq)]
pub struct MppNote {
    pub name: String,
    /// Delay after the message's `t`, ms.
    pub delay: f64,
    /// `Some(v)` for a note start with velocity `v` (0–1), `None` for a stop (`s: 1`).
    pub velocity: Option<f64>,
}

/// A client → server MPP message, as MPP defines it.
#[derive(Debug, Clone, PartialEq)]
pub enum MppIn {
    Hi {
        token: Option<String>,
    },
    Bye,
    Ch {
        name: String,
        set: Option<ChannelSettings>,
    },
    Chown {
        id: Option<String>,
    },
    Chset {
        set: ChannelSettings,
    },
    A {
        message: String,
    },
    N {
        t: f64,
        notes: Vec<MppNote>,
    },
    M {
        x: f64,
        y: f64,
    },
    T {
        e: Option<f64>,
    },
    SubscribeLs,
    UnsubscribeLs,
    Userset {
        name: Option<String>,
        color: Option<String>,
    },
    Kickban {
        id: String,
        ms: f64,
    },
    Unban {
        id: String,
    },
    Dm {
        id: String,
        message: String,
    },
    Custom,
    SubscribeCustom,
    UnsubscribeCustom,
    Devices,
}

/// What the host does with one MPP message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Sign in (host: check the token, or make a guest) and answer with [`super::hi`].
    Hi { token: Option<String> },
    /// Close the socket normally.
    Bye,
    /// Join (or create with `join.create_settings`) the room `room`, leaving the current one.
    Join { room: String, join: proto::Join },
    /// Feed this message to the current room, as a protobuf client's.
    Room(C),
    /// Something our rooms do not have: answer with this `notification` (see
    /// [`super::notification`]); the socket stays open.
    Unsupported(&'static str),
}

/// Parses one text frame: a JSON array of `{"m": ...}` objects. A frame-level failure refuses the
/// whole frame; otherwise each message is parsed on its own.
pub fn parse_frame(text: &str) -> Result<Vec<Result<MppIn, MppError>>, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len: text.len() });
    }
    Ok(frame_items(text)?.iter().map(parse_message).collect())
}

/// A frame's messages, each still to be parsed on its own.
pub(super) fn frame_items(text: &str) -> Result<Vec<Value>, FrameError> {
    // serde_json bounds nesting depth (128), so hostile nesting is an error, not a stack overflow.
    let value: Value =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(FrameError::NotArray);
    };
    if items.is_empty() {
        return Err(FrameError::Empty);
    }
    if items.len() > MAX_MESSAGES_PER_FRAME {
        return Err(FrameError::TooManyMessages { count: items.len() });
    }
    Ok(items)
}

/// Parses one message object.
pub fn parse_message(item: &Value) -> Result<MppIn, MppError> {
    let Value::Object(o) = item else {
        return Err(MppError::NotObject);
    };
    let m = match o.get("m") {
        Some(Value::String(m)) => m.as_str(),
        _ => return Err(MppError::MissingType),
    };
    let f = Fields {
        o,
        m: static_name(m),
    };
    Ok(match m {
        "hi" => MppIn::Hi {
            token: f.opt_str("token")?,
        },
        "bye" => MppIn::Bye,
        "ch" => MppIn::Ch {
            name: f.str("_id")?,
            set: match o.get("set") {
                None | Some(Value::Null) => None,
                Some(_) => Some(f.settings()?),
            },
        },
        "chown" => MppIn::Chown {
            id: f.opt_str("id")?,
        },
        "chset" => MppIn::Chset { set: f.settings()? },
        "a" => MppIn::A {
            message: f.str("message")?,
        },
        "n" => MppIn::N {
            t: f.num("t")?,
            notes: f.notes()?,
        },
        "m" => MppIn::M {
            x: f.num("x")?,
            y: f.num("y")?,
        },
        "t" => MppIn::T { e: f.opt_num("e")? },
        "+ls" => MppIn::SubscribeLs,
        "-ls" => MppIn::UnsubscribeLs,
        "userset" => {
            let set = f.object("set")?;
            let s = Fields {
                o: set,
                m: "userset",
            };
            MppIn::Userset {
                name: s.opt_str("name")?,
                color: s.opt_str("color")?,
            }
        }
        "kickban" => MppIn::Kickban {
            id: f.str("_id")?,
            ms: f.num("ms")?,
        },
        "unban" => MppIn::Unban { id: f.str("_id")? },
        "dm" => MppIn::Dm {
            id: f.str("_id")?,
            message: f.str("message")?,
        },
        "custom" => MppIn::Custom,
        "+custom" => MppIn::SubscribeCustom,
        "-custom" => MppIn::UnsubscribeCustom,
        "devices" => MppIn::Devices,
        other => return Err(MppError::UnknownType(truncate(other))),
    })
}

impl MppIn {
    /// What the host does with this message. `own_id` is the sender's participant id in its
    /// current room, if any: MPP claims a dropped crown by giving it to oneself.
    pub fn into_action(self, own_id: Option<&str>) -> Result<Action, MppError> {
        Ok(match self {
            MppIn::Hi { token } => Action::Hi { token },
            MppIn::Bye => Action::Bye,
            MppIn::Ch { name, set } => Action::Join {
                room: name,
                join: proto::Join {
                    password: String::new(),
                    create_settings: set.map(update_settings),
                },
            },
            MppIn::Chown { id: None } => Action::Room(C::DropOwnership(proto::DropOwnership {})),
            MppIn::Chown { id: Some(id) } if Some(id.as_str()) == own_id => {
                Action::Room(C::ClaimOwnership(proto::ClaimOwnership {}))
            }
            MppIn::Chown { id: Some(id) } => {
                Action::Room(C::TransferOwnership(proto::TransferOwnership {
                    participant_id: id,
                }))
            }
            MppIn::Chset { set } => Action::Room(C::UpdateSettings(update_settings(set))),
            MppIn::A { message } => Action::Room(C::Chat(proto::SendChat { text: message })),
            MppIn::N { t, notes } => Action::Room(C::Notes(note_batch(t, notes)?)),
            MppIn::M { x, y } => Action::Room(C::Cursor(proto::MoveCursor {
                x: x as f32,
                y: y as f32,
            })),
            MppIn::T { e } => Action::Room(C::Ping(proto::Ping {
                client_time: e.unwrap_or(0.0),
            })),
            MppIn::SubscribeLs => Action::Room(C::SubscribeRooms(proto::SubscribeRooms {})),
            MppIn::UnsubscribeLs => Action::Room(C::UnsubscribeRooms(proto::UnsubscribeRooms {})),
            MppIn::Userset { name, color } => {
                Action::Room(C::UpdateProfile(proto::UpdateProfile {
                    name,
                    color,
                    status: None,
                }))
            }
            MppIn::Kickban { id, ms } => Action::Room(C::Kick(proto::Kick {
                participant_id: id,
                ban_ms: whole_ms(ms).ok_or(MppError::Field {
                    m: "kickban",
                    field: "ms",
                    expected: "a number of milliseconds, 0 or more",
                })?,
            })),
            // MPP names the banned user by the id it saw, our participant id; the room also
            // matches bans by participant id.
            MppIn::Unban { id } => Action::Room(C::Unban(proto::Unban { user_id: id })),
            MppIn::Dm { .. } => Action::Unsupported("dm"),
            MppIn::Custom => Action::Unsupported("custom"),
            MppIn::SubscribeCustom => Action::Unsupported("+custom"),
            MppIn::UnsubscribeCustom => Action::Unsupported("-custom"),
            MppIn::Devices => Action::Unsupported("devices"),
        })
    }
}

fn update_settings(s: ChannelSettings) -> proto::UpdateSettings {
    proto::UpdateSettings {
        visible: s.visible,
        max_players: s.limit,
        owner_only_chat: s.chat.map(|chat| !chat),
        owner_only_play: s.crownsolo,
        color: s.color,
        profanity_filter: s.no_cussing,
        ..Default::default()
    }
}

/// An MPP `n` as a batch: the room checks the bounds (events, delay, clock skew) as for anyone.
fn note_batch(t: f64, notes: Vec<MppNote>) -> Result<proto::NoteBatch, MppError> {
    let bad = |field, expected| MppError::Field {
        m: "n",
        field,
        expected,
    };
    let time = whole_ms(t).ok_or(bad("t", "a server time in ms"))?;
    let mut events = Vec::with_capacity(notes.len());
    for n in notes {
        let note = keys::note(&n.name).ok_or_else(|| MppError::BadNote(truncate(&n.name)))?;
        let delay = whole_ms(n.delay)
            .and_then(|d| u32::try_from(d).ok())
            .ok_or(bad("d", "a delay in ms, 0 or more"))?;
        let kind = match n.velocity {
            Some(v) => Kind::NoteOn(proto::NoteOn {
                note,
                velocity: keys::midi_velocity(v),
                channel: 0,
            }),
            None => Kind::NoteOff(proto::NoteOff { note, channel: 0 }),
        };
        events.push(proto::NoteEvent {
            delay,
            kind: Some(kind),
        });
    }
    Ok(proto::NoteBatch {
        time,
        events,
        sender_id: String::new(),
    })
}

/// A non-negative finite number of milliseconds, rounded (MPP times may carry fractions).
fn whole_ms(v: f64) -> Option<u64> {
    (0.0..1e16).contains(&v).then(|| v.round() as u64)
}

/// Field access with MPP's leniency: numbers may come as numeric strings.
struct Fields<'a> {
    o: &'a Map<String, Value>,
    m: &'static str,
}

impl Fields<'_> {
    fn err(&self, field: &'static str, expected: &'static str) -> MppError {
        MppError::Field {
            m: self.m,
            field,
            expected,
        }
    }

    fn str(&self, field: &'static str) -> Result<String, MppError> {
        self.opt_str(field)?.ok_or(self.err(field, "a string"))
    }

    fn opt_str(&self, field: &'static str) -> Result<Option<String>, MppError> {
        match self.o.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "a string")),
        }
    }

    fn num(&self, field: &'static str) -> Result<f64, MppError> {
        self.opt_num(field)?.ok_or(self.err(field, "a number"))
    }

    fn opt_num(&self, field: &'static str) -> Result<Option<f64>, MppError> {
        match self.o.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => number(v).map(Some).ok_or(self.err(field, "a number")),
        }
    }

    fn opt_bool(&self, field: &'static str) -> Result<Option<bool>, MppError> {
        match self.o.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            // MPP's own example sends `"chat": "false"`.
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(_) => Err(self.err(field, "a boolean")),
        }
    }

    fn object(&self, field: &'static str) -> Result<&Map<String, Value>, MppError> {
        match self.o.get(field) {
            Some(Value::Object(o)) => Ok(o),
            _ => Err(self.err(field, "an object")),
        }
    }

    fn settings(&self) -> Result<ChannelSettings, MppError> {
        let s = Fields {
            o: self.object("set")?,
            m: self.m,
        };
        let limit = match s.opt_num("limit")? {
            None => None,
            Some(l) => Some(
                whole_ms(l)
                    .and_then(|l| u32::try_from(l).ok())
                    .ok_or(s.err("limit", "a player count"))?,
            ),
        };
        Ok(ChannelSettings {
            visible: s.opt_bool("visible")?,
            chat: s.opt_bool("chat")?,
            crownsolo: s.opt_bool("crownsolo")?,
            limit,
            color: s.opt_str("color")?,
            no_cussing: s.opt_bool("no cussing")?,
        })
    }

    fn notes(&self) -> Result<Vec<MppNote>, MppError> {
        let Some(Value::Array(items)) = self.o.get("n") else {
            return Err(self.err("n", "an array of notes"));
        };
        items
            .iter()
            .map(|item| {
                let Value::Object(o) = item else {
                    return Err(self.err("n", "an array of note objects"));
                };
                let n = Fields { o, m: "n" };
                let stop = n.opt_num("s")?.is_some_and(|s| s == 1.0);
                Ok(MppNote {
                    name: n.str("n")?,
                    delay: n.opt_num("d")?.unwrap_or(0.0),
                    // A start without `v` plays at MPP's default loudness.
                    velocity: if stop {
                        None
                    } else {
                        Some(n.opt_num("v")?.unwrap_or(0.5))
                    },
                })
            })
            .collect()
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

/// The `&'static` name of a known message type, for error messages.
fn static_name(m: &str) -> &'static str {
    const KNOWN: [&str; 19] = [
        "hi", "bye", "ch", "chown", "chset", "a", "n", "m", "t", "+ls", "-ls", "userset",
        "kickban", "unban", "dm", "custom", "+custom", "-custom", "devices",
    ];
    KNOWN.iter().find(|k| **k == m).copied().unwrap_or("?")
}

/// Client text quoted back in an error, bounded.
fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}
