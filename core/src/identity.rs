//! Identity: who a player is, and the Ed25519-signed JWTs (alg `EdDSA`) that prove it.
//!
//! The edge worker signs tokens with the private key from its configuration and verifies them
//! before any WebSocket upgrade reaches a room; rooms only ever see a verified [`Identity`].
//! Verification takes `now` from the host (sans-I/O), checks the algorithm, the `kid` against the
//! known keys, the signature, `iss`, `aud`, `exp` and `nbf`, and refuses anything else.
//!
//! The JWT encoding (RFC 7519 compact form, RFC 8037 `EdDSA`) is written here for the one
//! algorithm we accept: a general JWT crate brings every other algorithm (RSA, ECDSA) into the
//! edge worker, whose size every cold start pays for. The signature itself is a step of its own
//! ([`Verifier::unverified`], then the host checks the signature, then [`Verifier::accept`];
//! [`signing_input`], then the host signs, then [`signed_token`]), so the edge signs and
//! verifies with the runtime's WebCrypto while native hosts use `ed25519-dalek` through
//! [`SigningKey`] and [`Verifier::verify`] (feature `ed25519`). The tests check it against an
//! independent implementation (`jsonwebtoken`) both ways.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
#[cfg(feature = "ed25519")]
use ed25519_dalek::{Signer, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::Millis;

/// Seconds of clock difference tolerated on `exp` and `nbf`.
pub const CLOCK_LEEWAY_SECS: u64 = 5;

/// The claims of every token this server issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id: `guest:<random>` for guests.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// Roles: guest, member, pro, moderator, admin, bot.
    #[serde(default)]
    pub roles: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub iss: String,
    pub aud: String,
    /// Members' tokens name their session and its generation (bumped by every refresh), so a
    /// logged-out or refreshed-away token is refused even before it expires. Guests have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "gen")]
    pub generation: Option<u64>,
}

/// A verified player, as a room knows it.
///
/// The optional fields are skipped when unset, so records stored before they existed load,
/// and a guest's header stays as short as before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user_id: String,
    pub name: String,
    pub roles: Vec<String>,
    /// Members: the session behind the token (its `sid`), so ending that session reaches the
    /// sockets it opened (the room's `Input::SessionEnded`). Guests: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When the socket must end (ms since the epoch): a guest token's `exp`; for a member the
    /// *session's* expiry as the account answered at upgrade (set by the host), not the
    /// 15-minute access token's. The room closes the socket with 4001 then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
    /// An opaque key for the client's network, set by the host (a hash of the client IP), for
    /// per-network socket caps and so a ban also refuses new guest identities from that
    /// network. Never shown to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl From<Claims> for Identity {
    /// Guests (no `sid`) end with their token's `exp`; a member's socket lives as long as its
    /// session, which the token does not carry: the host sets `expires_at` for members.
    fn from(c: Claims) -> Self {
        let expires_at = match c.sid {
            None => Some(c.exp.saturating_mul(1000)),
            Some(_) => None,
        };
        Identity {
            user_id: c.sub,
            name: c.name,
            roles: c.roles,
            session_id: c.sid,
            expires_at,
            network: None,
        }
    }
}

impl Identity {
    /// Encodes the identity for the worker-to-room hop (an HTTP header, so ASCII only).
    pub fn to_header(&self) -> String {
        B64URL.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn from_header(value: &str) -> Option<Identity> {
        let bytes = B64URL.decode(value).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Not a PKCS#8 PEM Ed25519 private key.
    NotEd25519Pkcs8Pem,
    /// Not a base64url Ed25519 public key (a JWK `x`).
    NotEd25519PublicKey,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotEd25519Pkcs8Pem => {
                write!(
                    f,
                    "expected an Ed25519 private key in PKCS#8 PEM (BEGIN PRIVATE KEY)"
                )
            }
            KeyError::NotEd25519PublicKey => {
                write!(
                    f,
                    "expected Ed25519 public keys as base64url JWK `x` values"
                )
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// Why a token was refused. The text is safe to show to the client: it never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    WrongAlgorithm,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "token is malformed",
            TokenError::WrongAlgorithm => "token algorithm is not EdDSA",
            TokenError::UnknownKey => "token key id is unknown",
            TokenError::BadSignature => "token signature is invalid",
            TokenError::Expired => "token has expired",
            TokenError::NotYetValid => "token is not valid yet",
            TokenError::WrongIssuer => "token issuer is not accepted",
            TokenError::WrongAudience => "token audience is not accepted",
            TokenError::MissingClaim => "token lacks a required claim",
        })
    }
}

