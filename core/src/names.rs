//! Validation of the names people type: room names and display names.
//!
//! Both reject control characters and the Unicode bidi overrides/isolates, which can make a name
//! render as something else (a classic impersonation trick in chat rooms).

use crate::listing::RoomKind;
use std::fmt;

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 40;
/// Longest room name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong {
        max: usize,
    },
    ForbiddenCharacter,
    /// Room names only: '/' would make paths ambiguous.
    Slash,
    /// Room names only: leading or trailing white space.
    SurroundingWhitespace,
    /// Room names only: invisible or formatting characters (zero-width, BOM, variation
    /// selectors, fillers, white space other than U+0020), which make lookalike names.
    Invisible,
    /// Room names only: a name starting with a combining mark (or made of marks alone).
    CombiningOnly,
    /// Room names only: spelled like a lobby (`lobby`, `lobby-2`, …) without being one.
    LobbyLookalike,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "must not be empty"),
            NameError::TooLong { max } => write!(f, "must be at most {max} characters"),
            NameError::ForbiddenCharacter => {
                write!(
                    f,
                    "must not contain control or bidirectional-override characters"
                )
            }
            NameError::Slash => write!(f, "must not contain '/'"),
            NameError::SurroundingWhitespace => {
                write!(f, "must not start or end with white space")
            }
            NameError::Invisible => write!(
                f,
                "must not contain invisible or formatting characters (zero-width, BOM, fillers, white space other than a plain space)"
            ),
            NameError::CombiningOnly => write!(f, "must not start with a combining mark"),
            NameError::LobbyLookalike => write!(
                f,
                "looks like a lobby's name: lobbies are exactly \"lobby\", \"lobby-2\", \"lobby-3\", …"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Control characters and the bidi overrides/isolates/marks.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// Trims the name and checks it; returns the trimmed name.
pub fn display_name(raw: &str) -> Result<String, NameError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(NameError::TooLong {
            max: MAX_DISPLAY_NAME_CHARS,
        });
    }
    if name.chars().any(is_forbidden_char) {
        return Err(NameError::ForbiddenCharacter);
    }
    Ok(name.to_owned())
}

/// Checks a room name exactly as given (no trimming: the name selects the room object, so two
/// spellings must not silently map to one room). Hosts first normalise the name to Unicode NFC
/// (the edge with the JS runtime's `String.prototype.normalize`, see [`room_name_nfc`]), so
/// composed and decomposed spellings name one room; this function has no normalisation tables
/// (they would grow the worker's wasm).
///
/// Refused: empty, over [`MAX_ROOM_NAME_CHARS`], control and bidi characters, `/`, leading or
/// trailing white space, invisible and formatting characters ([`is_invisible_char`]), a first
/// character that is a combining mark ([`is_combining_mark`]: combining-only names, and marks
/// stacked on nothing), and lookalikes of lobby names ([`is_lobby_lookalike`]).
pub fn room_name(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(NameError::TooLong {
            max: MAX_ROOM_NAME_CHARS,
        });
    }
    if name.chars().any(is_forbidden_char) {
        return Err(NameError::ForbiddenCharacter);
    }
    if name.contains('/') {
        return Err(NameError::Slash);
    }
    if name.trim() != name {
        return Err(NameError::SurroundingWhitespace);
    }
    if name.chars().any(is_invisible_char) {
        return Err(NameError::Invisible);
    }
    if name.chars().next().is_some_and(is_combining_mark) {
        return Err(NameError::CombiningOnly);
    }
    if is_lobby_lookalike(name) {
        return Err(NameError::LobbyLookalike);
    }
    Ok(name)
}

/// [`room_name`] for a host that normalised `raw` with `nfc` (a name that changes under NFC is
/// taken in its normalised form: it is the same name to a reader).
pub fn room_name_nfc(raw: &str, nfc: impl FnOnce(&str) -> String) -> Result<String, NameError> {
    let normalized = if raw.is_ascii() {
        raw.to_owned()
    } else {
        nfc(raw)
    };
    room_name(&normalized).map(str::to_owned)
}

