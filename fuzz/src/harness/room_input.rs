//! Building room inputs from fuzzer bytes: identities, client messages (structured, so the
//! fuzzer reaches joined rooms, owners and moderators quickly; raw bytes go in too), directory
//! summaries. What each byte means is documented at `room::step`.

use super::input::Bytes;
use piano_core::identity::Identity;
use piano_core::lobby::{Delta, Summary};
use piano_core::proto::{self, client_message::Msg as C, note_event::Kind};
use piano_core::room::participant_id;
use piano_core::room::stored::RoomKind;

/// The cast: two guests, a member, a moderator, an admin and a bot.
pub const USERS: [(&str, &str, &[&str]); 6] = [
    ("guest:aaaa", "Ada", &["guest"]),
    ("guest:bbbb", "Bob", &["guest"]),
    ("user:cy", "Cy", &["member"]),
    ("user:mo", "Mo", &["member", "moderator"]),
    ("user:al", "Al", &["member", "admin"]),
    ("bot:b", "Botty", &["bot"]),
];

pub const ROOMS: [&str; 5] = ["jazz", "lobby", "lobby-2", "Jazz café ♪", "lobby-01"];

pub const PASSWORDS: [&str; 3] = ["", "hunter22", "wrong"];

pub fn identity(user_id: &str, name: &str, roles: &[&str]) -> Identity {
    Identity {
        user_id: user_id.into(),
        name: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        session_id: None,
        expires_at: None,
        network: None,
    }
}

/// Sessions the cast's members hold (`SessionEnded` names one of them, or all).
pub const SESSIONS: [&str; 2] = ["s1", "s2"];
pub const NETWORKS: [&str; 2] = ["net-a", "net-b"];

/// One of the cast, or (rarely) an identity made of arbitrary strings; then what the host adds:
/// a session for members, an expiry (a guest token's `exp`, a member session's end) and a
/// network key.
pub fn pick_identity(b: &mut Bytes, now: u64) -> Identity {
    let n = b.u8();
    let mut id = match USERS.get(usize::from(n % 8)) {
        Some((user, name, roles)) => identity(user, name, roles),
        None => {
            let user = b.string(24);
            let name = b.string(48);
            let roles: Vec<&str> = (0..b.u8() % 3)
                .map(|_| b.pick(&piano_core::account::ROLES))
                .collect();
            identity(&user, &name, &roles)
        }
    };
    let extra = b.u8();
    if !id.roles.iter().any(|r| r == "guest") {
        id.session_id = Some(SESSIONS[usize::from(extra & 1)].to_owned());
    }
    id.network = match (extra >> 1) % 3 {
        0 => None,
        k => Some(NETWORKS[usize::from(k - 1)].to_owned()),
    };
    // Expiry: none, or 0-63 s / 0-63 min from now (the clock op moves in the same steps).
    let t = u64::from(extra >> 3 & 15) * 4;
    id.expires_at = match extra >> 7 {
        0 if t == 0 => None,
        0 => Some(now + t * 1000),
        _ => Some(now + t * 60_000),
    };
    id
}

fn pick_participant(b: &mut Bytes) -> String {
    let n = b.u8();
    match USERS.get(usize::from(n % 8)) {
        Some((user, _, _)) => participant_id(user),
        None if n % 8 == 6 => String::new(),
        None => b.string(16),
    }
}

/// One of the cast's user ids, or any string.
pub fn pick_user(b: &mut Bytes) -> String {
    let n = b.u8();
    match USERS.get(usize::from(n % 8)) {
        Some((user, _, _)) => (*user).to_owned(),
        None => b.string(16),
    }
}

fn pick_text(b: &mut Bytes, samples: &[&str], max: usize) -> String {
    let n = b.u8();
    match samples.get(usize::from(n) % (samples.len() + 1)) {
        Some(s) => (*s).to_owned(),
        None => b.string(max),
    }
}

fn opt<'a, T>(b: &mut Bytes<'a>, f: impl FnOnce(&mut Bytes<'a>) -> T) -> Option<T> {
    if b.bool() { Some(f(b)) } else { None }
}

pub fn settings(b: &mut Bytes) -> proto::UpdateSettings {
    let mask = b.u16();
    let on = |bit: u16| mask & (1 << bit) != 0;
    proto::UpdateSettings {
        visible: on(0).then(|| on(1)),
        password: on(2).then(|| b.pick(&PASSWORDS).to_owned()),
        max_players: on(3).then(|| b.pick(&[0, 1, 2, 3, 20, 99, 100, 10_000, 10_001, u32::MAX])),
        owner_only_chat: on(4).then(|| on(5)),
        owner_only_play: on(6).then(|| on(7)),
        allow_guests: on(8).then(|| on(9)),
        allow_bots: on(10).then(|| on(11)),
        allow_black_midi: on(12).then(|| on(13)),
        welcome_message: on(14).then(|| pick_text(b, &["hi %%user%%", ""], 600)),
        color: on(15).then(|| pick_text(b, &["#ff0000", "#FFF", "red"], 10)),
        profanity_filter: opt(b, Bytes::bool),
    }
}

