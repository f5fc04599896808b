//! Room names, display names, usernames, percent coding, and the text checks of chat, status
//! lines and colours. Byte 0 picks the check; the rest is the string.

use piano_core::names;
use piano_core::room::stored::RoomKind;
use piano_core::room::text;

pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    let s: &str = &s;
    match which % 6 {
        0 => room_name(s),
        1 => super::auth_json::display_name(s),
        2 => {
            if let Ok(key) = names::username(s) {
                super::auth_json::username(&key);
            }
        }
        3 => {
            // Paths carry percent-encoded room names: decoding then checking must agree with
            // encoding a valid name.
            if let Some(decoded) = names::percent_decode(s) {
                room_name(&decoded);
            }
            assert_eq!(
                names::percent_decode(&names::percent_encode(s)).as_deref(),
                Some(s)
            );
        }
        4 => {
            if let Ok(t) = text::chat(s) {
                assert!(!t.is_empty() && t.chars().count() <= text::MAX_CHAT_CHARS);
                assert_eq!(text::chat(&t).as_deref(), Ok(t.as_str()));
                let masked = text::mask_profanity(&t);
                assert_eq!(
                    masked.chars().count(),
                    t.chars().count(),
                    "masking changed length"
                );
            }
        }
        _ => {
            if let Ok(l) = text::optional_line("status", s, text::MAX_STATUS_CHARS) {
                assert!(l.chars().count() <= text::MAX_STATUS_CHARS);
            }
            if let Ok(c) = text::color(s) {
                assert_eq!(c.len(), 7);
            }
        }
    }
}

/// A room name that passed is exactly the input, short, clean, without '/' or surrounding
/// space, and survives the trip through a URL path.
fn room_name(s: &str) {
    if let Ok(n) = names::room_name(s) {
        assert_eq!(n, s);
        assert!(!n.is_empty() && n.chars().count() <= names::MAX_ROOM_NAME_CHARS);
        assert!(!n.contains('/') && n.trim() == n);
        assert!(!n.chars().any(names::is_forbidden_char));
        assert_eq!(
            names::percent_decode(&names::percent_encode(n)).as_deref(),
            Some(n)
        );
        let _ = RoomKind::of(n);
    }
}
