//! Room names, display names, usernames, percent coding, the text checks of chat, status
//! lines and colours, and the HTTP policy's parsers of client-supplied strings (the client IP
//! behind the network key, CORS origins). Byte 0 picks the check; the rest is the string.

use piano_core::http_policy;
use piano_core::names;
use piano_core::room::stored::RoomKind;
use piano_core::room::text;

pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    let s: &str = &s;
    match which % 8 {
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
        6 => {
            // CF-Connecting-IP / the trusted X-Forwarded-For entry: any string, a fixed-size key;
            // an IPv4-mapped IPv6 address is its IPv4 address's network.
            let key = http_policy::network_key(s);
            assert!(key.len() == 24 && key.bytes().all(|b| b.is_ascii_hexdigit()));
            if s.trim().parse::<std::net::Ipv4Addr>().is_ok() {
                let mapped = format!("::ffff:{}", s.trim());
                assert_eq!(http_policy::network_key(&mapped), key, "{mapped}");
            }
        }
        7 => {
            // CORS_ORIGINS, and an Origin header checked against it.
            let origins = http_policy::parse_origins(Some(s));
            for o in &origins {
                assert_eq!(
                    http_policy::allowed_origin(&origins, Some(o)),
                    Some(o.as_str())
                );
            }
            let (list, origin) = s.split_once('\n').unwrap_or((s, s));
            if let Some(o) =
                http_policy::allowed_origin(&http_policy::parse_origins(Some(list)), Some(origin))
            {
                assert!(o.contains("://"));
            }
            assert_eq!(http_policy::allowed_origin(&[], Some(s)), None);
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
        assert!(!n.chars().any(names::is_invisible_char));
        assert!(!n.chars().next().is_some_and(names::is_combining_mark));
        assert!(!names::is_lobby_lookalike(n));
        assert_eq!(
            names::percent_decode(&names::percent_encode(n)).as_deref(),
            Some(n)
        );
        let _ = RoomKind::of(n);
    }
    // A host without a normaliser (identity NFC) decides exactly as `room_name`.
    assert_eq!(
        names::room_name_nfc(s, str::to_owned).ok().as_deref(),
        names::room_name(s).ok()
    );
}
