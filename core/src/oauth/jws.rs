//! ID-token signature checks for native hosts (`ring`): RS256 (PKCS#1 v1.5, 2048-8192-bit
//! keys), ES256 (P-256, fixed-width r‖s as JWS has it) and EdDSA (Ed25519). The edge does the
//! same with WebCrypto.

use super::oidc::{Alg, Jwk};
use super::unb64;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

/// Whether `signature` over `input` is `key`'s, for `alg` (`false` for any malformed part).
pub fn verify(alg: Alg, key: &Jwk, input: &[u8], signature: &[u8]) -> bool {
    if !alg.fits(key) {
        return false;
    }
    let part = |v: &Option<String>| v.as_deref().and_then(unb64);
    match alg {
        Alg::Rs256 => {
            let (Some(n), Some(e)) = (part(&key.n), part(&key.e)) else {
                return false;
            };
            RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input, signature)
                .is_ok()
        }
        Alg::Es256 => {
            let (Some(x), Some(y)) = (part(&key.x), part(&key.y)) else {
                return false;
            };
            if x.len() != 32 || y.len() != 32 {
                return false;
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input, signature)
                .is_ok()
        }
        Alg::EdDsa => match part(&key.x) {
            Some(x) if x.len() == 32 => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(input, signature)
                .is_ok(),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::b64;
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn jwk(v: serde_json::Value) -> Jwk {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ed25519_and_p256_signatures_check_and_forgeries_do_not() {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let key = jwk(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key().as_ref())}),
        );
        let sig = kp.sign(b"a.b");
        assert!(verify(Alg::EdDsa, &key, b"a.b", sig.as_ref()));
        assert!(!verify(Alg::EdDsa, &key, b"a.c", sig.as_ref()));
        assert!(
            !verify(Alg::Rs256, &key, b"a.b", sig.as_ref()),
            "a key of another kind"
        );

        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
        let public = kp.public_key().as_ref();
        let key = jwk(serde_json::json!({"kty": "EC", "crv": "P-256",
            "x": b64(&public[1..33]), "y": b64(&public[33..65])}));
        let sig = kp.sign(&rng, b"a.b").unwrap();
        assert!(verify(Alg::Es256, &key, b"a.b", sig.as_ref()));
        assert!(!verify(Alg::Es256, &key, b"a.b", &[0; 64]));
    }

    #[test]
    fn rsa_keys_are_read_from_their_components() {
        // A key too small for RS256 (and garbage) never verifies.
        let key = jwk(serde_json::json!({"kty": "RSA", "n": b64(&[0xff; 64]), "e": "AQAB"}));
        assert!(!verify(Alg::Rs256, &key, b"a.b", &[1; 64]));
        let key = jwk(serde_json::json!({"kty": "RSA", "n": "!!", "e": "AQAB"}));
        assert!(!verify(Alg::Rs256, &key, b"a.b", &[1; 64]));
    }
}
