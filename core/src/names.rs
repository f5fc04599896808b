//! Validation of the names people type: room names and display names.
//!
//! Both reject control characters and the Unicode bidi overrides/isolates, which can make a name
//! render as something else (a classic impersonation trick in chat rooms).

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
/// spellings must not silently map to one room).
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
    Ok(name)
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
}