impl std::error::Error for TokenError {}

/// The server's signing key, with the public half it publishes.
#[cfg(feature = "ed25519")]
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
    public: [u8; 32],
}

/// The JOSE header of our tokens.
#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the verifier must understand; we understand none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// The one `alg` we sign with and accept (RFC 8037).
const ALG: &str = "EdDSA";

/// `header.payload` of a token of these claims, signed with the key `kid` names: what the
/// signature covers.
pub fn signing_input(claims: &Claims, kid: &str) -> String {
    let header = Header {
        alg: ALG.into(),
        typ: Some("JWT".into()),
        kid: Some(kid.into()),
        crit: None,
    };
    // Serialising these structs cannot fail (string keys, no maps of other keys).
    let part = |json: Vec<u8>| B64URL.encode(json);
    format!(
        "{}.{}",
        part(serde_json::to_vec(&header).unwrap_or_default()),
        part(serde_json::to_vec(claims).unwrap_or_default())
    )
}

/// The token: [`signing_input`] and its Ed25519 signature.
pub fn signed_token(signing_input: &str, signature: &[u8; 64]) -> String {
    format!("{signing_input}.{}", B64URL.encode(signature))
}

#[cfg(feature = "ed25519")]
impl SigningKey {
    /// Reads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`, or what
    /// `scripts/dev` generates into `.dev.vars`). Literal `\n` sequences are accepted as line
    /// breaks, since secrets are often stored on one line.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim().replace("\\n", "\n");
        let seed = crate::pkcs8::ed25519_seed(&pem).ok_or(KeyError::NotEd25519Pkcs8Pem)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        Ok(SigningKey {
            kid: key_id(&public),
            key,
            public,
        })
    }

    /// RFC 7638 thumbprint of the public key (shortened): stable across restarts, and changes
    /// exactly when the key does, so rotation needs no separate `kid` setting.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The public key as a JWK (for `/.well-known/jwks.json`).
    pub fn public_jwk(&self) -> serde_json::Value {
        public_jwk(&self.public)
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let input = signing_input(claims, &self.kid);
        let signature = self.key.sign(input.as_bytes());
        signed_token(&input, &signature.to_bytes())
    }
}

/// A public key as a JWK, with its `kid`.
pub fn public_jwk(public: &[u8; 32]) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": B64URL.encode(public),
        "kid": key_id(public),
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// Parses a list of Ed25519 public keys, each the base64url `x` of its JWK (what
/// `/.well-known/jwks.json` publishes), separated by commas or white space. Used for key
/// rotation: tokens signed by a previous key stay valid while its public key is listed.
pub fn parse_public_keys(list: &str) -> Result<Vec<[u8; 32]>, KeyError> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|x| {
            let bytes = B64URL
                .decode(x)
                .map_err(|_| KeyError::NotEd25519PublicKey)?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| KeyError::NotEd25519PublicKey)?;
            if is_small_order(&key) {
                return Err(KeyError::NotEd25519PublicKey);
            }
            // Without Ed25519 arithmetic here, the host's crypto refuses a bad point at import.
            #[cfg(feature = "ed25519")]
            ed25519_dalek::VerifyingKey::from_bytes(&key)
                .map_err(|_| KeyError::NotEd25519PublicKey)?;
            Ok(key)
        })
        .collect()
}

