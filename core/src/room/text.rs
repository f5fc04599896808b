//! Checks and clean-up of text players send: chat, status lines, colours, welcome messages.

use crate::names::is_forbidden_char;

pub const MAX_CHAT_CHARS: usize = 512;
pub const MAX_STATUS_CHARS: usize = 64;
pub const MAX_WELCOME_CHARS: usize = 512;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Trims and checks a chat message.
pub fn chat(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("chat message is blank".into());
    }
    if text.chars().count() > MAX_CHAT_CHARS {
        return Err(format!("chat message is over {MAX_CHAT_CHARS} characters"));
    }
    if text.chars().any(is_forbidden_char) {
        return Err("chat message contains control or bidirectional-override characters".into());
    }
    Ok(text.to_owned())
}

/// Checks free text that may be empty (status line, welcome message).
pub fn optional_line(what: &str, raw: &str, max: usize) -> Result<String, String> {
    let text = raw.trim();
    if text.chars().count() > max {
        return Err(format!("{what} is over {max} characters"));
    }
    if text.chars().any(is_forbidden_char) {
        return Err(format!(
            "{what} contains control or bidirectional-override characters"
        ));
    }
    Ok(text.to_owned())
}

/// `#rrggbb`, normalised to lower case.
pub fn color(raw: &str) -> Result<String, String> {
    let ok =
        raw.len() == 7 && raw.starts_with('#') && raw[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(format!("colour {raw:?} is not #rrggbb"))
    }
}

/// Words the optional profanity filter masks. Deliberately short and conservative: whole words
/// only, so "class" or "Scunthorpe" pass untouched.
const PROFANITY: &[&str] = &[
    "fuck",
    "fucking",
    "fucker",
    "shit",
    "bitch",
    "bastard",
    "cunt",
    "asshole",
    "dick",
    "wanker",
    "motherfucker",
    "bullshit",
];

/// Replaces listed words (case-insensitive, whole words) by asterisks of the same length.
pub fn mask_profanity(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if PROFANITY.contains(&word.to_lowercase().as_str()) {
            out.extend(std::iter::repeat_n('*', word.chars().count()));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_rules() {
        assert_eq!(chat("  hi  ").as_deref(), Ok("hi"));
        assert!(chat(" \t ").is_err());
        assert!(chat(&"é".repeat(512)).is_ok());
        assert!(chat(&"é".repeat(513)).is_err());
        assert!(chat("a\u{0}b").is_err());
        assert!(chat("line\nbreak").is_err());
        assert!(chat("x\u{202E}y").is_err());
    }

    #[test]
    fn colours() {
        assert_eq!(color("#A0b1C2").as_deref(), Ok("#a0b1c2"));
        for bad in ["a0b1c2", "#12345", "#12345g", "#1234567", ""] {
            assert!(color(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profanity_is_masked_as_whole_words() {
        assert_eq!(
            mask_profanity("Oh SHIT, that's a class act"),
            "Oh ****, that's a class act"
        );
        assert_eq!(mask_profanity("Scunthorpe"), "Scunthorpe");
        assert_eq!(mask_profanity("fuck"), "****");
    }
}
