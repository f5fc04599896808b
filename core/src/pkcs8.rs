//! Reading an Ed25519 private key from PKCS#8 PEM (RFC 5958 / RFC 8410), the one key format the
//! hosts are configured with. Written here rather than pulled from the `pkcs8`/`der`/`pem`
//! crates: the edge compiles every crate into the worker it ships (a size budget), and this one
//! shape needs only a few lines of DER.
//!
//! Accepted: `-----BEGIN PRIVATE KEY-----` around base64 of
//! `SEQUENCE { INTEGER 0|1, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) },
//! [0] attributes?, [1] public key? }` (v1 from `openssl genpkey -algorithm ed25519`, v2 with
//! the public key as some libraries write it). A v2 public key must match the seed. The decoded
//! key material is wiped from memory when dropped.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// The DER of OID 1.3.101.112 (id-Ed25519).
const ED25519_OID: [u8; 3] = [0x2b, 0x65, 0x70];

/// The 32-byte seed of the key in `pem`, or `None` if it is not an Ed25519 PKCS#8 PEM (or a v2
/// key whose public key does not match its seed).
#[cfg(feature = "ed25519")]
pub fn ed25519_seed(pem: &str) -> Option<[u8; 32]> {
    let (seed, listed) = ed25519_key(pem)?;
    let derived = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    listed.is_none_or(|p| p == derived).then_some(*seed)
}

/// A private key's seed, wiped from memory when dropped.
pub type Seed = Zeroizing<[u8; 32]>;

/// The v1 PKCS#8 DER of a seed: what WebCrypto's `importKey("pkcs8", …)` takes.
pub fn ed25519_der(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ]);
    der.extend_from_slice(seed);
    der
}

/// The seed of the key in `pem` and the public key a v2 key lists (not checked against the
/// seed here: a host without Ed25519 arithmetic checks it against what its crypto derives).
pub fn ed25519_key(pem: &str) -> Option<(Seed, Option<[u8; 32]>)> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PRIVATE KEY-----")?
        .strip_suffix("-----END PRIVATE KEY-----")?;
    let b64 = Zeroizing::new(body.split_whitespace().collect::<String>());
    let der = Zeroizing::new(STANDARD.decode(b64.as_bytes()).ok()?);
    let (key, rest) = take(&der[..], 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (version, key) = take(key, 0x02)?;
    let v2 = match version {
        [0] => false,
        [1] => true,
        _ => return None,
    };
    let (algorithm, key) = take(key, 0x30)?;
    let (oid, params) = take(algorithm, 0x06)?;
    if oid != ED25519_OID || !params.is_empty() {
        return None;
    }
    let (outer, mut key) = take(key, 0x04)?;
    let (seed, extra) = take(outer, 0x04)?;
    let seed = Zeroizing::new(<[u8; 32]>::try_from(seed).ok()?);
    if !extra.is_empty() {
        return None;
    }
    if let Some((_attributes, rest)) = take(key, 0xa0) {
        key = rest;
    }
    // Only version 2 (OneAsymmetricKey) may carry the public key.
    let mut listed = None;
    if let Some((public, rest)) = take(key, 0x81).filter(|_| v2) {
        // A BIT STRING's content: no unused bits, then the key.
        if public.first() != Some(&0) {
            return None;
        }
        listed = Some(public[1..].try_into().ok()?);
        key = rest;
    }
    key.is_empty().then_some((seed, listed))
}

/// One DER element of `tag` at the start of `der`: (its content, what follows it).
fn take(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n @ 0..=0x7f => (usize::from(n), rest),
        // Long forms only where the short one cannot say it (DER: the shortest encoding).
        0x81 => {
            let (&n, rest) = rest.split_first()?;
            (usize::from(n), rest)
        }
        0x82 => {
            let (n, rest) = rest.split_first_chunk::<2>()?;
            (usize::from(u16::from_be_bytes(*n)), rest)
        }
        _ => return None,
    };
    let shortest = match first {
        0x81 => len >= 0x80,
        0x82 => len >= 0x100,
        _ => true,
    };
    if !shortest {
        return None;
    }
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};

    const V1: &str = crate::identity::TEST_KEY_PEM;

    #[test]
    fn reads_what_the_pkcs8_crate_reads() {
        let ours = ed25519_seed(V1).expect("v1 parses");
        let theirs = ed25519_dalek::SigningKey::from_pkcs8_pem(V1).expect("pkcs8 crate");
        assert_eq!(ours, theirs.to_bytes());
        for seed in [0u8, 7, 255] {
            let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            let pem = key.to_pkcs8_pem(Default::default()).expect("encode");
            assert_eq!(ed25519_seed(&pem), Some([seed; 32]), "{}", &*pem);
        }
    }

    #[test]
    fn the_der_for_webcrypto_is_a_v1_key_of_the_seed() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let der = ed25519_der(&[5; 32]);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
            STANDARD.encode(&der[..])
        );
        assert_eq!(
            ed25519_key(&pem).map(|(s, p)| (*s, p)),
            Some(([5; 32], None))
        );
        let theirs = ed25519_dalek::SigningKey::from_pkcs8_der(&der).expect("pkcs8 crate");
        assert_eq!(theirs.to_bytes(), [5; 32]);
    }

    #[test]
    fn refuses_everything_else() {
        let b64 = |der: &[u8]| {
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
                STANDARD.encode(der)
            )
        };
        let good = STANDARD
            .decode(
                V1.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .expect("base64");
        assert!(ed25519_seed(&b64(&good)).is_some());
        // Every truncation, and every single-byte change of the structure (not the seed).
        for cut in 0..good.len() {
            assert_eq!(ed25519_seed(&b64(&good[..cut])), None, "cut at {cut}");
        }
        for i in 0..16 {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert_eq!(ed25519_seed(&b64(&bad)), None, "byte {i}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(ed25519_seed(&b64(&trailing)), None);
        // v2 (OneAsymmetricKey) with the public key, as RFC 8410 §10.3 shows it; then with a
        // public half that is not the seed's.
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let mut v2 = vec![
            0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
        ];
        v2.extend([0x04, 0x22, 0x04, 0x20]);
        v2.extend([9; 32]);
        v2.extend([0x81, 0x21, 0x00]);
        v2.extend(key.verifying_key().to_bytes());
        assert_eq!(ed25519_seed(&b64(&v2)), Some([9; 32]));
        let mut v1_with_public = v2.clone();
        v1_with_public[4] = 0;
        assert_eq!(
            ed25519_seed(&b64(&v1_with_public)),
            None,
            "v1 carries no public key"
        );
        let mut long_form = vec![0x30, 0x81, 0x2e];
        long_form.extend(&good[2..]);
        assert_eq!(
            ed25519_seed(&b64(&long_form)),
            None,
            "not the shortest length"
        );
        let last = v2.len() - 1;
        v2[last] ^= 1;
        assert_eq!(ed25519_seed(&b64(&v2)), None);
        for junk in [
            "",
            "not a key",
            "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----",
        ] {
            assert_eq!(ed25519_seed(junk), None);
        }
    }
}