/// The y-coordinates (little-endian, sign bit clear) of Ed25519's eight points of small order,
/// and the two encodings y + p that lenient decoders also read (of y = 0 and y = 1). A "public
/// key" among them verifies forged signatures over any message with some verifiers (WebCrypto's
/// among them, which does not refuse such keys as `verify_strict` does), so none is ever
/// accepted. The tests derive the list from curve25519-dalek's eight-torsion points.
const SMALL_ORDER_Y: [[u8; 32]; 7] = [
    // y = 0 (order 4) and y = 1 (the identity)
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    // y = p - 1 (order 2)
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // the two y of the points of order 8
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    // y = p and y = p + 1: non-canonical encodings of y = 0 and y = 1
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Whether `key` encodes a point of small order (whatever its sign bit).
pub fn is_small_order(key: &[u8; 32]) -> bool {
    let mut y = *key;
    y[31] &= 0x7f;
    SMALL_ORDER_Y.contains(&y)
}

/// The `kid` of a public key: an RFC 7638 thumbprint, shortened.
pub fn key_id(public: &[u8; 32]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        B64URL.encode(public)
    );
    let digest = Sha256::digest(jwk.as_bytes());
    B64URL.encode(&digest[..12])
}

/// Verifies tokens against a set of public keys (several during key rotation).
pub struct Verifier {
    keys: Vec<Known>,
    issuer: String,
    audience: String,
}

/// A key tokens may be signed with.
struct Known {
    kid: String,
    public: [u8; 32],
    /// Decoded once: each verification would otherwise decompress the point again.
    #[cfg(feature = "ed25519")]
    point: VerifyingKey,
}

/// A token taken apart and checked as far as it can be without its signature
/// ([`Verifier::unverified`]): the host checks `signature` over `signing_input` with `key`,
/// then hands it to [`Verifier::accept`].
pub struct Unverified<'a> {
    pub signing_input: &'a str,
    pub signature: [u8; 64],
    /// The public key the token's `kid` names.
    pub key: [u8; 32],
    payload: Vec<u8>,
}

