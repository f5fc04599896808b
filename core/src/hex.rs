//! Lower-case hexadecimal, the one encoding of hashes and ids kept or logged as text.

/// `bytes` as lower-case hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `text` (either case); `None` for an odd length or a non-hex digit.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(super::encode(&bytes), "007fabff");
        assert_eq!(super::decode("007fABff").as_deref(), Some(&bytes[..]));
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode("zz"), None);
        // A multi-byte character is not split into a digit pair.
        assert_eq!(super::decode("é0"), None);
    }
}