/// Characters that show nothing (or nothing distinguishable) but make a different name: the
/// Unicode format characters (Cf: soft hyphen, zero-width space/joiners, word joiner, BOM,
/// invisible operators, tags, …), variation selectors, the combining grapheme joiner, Hangul
/// and other fillers, the braille blank, and every white space but U+0020.
pub fn is_invisible_char(c: char) -> bool {
    (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{0600}'..='\u{0605}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// The combining-mark blocks (general categories Mn/Me of the combining blocks, and the marks
/// of the major scripts' ranges that can only follow a base letter). Used only to refuse a name
/// that starts with one, so an approximation by block errs towards refusing odd names.
pub fn is_combining_mark(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{0483}'..='\u{0489}'
            | '\u{0591}'..='\u{05BD}'
            | '\u{05BF}'..='\u{05C7}'
            | '\u{0610}'..='\u{061A}'
            | '\u{064B}'..='\u{065F}'
            | '\u{0670}'
            | '\u{06D6}'..='\u{06DC}'
            | '\u{06DF}'..='\u{06E4}'
            | '\u{06E7}'..='\u{06E8}'
            | '\u{06EA}'..='\u{06ED}'
            | '\u{0900}'..='\u{0903}'
            | '\u{093A}'..='\u{094F}'
            | '\u{0951}'..='\u{0957}'
            | '\u{0E31}'
            | '\u{0E34}'..='\u{0E3A}'
            | '\u{0E47}'..='\u{0E4E}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{302A}'..='\u{302F}'
            | '\u{3099}'..='\u{309A}'
            | '\u{FE20}'..='\u{FE2F}'
            | '\u{1D165}'..='\u{1D169}'
            | '\u{1D16D}'..='\u{1D172}'
            | '\u{1D17B}'..='\u{1D182}'
            | '\u{1D185}'..='\u{1D18B}'
            | '\u{1D1AA}'..='\u{1D1AD}'
    )
}

/// Whether a name reads as a lobby's (`lobby`, `lobby-2`, …) without being exactly one: after
/// folding case, dropping separators (space, `-`, `_`, `.`, `·`) and mapping confusable letters
/// (`0`/`ο`/`о` → o, `1`/`i`/`|`/`ӏ` → l, `8`/`в`/`β` → b, `у`/`γ` → y, accents dropped), it is
/// `lobby` followed by nothing but digits. The real lobbies pass ([`RoomKind::of`]).
///
/// [`RoomKind::of`]: crate::listing::RoomKind::of
pub fn is_lobby_lookalike(name: &str) -> bool {
    if RoomKind::of(name) == RoomKind::Lobby {
        return false;
    }
    let mut skeleton = String::new();
    for c in name.chars() {
        if matches!(
            c,
            ' ' | '-' | '_' | '.' | '\u{00B7}' | '\u{2010}'..='\u{2015}'
        ) || is_combining_mark(c)
        {
            continue;
        }
        skeleton.push(confusable_skeleton(c));
    }
    let Some(rest) = skeleton.strip_prefix("lobby") else {
        return false;
    };
    rest.chars()
        .all(|c| c.is_ascii_digit() || c == 'o' || c == 'l')
}

/// One character's lookalike class for [`is_lobby_lookalike`] (lower-case ASCII, or itself).
fn confusable_skeleton(c: char) -> char {
    match c {
        'L' | 'l' | 'I' | 'i' | '1' | '|' | '!' | 'ı' | 'ł' | 'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'Ł' | 'Ι'
        | 'ι' | 'І' | 'і' | 'ӏ' | 'Ӏ' | 'ℓ' | 'ǀ' | 'Ɩ' | 'Ｌ' | 'ｌ' => 'l',
        'O' | 'o' | '0' | 'Ο' | 'ο' | 'О' | 'о' | 'ö' | 'ó' | 'ò' | 'ô' | 'õ' | 'ø' | 'ō' | 'Ö'
        | 'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ø' | 'Ō' | 'º' | '°' | 'σ' | 'Ｏ' | 'ｏ' | '০' => {
            'o'
        }
        'B' | 'b' | '8' | 'Β' | 'β' | 'В' | 'в' | 'Ь' | 'ь' | 'Ƅ' | 'ƅ' | 'ɓ' | 'ḃ' | 'ḅ'
        | 'Ｂ' | 'ｂ' | 'ß' | 'Ъ' | 'ъ' => 'b',
        'Y' | 'y' | 'Υ' | 'γ' | 'У' | 'у' | 'Ү' | 'ү' | 'ý' | 'ÿ' | 'Ý' | 'Ÿ' | 'ŷ' | 'Ŷ' | 'ɣ'
        | 'Ｙ' | 'ｙ' | 'ʏ' | 'ƴ' => 'y',
        // Other letters stay themselves (no case tables in the wasm: the lookalikes that
        // matter are listed above).
        c => c.to_ascii_lowercase(),
    }
}

/// Usernames of member accounts: 3-24 of `a-z 0-9 _ -`, case-insensitive. Returns the
/// normalized (lower-case) form, which names the account everywhere (user id `user:<name>`).
pub fn username(raw: &str) -> Result<String, String> {
    let name = raw.trim().to_ascii_lowercase();
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !(3..=24).contains(&name.len()) || !ok_chars {
        return Err("username must be 3-24 characters of a-z, 0-9, _ and -".into());
    }
    Ok(name)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for paths and headers).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn usernames() {
        assert_eq!(username(" Ada_99 ").as_deref(), Ok("ada_99"));
        for bad in ["ab", "a b c", "émile", &"x".repeat(25), "semi;colon"] {
            assert!(username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["lobby", "Jazz café ♪", "a b%c/d", ""] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(display_name("  Ada  ").as_deref(), Ok("Ada"));
        assert_eq!(display_name("Élodie 🎹").as_deref(), Ok("Élodie 🎹"));
        assert_eq!(display_name("   "), Err(NameError::Empty));
        assert_eq!(display_name(&"x".repeat(40)).map(|n| n.len()), Ok(40));
        assert_eq!(
            display_name(&"é".repeat(41)),
            Err(NameError::TooLong { max: 40 })
        );
        assert_eq!(display_name("a\u{7}b"), Err(NameError::ForbiddenCharacter));
        assert_eq!(display_name("a\nb"), Err(NameError::ForbiddenCharacter));
        assert_eq!(
            display_name("evil\u{202E}gnp.exe"),
            Err(NameError::ForbiddenCharacter)
        );
    }

    #[test]
    fn room_names() {
        assert_eq!(room_name("lobby"), Ok("lobby"));
        assert_eq!(room_name("Jazz café ♪"), Ok("Jazz café ♪"));
        assert_eq!(room_name(""), Err(NameError::Empty));
        assert_eq!(
            room_name(&"r".repeat(65)),
            Err(NameError::TooLong { max: 64 })
        );
        assert_eq!(room_name("a/b"), Err(NameError::Slash));
        assert_eq!(room_name(" lobby"), Err(NameError::SurroundingWhitespace));
        assert_eq!(room_name("lo\u{0}bby"), Err(NameError::ForbiddenCharacter));
    }

    #[test]
    fn invisible_and_combining_room_names_are_refused() {
        for bad in [
            "piano\u{200B}",
            "\u{FEFF}piano",
            "pi\u{200D}ano",
            "pi\u{00AD}ano",
            "pi\u{2060}ano",
            "piano\u{FE0F}",
            "pi\u{00A0}ano",
            "pi\u{3000}ano",
            "\u{3164}",
            "\u{2800}",
            "pi\u{E0041}ano",
        ] {
            assert_eq!(room_name(bad), Err(NameError::Invisible), "{bad:?}");
        }
        for bad in ["\u{0301}", "\u{0301}\u{0302}\u{0303}", "\u{20DD}piano"] {
            assert_eq!(room_name(bad), Err(NameError::CombiningOnly), "{bad:?}");
        }
        // Marks on a letter are fine (decomposed input is normalised by the host first).
        assert_eq!(room_name("cafe\u{0301}"), Ok("cafe\u{0301}"));
        assert_eq!(room_name("Jazz café ♪"), Ok("Jazz café ♪"));
        assert_eq!(room_name("two  spaces"), Ok("two  spaces"));
    }

    #[test]
    fn lobby_lookalikes_are_refused_and_lobbies_pass() {
        for ok in [
            "lobby",
            "lobby-2",
            "lobby-17",
            "lobby-1",
            "lobbyist",
            "my lobby",
            "lobby room",
        ] {
            assert!(room_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "Lobby",
            "LOBBY",
            "lobby-02",
            "lobby2",
            "lobby_2",
            "lobby 2",
            "l0bby",
            "1obby",
            "Iobby",
            "lo bby",
            "l.o.b.b.y",
            "lobby-",
            "lоbby",
            "lοbby",
            "lobbу",
            "ℓobby",
            "LOBBY-3",
            "lobby-2-0",
            "lóbby",
        ] {
            assert_eq!(room_name(bad), Err(NameError::LobbyLookalike), "{bad:?}");
        }
    }

    #[test]
    fn nfc_is_applied_before_the_checks() {
        // A stand-in for the host's NFC (the edge uses JavaScript's normalize).
        let nfc = |s: &str| s.replace("e\u{0301}", "é");
        assert_eq!(room_name_nfc("cafe\u{0301}", nfc).as_deref(), Ok("café"));
        assert_eq!(
            room_name_nfc("lobby", |_| unreachable!()).as_deref(),
            Ok("lobby")
        );
    }
}