impl Verifier {
    pub fn new(issuer: &str, audience: &str) -> Self {
        Verifier {
            keys: Vec::new(),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// Adds a public key; one that is not a valid Ed25519 point (refused already by
    /// [`parse_public_keys`]) verifies nothing.
    pub fn with_key(mut self, public: [u8; 32]) -> Self {
        if is_small_order(&public) {
            return self;
        }
        #[cfg(feature = "ed25519")]
        let Ok(point) = VerifyingKey::from_bytes(&public) else {
            return self;
        };
        self.keys.push(Known {
            kid: key_id(&public),
            public,
            #[cfg(feature = "ed25519")]
            point,
        });
        self
    }

    pub fn with_keys(self, keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
        keys.into_iter().fold(self, Verifier::with_key)
    }

    /// Verifies `token` at `now` (seconds since the epoch) and returns its claims. In order:
    /// the form (three base64url parts), the header (`alg` EdDSA, a known `kid`), the signature
    /// (strict: no malleable or small-order signatures), then the claims.
    #[cfg(feature = "ed25519")]
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        let u = self.unverified(token)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.public == u.key)
            .map(|k| &k.point)
            .ok_or(TokenError::UnknownKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(&u.signature);
        key.verify_strict(u.signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        self.accept(u, now_secs)
    }

    /// The first steps of [`Verifier::verify`]: the form and the header, and the key its `kid`
    /// names. The signature is the host's to check next.
    pub fn unverified<'a>(&self, token: &'a str) -> Result<Unverified<'a>, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| B64URL.decode(part).map_err(|_| TokenError::Malformed);
        // Straight from the bytes into the struct: a duplicated member is refused.
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != ALG {
            return Err(TokenError::WrongAlgorithm);
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.public)
            .ok_or(TokenError::UnknownKey)?;
        let signature: [u8; 64] = B64URL
            .decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TokenError::BadSignature)?;
        Ok(Unverified {
            signing_input: &token[..header_and_payload_len(token)],
            signature,
            key,
            payload: decode(payload)?,
        })
    }

    /// The last step of [`Verifier::verify`], once the host found the signature good: the
    /// claims (present, issuer, audience, times).
    pub fn accept(&self, token: Unverified<'_>, now_secs: u64) -> Result<Claims, TokenError> {
        let payload = token.payload;
        let claims: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if ["exp", "sub", "iss", "aud"]
            .iter()
            .any(|c| claims.get(c).is_none_or(serde_json::Value::is_null))
        {
            return Err(TokenError::MissingClaim);
        }
        if claims["iss"] != self.issuer.as_str() {
            return Err(TokenError::WrongIssuer);
        }
        if claims["aud"] != self.audience.as_str() {
            return Err(TokenError::WrongAudience);
        }
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.exp.saturating_add(CLOCK_LEEWAY_SECS) <= now_secs {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_secs.saturating_add(CLOCK_LEEWAY_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// The length of `header.payload` in a token of three parts (what the signature covers).
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

/// A throw-away key for tests (a fixed RFC 8032 test vector seed: never use it for real).
#[doc(hidden)]
pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
-----END PRIVATE KEY-----";

/// Participant ids are derived from the user id: stable across reconnects and hibernation with
/// nothing to store, and short (12 characters), since every relayed note batch carries one.
pub fn participant_id(user_id: &str) -> String {
    let digest = Sha256::digest(user_id.as_bytes());
    B64URL.encode(&digest[..9])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            sub: "guest:abc".into(),
            name: "Ada".into(),
            roles: vec!["guest".into()],
            iat: NOW,
            exp: NOW + 3600,
            nbf: None,
            iss: "iss".into(),
            aud: "aud".into(),
            sid: None,
            generation: None,
        }
    }

    fn setup() -> (SigningKey, Verifier) {
        let key = SigningKey::from_pkcs8_pem(TEST_KEY_PEM).expect("test key parses");
        let verifier = Verifier::new("iss", "aud").with_key(key.public_key());
        (key, verifier)
    }

    #[test]
    fn round_trip() {
        let (key, verifier) = setup();
        let token = key.sign(&claims());
        assert_eq!(verifier.verify(&token, NOW), Ok(claims()));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    }

    /// Our tokens verify with `jsonwebtoken` (an independent implementation), and its tokens
    /// with ours; what it refuses, we refuse.
    #[test]
    fn agrees_with_an_independent_jwt_implementation() {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation, decode, encode};
        let (key, verifier) = setup();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&["iss"]);
        validation.set_audience(&["aud"]);
        validation.validate_exp = false;
        let theirs_key = DecodingKey::from_ed_der(&key.public_key());
        let ours = key.sign(&claims());
        let decoded = decode::<Claims>(&ours, &theirs_key, &validation).expect("they verify ours");
        assert_eq!(decoded.claims, claims());

        let encoding = EncodingKey::from_ed_pem(TEST_KEY_PEM.as_bytes()).expect("their key");
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid().into());
        let theirs = encode(&header, &claims(), &encoding).expect("they sign");
        assert_eq!(verifier.verify(&theirs, NOW), Ok(claims()));
        // Without a kid, or with their HS256: refused by both.
        let no_kid = encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &claims(),
            &encoding,
        )
        .expect("sign");
        assert_eq!(verifier.verify(&no_kid, NOW), Err(TokenError::UnknownKey));
        let hs = encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(&key.public_key()),
        )
        .expect("sign");
        assert_eq!(verifier.verify(&hs, NOW), Err(TokenError::WrongAlgorithm));
        assert!(decode::<Claims>(&hs, &theirs_key, &validation).is_err());
    }

    #[test]
    fn claims_are_checked_after_the_signature() {
        let (key, verifier) = setup();
        let signed = |payload: serde_json::Value| {
            let header = B64URL.encode(format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, key.kid()));
            let input = format!("{header}.{}", B64URL.encode(payload.to_string()));
            let signature = key.key.sign(input.as_bytes());
            format!("{input}.{}", B64URL.encode(signature.to_bytes()))
        };
        let mut c = serde_json::to_value(claims()).unwrap();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            verifier.verify(&signed(c), NOW),
            Err(TokenError::MissingClaim)
        );
        let mut c = serde_json::to_value(claims()).unwrap();
        c["exp"] = "soon".into();
        assert_eq!(verifier.verify(&signed(c), NOW), Err(TokenError::Malformed));
        let mut c = serde_json::to_value(claims()).unwrap();
        c["aud"] = serde_json::json!(["aud"]);
        assert_eq!(
            verifier.verify(&signed(c), NOW),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verifier.verify(&signed(serde_json::json!([1])), NOW),
            Err(TokenError::MissingClaim)
        );
        // A duplicated claim, and a header with extensions we would have to understand.
        let dup = |header: String, payload: &str| {
            let input = format!("{}.{}", B64URL.encode(header), B64URL.encode(payload));
            let signature = key.key.sign(input.as_bytes());
            format!("{input}.{}", B64URL.encode(signature.to_bytes()))
        };
        let kid = key.kid();
        let good = serde_json::to_string(&claims()).unwrap();
        let twice = good.replacen('{', r#"{"sub":"guest:other","#, 1);
        let plain = format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#);
        assert_eq!(
            verifier.verify(&dup(plain.clone(), &good), NOW),
            Ok(claims())
        );
        assert_eq!(
            verifier.verify(&dup(plain, &twice), NOW),
            Err(TokenError::Malformed)
        );
        let crit = format!(r#"{{"alg":"EdDSA","kid":"{kid}","crit":["exp"]}}"#);
        assert_eq!(
            verifier.verify(&dup(crit, &good), NOW),
            Err(TokenError::Malformed)
        );
        let two_algs = format!(r#"{{"alg":"none","alg":"EdDSA","kid":"{kid}"}}"#);
        assert_eq!(
            verifier.verify(&dup(two_algs, &good), NOW),
            Err(TokenError::Malformed)
        );

        // A fourth part, a padded or non-base64url signature, a truncated one.
        let token = key.sign(&claims());
        for bad in [
            format!("{token}.x"),
            format!("{token}="),
            token.replacen('.', ".+", 2),
            token[..token.len() - 4].to_owned(),
        ] {
            assert!(verifier.verify(&bad, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_line_pem_with_escaped_newlines() {
        let one_line = TEST_KEY_PEM.replace('\n', "\\n");
        let key = SigningKey::from_pkcs8_pem(&one_line).unwrap();
        assert_eq!(key.public_key(), setup().0.public_key());
        assert!(SigningKey::from_pkcs8_pem("not a key").is_err());
    }

    #[test]
    fn refusals() {
        let (key, verifier) = setup();
        let sign = |f: &dyn Fn(&mut Claims)| {
            let mut c = claims();
            f(&mut c);
            key.sign(&c)
        };
        assert_eq!(
            verifier.verify(&sign(&|c| c.exp = NOW - 10), NOW),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verifier.verify(&sign(&|c| c.nbf = Some(NOW + 60)), NOW),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            verifier.verify(&sign(&|c| c.iss = "x".into()), NOW),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            verifier.verify(&sign(&|c| c.aud = "x".into()), NOW),
            Err(TokenError::WrongAudience)
        );

        // Tampered payload, signature kept.
        let token = key.sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c.roles = vec!["admin".into()];
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(verifier.verify(&forged, NOW), Err(TokenError::BadSignature));

        // alg: none.
        let none = format!(
            "{}.{}.",
            B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(verifier.verify(&none, NOW).is_err());

        // Another key, unknown to the verifier.
        let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let verifier_other = Verifier::new("iss", "aud").with_key(other.verifying_key().to_bytes());
        assert_eq!(
            verifier_other.verify(&token, NOW),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(verifier.verify("a.b.c", NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn rotation_accepts_listed_previous_keys_only() {
        let (current, _) = setup();
        let old = SigningKey::from_pkcs8_pem(&ed25519_pem(3)).unwrap();
        let removed = SigningKey::from_pkcs8_pem(&ed25519_pem(4)).unwrap();
        let x = public_jwk(&old.public_key())["x"]
            .as_str()
            .unwrap()
            .to_owned();
        let listed = parse_public_keys(&format!(" {x}, ")).unwrap();
        assert_eq!(listed, vec![old.public_key()]);
        let verifier = Verifier::new("iss", "aud")
            .with_key(current.public_key())
            .with_keys(listed);
        assert!(verifier.verify(&current.sign(&claims()), NOW).is_ok());
        assert!(
            verifier.verify(&old.sign(&claims()), NOW).is_ok(),
            "the previous key still verifies"
        );
        assert_eq!(
            verifier.verify(&removed.sign(&claims()), NOW),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            parse_public_keys("nope"),
            Err(KeyError::NotEd25519PublicKey)
        );
        assert_eq!(parse_public_keys(""), Ok(vec![]));
    }

    /// A PKCS#8 PEM for a fixed seed (tests only).
    /// The list of small-order keys is curve25519-dalek's eight-torsion points (by y), plus the
    /// non-canonical y + p of y = 0 and 1; each such key, with either sign bit, is refused as a
    /// key and verifies nothing.
    #[test]
    fn small_order_keys_are_refused() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut expected: Vec<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|p| {
                let mut y = p.compress().to_bytes();
                y[31] &= 0x7f;
                y
            })
            .collect();
        for small in [0u8, 1] {
            // p + small, little-endian (p = 2^255 - 19).
            let mut y = [0xff; 32];
            y[0] = 0xed + small;
            y[31] = 0x7f;
            expected.push(y);
        }
        expected.sort();
        expected.dedup();
        let mut ours = SMALL_ORDER_Y.to_vec();
        ours.sort();
        assert_eq!(ours, expected);
        for y in SMALL_ORDER_Y {
            for sign in [0, 0x80] {
                let mut key = y;
                key[31] |= sign;
                assert!(is_small_order(&key));
                assert!(
                    VerifyingKey::from_bytes(&key).map_or(true, |k| k.is_weak()),
                    "{key:?}"
                );
                let x = B64URL.encode(key);
                assert!(parse_public_keys(&x).is_err(), "{x}");
                let v = Verifier::new("i", "a").with_key(key);
                assert!(v.keys.is_empty());
            }
        }
        let good = SigningKey::from_pkcs8_pem(TEST_KEY_PEM)
            .unwrap()
            .public_key();
        assert!(!is_small_order(&good));
    }

    fn ed25519_pem(seed: u8) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .to_pkcs8_pem(Default::default())
            .unwrap()
            .to_string()
    }

    #[test]
    fn identity_header_round_trip() {
        let id = Identity {
            user_id: "u".into(),
            name: "Zoë 🎹".into(),
            roles: vec!["guest".into()],
            ..Default::default()
        };
        let h = id.to_header();
        assert!(h.is_ascii());
        assert_eq!(Identity::from_header(&h), Some(id.clone()));
        assert_eq!(Identity::from_header("!!"), None);
        let full = Identity {
            session_id: Some("s1".into()),
            expires_at: Some(NOW * 1000),
            network: Some("net".into()),
            ..id
        };
        assert_eq!(Identity::from_header(&full.to_header()), Some(full));
        // A header from before these fields existed still loads.
        let old = B64URL.encode(br#"{"user_id":"u","name":"n","roles":[]}"#);
        assert_eq!(
            Identity::from_header(&old).map(|i| (i.session_id, i.expires_at, i.network)),
            Some((None, None, None))
        );
    }

    #[test]
    fn identity_from_claims_takes_session_and_guest_expiry() {
        let guest = Identity::from(claims());
        assert_eq!(guest.session_id, None);
        assert_eq!(guest.expires_at, Some((NOW + 3600) * 1000));
        let mut c = claims();
        c.sid = Some("s1".into());
        let member = Identity::from(c);
        assert_eq!(member.session_id.as_deref(), Some("s1"));
        assert_eq!(
            member.expires_at, None,
            "the host sets a member's session expiry"
        );
        assert_eq!(member.network, None);
    }
}
