//! Tokens: JWT verification of arbitrary strings, refresh tokens, the worker-to-room identity
//! header, and the key lists and PEMs a deployment is configured with.
//!
//! Byte 0 picks what to parse, bytes 1-4 move the verifier's clock, the rest is the string.

use piano_core::identity::{
    CLOCK_LEEWAY_SECS, Identity, SigningKey, TEST_KEY_PEM, Verifier, parse_public_keys,
};

pub const ISSUER: &str = "pianorhythm";
pub const AUDIENCE: &str = "pianorhythm";
/// The verifier's clock (seconds) when the clock bytes are zero.
pub const NOW_SECS: u64 = 1_800_000_000;

thread_local! {
    static VERIFIER: Verifier = {
        let key = SigningKey::from_pkcs8_pem(TEST_KEY_PEM).expect("the test key parses");
        Verifier::new(ISSUER, AUDIENCE).with_key(key.public_key())
    };
}

pub fn run(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let offset = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let now = NOW_SECS - (1 << 30) + u64::from(offset);
    let s = String::from_utf8_lossy(&data[5..]);
    match data[0] % 5 {
        0 | 1 => jwt(&s, now),
        2 => refresh_token(&s),
        3 => {
            if let Some(id) = Identity::from_header(&s) {
                assert_eq!(Identity::from_header(&id.to_header()), Some(id));
            }
        }
        _ => {
            if let Ok(keys) = parse_public_keys(&s) {
                let _ = Verifier::new(ISSUER, AUDIENCE).with_keys(keys);
            }
            let _ = SigningKey::from_pkcs8_pem(&s);
        }
    }
}

/// A token that verifies has a live `exp`, an `nbf` in the past, and the right issuer and
/// audience; verification is deterministic.
pub fn jwt(token: &str, now: u64) {
    let result = VERIFIER.with(|v| v.verify(token, now));
    if let Ok(c) = &result {
        assert!(
            c.exp.saturating_add(CLOCK_LEEWAY_SECS) > now,
            "expired token accepted"
        );
        assert!(c.nbf.is_none_or(|nbf| nbf <= now + CLOCK_LEEWAY_SECS));
        assert_eq!(c.iss, ISSUER);
        assert_eq!(c.aud, AUDIENCE);
    }
    assert_eq!(VERIFIER.with(|v| v.verify(token, now)), result);
}

/// `<username>.<sid>.<secret>`, as both hosts split it (each has its own copy: `parse_refresh`
/// in `src/accounts.rs` and `k8s-fallback/src/accounts.rs`; the fallback also bounds the first
/// two parts to 64 bytes). A split must give back the token exactly.
pub fn refresh_token(token: &str) {
    let edge = parse_refresh_edge(token);
    if let Some((user, sid, secret)) = edge {
        assert!(!user.contains('.') && !sid.contains('.'));
        assert_eq!(format!("{user}.{sid}.{secret}"), token);
        let _ = piano_core::names::username(user);
    }
    // The fallback's split is the edge's with the first two parts bounded.
    let fallback = parse_refresh_fallback(token);
    assert_eq!(
        fallback,
        edge.filter(|(user, sid, _)| user.len() <= 64 && sid.len() <= 64)
    );
}

/// `src/accounts.rs`.
fn parse_refresh_edge(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.splitn(3, '.');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// `k8s-fallback/src/accounts.rs`.
fn parse_refresh_fallback(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.splitn(3, '.');
    let parts = (parts.next()?, parts.next()?, parts.next()?);
    (parts.0.len() <= 64 && parts.1.len() <= 64).then_some(parts)
}
