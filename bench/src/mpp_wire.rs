//! The load's MPP mode (issue 15): the same batches as the protobuf mode, spoken as Multiplayer
//! Piano JSON (`n` messages in text frames), so any MPP server can be measured (`--targets
//! external --url ws://host:port/path --protocol mpp`) and ours against it.
//!
//! A batch carries its sender and sequence number in its notes' names, the only part of an MPP
//! note every server relays unchanged (velocities are floats some servers round, delays some
//! clamp): five note-ons, three digits base 88 of the sequence and two of the player.

use piano_core::mpp::keys;
use serde_json::{Value, json};

/// MPP has 88 keys (MIDI 21–108).
const KEYS: u32 = keys::HIGHEST - keys::LOWEST + 1;

fn key(digit: u32) -> Value {
    let name = keys::name(keys::LOWEST + digit % KEYS).unwrap_or_default();
    json!({ "n": name, "v": 0.5 })
}

/// The text frame of batch `seq` of `player`.
pub fn batch(player: usize, seq: u32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // Three digits of the sequence and two of the player: unique below 681,472 batches per
    // player and 7,744 players, far above any load here.
    debug_assert!(seq < KEYS.pow(3) && player < (KEYS * KEYS) as usize);
    let p = player as u32;
    let notes = [seq, seq / KEYS, seq / (KEYS * KEYS), p, p / KEYS].map(key);
    json!([{ "m": "n", "t": now, "n": notes }]).to_string()
}

/// The (player, seq) of every batch in a received frame (a server may bundle several
/// messages into one frame, and sends much else: `p`, `ch`, `nq`, `t`).
pub fn identify(frame: &str) -> Vec<(usize, u32)> {
    let Ok(Value::Array(messages)) = serde_json::from_str::<Value>(frame) else {
        return Vec::new();
    };
    messages
        .iter()
        .filter(|m| m["m"] == "n")
        .filter_map(|m| {
            let digits: Vec<u32> = m["n"]
                .as_array()?
                .iter()
                .filter_map(|n| keys::note(n["n"].as_str()?))
                .map(|note| note - keys::LOWEST)
                .collect();
            let [s0, s1, s2, p0, p1] = digits[..] else {
                return None;
            };
            Some(((p0 + KEYS * p1) as usize, s0 + KEYS * (s1 + KEYS * s2)))
        })
        .collect()
}

/// `hi` (with our token, or none: a guest, as MPP clients are) and `ch` into `room`, created
/// with room for `capacity`.
pub fn enter(room: &str, token: Option<&str>, capacity: u32) -> (String, String) {
    let mut hi = json!({ "m": "hi" });
    if let Some(t) = token {
        hi["token"] = t.into();
    }
    let ch = json!({ "m": "ch", "_id": room, "set": { "limit": capacity } });
    (json!([hi]).to_string(), json!([ch]).to_string())
}

/// Whether `frame` refuses us: MPP servers answer a failed sign-in or a refused room with a
/// `notification` (ours title them so; others' notifications before `ch` mean the same).
pub fn refused(frame: &str) -> bool {
    let Ok(Value::Array(messages)) = serde_json::from_str::<Value>(frame) else {
        return false;
    };
    messages.iter().any(|m| {
        m["m"] == "notification"
            && ["Sign-in failed", "Could not join"].iter().any(|t| {
                m["title"]
                    .as_str()
                    .is_some_and(|title| title.starts_with(t))
            })
    })
}

/// Whether `frame` holds the message `m` (for `ch`: about `room`).
pub fn holds(frame: &str, m: &str, room: &str) -> bool {
    let Ok(Value::Array(messages)) = serde_json::from_str::<Value>(frame) else {
        return false;
    };
    messages
        .iter()
        .any(|msg| msg["m"] == m && (m != "ch" || msg["ch"]["_id"] == room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_identify_themselves() {
        for (player, seq) in [(0, 0), (49, 87), (999, 88 * 88 * 88 - 1), (7, 123_456)] {
            assert_eq!(identify(&batch(player, seq)), vec![(player, seq)]);
        }
        assert!(identify("not json").is_empty());
        assert!(identify(r#"[{"m":"n","n":[{"n":"zz"}]}]"#).is_empty());
    }
}