fn note_event(b: &mut Bytes) -> proto::NoteEvent {
    let delay = u32::from(b.u16() % 1100);
    let kind = match b.u8() % 6 {
        0 => Some(Kind::NoteOn(proto::NoteOn {
            note: u32::from(b.u8()),
            velocity: u32::from(b.u8()),
            channel: u32::from(b.u8() % 20),
        })),
        1 => Some(Kind::NoteOff(proto::NoteOff {
            note: u32::from(b.u8()),
            channel: u32::from(b.u8() % 20),
        })),
        2 => Some(Kind::ControlChange(proto::ControlChange {
            control: u32::from(b.u8()),
            value: u32::from(b.u8()),
            channel: u32::from(b.u8() % 20),
        })),
        3 => Some(Kind::ProgramChange(proto::ProgramChange {
            program: u32::from(b.u8()),
            channel: u32::from(b.u8() % 20),
        })),
        4 => Some(Kind::PitchBend(proto::PitchBend {
            value: i32::from(b.u16() as i16),
            channel: u32::from(b.u8() % 20),
        })),
        _ => None,
    };
    proto::NoteEvent { delay, kind }
}

/// A `Resume`: one of `tokens` (the newest the room handed out, with the highest seq their
/// connection received) or an arbitrary string, from a plausible `last_seq` (what the client
/// received, a little less or more) or any.
pub fn resume(b: &mut Bytes, tokens: &[(String, u64)]) -> proto::Resume {
    let k = b.u8();
    let (token, seen) = match tokens.get(usize::from(k % 8)) {
        Some(t) => t.clone(),
        None if k & 8 == 0 => (String::new(), 0),
        None => (b.string(40), 0),
    };
    let last_seq = match b.u8() % 6 {
        0 | 1 => seen,
        2 => seen.saturating_sub(1 + u64::from(b.u8())),
        3 => 0,
        4 => seen.saturating_add(1 + u64::from(b.u8())),
        _ => b.u64(),
    };
    proto::Resume { token, last_seq }
}

/// A client message of any kind, with values near the interesting edges; a `Resume` names one
/// of `tokens` or any string ([`resume`]).
pub fn client_message(b: &mut Bytes, now: u64, tokens: &[(String, u64)]) -> proto::ClientMessage {
    let msg = match b.u8() % 19 {
        0 => C::Join(proto::Join {
            password: b.pick(&PASSWORDS).to_owned(),
            create_settings: opt(b, settings),
        }),
        1 => {
            let skew = i64::from(b.u16() as i16);
            let n = match b.u8() {
                250.. => 290 + usize::from(b.u8() % 20),
                k => usize::from(k % 8),
            };
            let first = note_event(b);
            let mut events = vec![first; n];
            // The rest of a long batch repeats its first event; short ones are all distinct.
            for e in events.iter_mut().take(8).skip(1) {
                *e = note_event(b);
            }
            C::Notes(proto::NoteBatch {
                time: now.saturating_add_signed(skew),
                events,
                sender_id: pick_participant(b),
            })
        }
        2 => C::Ping(proto::Ping {
            client_time: f64::from_bits(b.u64()),
        }),
        3 => C::UpdateProfile(proto::UpdateProfile {
            name: opt(b, |b| pick_text(b, &["Eve", " Eve ", ""], 60)),
            color: opt(b, |b| pick_text(b, &["#00ff00", "#0f0"], 10)),
            status: opt(b, |b| pick_text(b, &["afk", ""], 80)),
        }),
        4 => C::Chat(proto::SendChat {
            text: pick_text(b, &["hello", "  ", "damn it"], 600),
        }),
        5 => C::Typing(proto::SetTyping { typing: b.bool() }),
        6 => C::DeleteChat(proto::DeleteChat {
            id: u64::from(b.u8()),
        }),
        7 => C::ClearChat(proto::ClearChat {}),
        8 => C::UpdateSettings(settings(b)),
        9 => C::TransferOwnership(proto::TransferOwnership {
            participant_id: pick_participant(b),
        }),
        10 => C::DropOwnership(proto::DropOwnership {}),
        11 => C::ClaimOwnership(proto::ClaimOwnership {}),
        12 => C::Kick(proto::Kick {
            participant_id: pick_participant(b),
            ban_ms: b.pick(&[0, 1, 1000, 3_600_000, 3_600_001, u64::MAX]),
        }),
        13 => C::Unban(proto::Unban {
            user_id: pick_user(b),
        }),
        14 => C::Mute(proto::Mute {
            participant_id: pick_participant(b),
            notes: b.bool(),
            chat: b.bool(),
        }),
        15 => {
            let (x, y) = if b.bool() {
                (f32::from_bits(b.u32()), f32::from_bits(b.u32()))
            } else {
                (f32::from(b.u8()) / 2.0, f32::from(b.u8()) / 2.0)
            };
            C::Cursor(proto::MoveCursor { x, y })
        }
        16 => C::SubscribeRooms(proto::SubscribeRooms {}),
        17 => C::UnsubscribeRooms(proto::UnsubscribeRooms {}),
        _ => C::Resume(resume(b, tokens)),
    };
    proto::ClientMessage {
        msg: Some(msg),
        ..Default::default()
    }
}

pub fn summary(b: &mut Bytes) -> Summary {
    Summary {
        name: pick_text(b, &ROOMS, 80),
        players: b.u32(),
        capacity: b.u32(),
        visible: b.bool(),
        locked: b.bool(),
        owner_name: b.string(48),
        kind: if b.bool() {
            RoomKind::Lobby
        } else {
            RoomKind::Normal
        },
        last_activity: b.u64(),
    }
}

pub fn delta(b: &mut Bytes) -> Delta {
    Delta {
        upserted: (0..b.u8() % 4).map(|_| summary(b)).collect(),
        removed: (0..b.u8() % 4).map(|_| pick_text(b, &ROOMS, 80)).collect(),
    }
}
