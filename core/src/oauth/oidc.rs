//! OpenID Connect: the discovery document, the provider's keys (JWKS) and the ID token's checks
//! (OpenID Connect Core §3.1.3.7). The host checks the signature with its crypto (the
//! [`Unchecked::key`] this picks, over [`Unchecked::signing_input`]); everything else is here.
//! Only asymmetric algorithms are accepted: never `none`, never an HMAC (whose "key" an
//! attacker would take from the public JWKS).

use super::config::{Endpoints, Provider, provider_url};
use super::{ExternalProfile, OAuthError, unb64};
use crate::Millis;
use serde::Deserialize;
use serde_json::Value;

/// Discovery and JWKS are kept this long before they are fetched again.
pub const DISCOVERY_TTL_MS: Millis = 60 * 60 * 1000;
/// An ID token with a `kid` the cached JWKS lacks refetches it, at most this often (a storm of
/// made-up `kid`s must not become a storm of fetches).
pub const JWKS_REFETCH_MIN_MS: Millis = 60 * 1000;
/// Clock skew allowed on `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
const MAX_ID_TOKEN: usize = 16 * 1024;
const MAX_KEYS: usize = 32;

/// Reads the discovery document; its `issuer` must be the configured one exactly (§4.3).
pub fn parse_discovery(issuer: &str, body: &[u8]) -> Result<Endpoints, OAuthError> {
    #[derive(Deserialize)]
    struct Doc {
        issuer: String,
        authorization_endpoint: String,
        token_endpoint: String,
        jwks_uri: String,
        #[serde(default)]
        userinfo_endpoint: Option<String>,
    }
    let bad = |why: &str| OAuthError::Provider(format!("discovery: {why}"));
    let doc: Doc = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(bad("issuer differs"));
    }
    let url = |u: &str| provider_url(u).map_err(|e| bad(&e));
    Ok(Endpoints {
        authorize: url(&doc.authorization_endpoint)?,
        token: url(&doc.token_endpoint)?,
        userinfo: doc.userinfo_endpoint.as_deref().map(url).transpose()?,
        jwks: Some(url(&doc.jwks_uri)?),
    })
}

/// One public key of the provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub usage: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

/// Reads a JWKS; keys of kinds we do not use are skipped.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, OAuthError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set =
        serde_json::from_slice(body).map_err(|e| OAuthError::Provider(format!("jwks: {e}")))?;
    Ok(set
        .keys
        .into_iter()
        .take(MAX_KEYS)
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
        .collect())
}

/// The signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Whether `key` is a key of this algorithm.
    pub fn fits(self, key: &Jwk) -> bool {
        let kind = match self {
            Alg::Rs256 => key.kty == "RSA" && key.n.is_some() && key.e.is_some(),
            Alg::Es256 => {
                key.kty == "EC"
                    && key.crv.as_deref() == Some("P-256")
                    && key.x.is_some()
                    && key.y.is_some()
            }
            Alg::EdDsa => {
                key.kty == "OKP" && key.crv.as_deref() == Some("Ed25519") && key.x.is_some()
            }
        };
        kind && key.alg.as_deref().is_none_or(|a| a == self.name())
    }
}

/// An ID token read but not yet trusted.
#[derive(Debug, Clone)]
pub struct Unchecked {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`, the bytes signed.
    pub signing_input: String,
    pub signature: Vec<u8>,
    claims: Value,
}

/// Reads an ID token's form and algorithm (nothing in it is trusted yet).
pub fn inspect(id_token: &str) -> Result<Unchecked, OAuthError> {
    if id_token.len() > MAX_ID_TOKEN {
        return Err(OAuthError::Token("too long"));
    }
    let mut parts = id_token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OAuthError::Token("not a JWS"));
    };
    let header: Value = unb64(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(OAuthError::Token("header"))?;
    let alg = header["alg"]
        .as_str()
        .and_then(Alg::parse)
        .ok_or(OAuthError::Token("alg"))?;
    if header.get("crit").is_some() {
        return Err(OAuthError::Token("crit"));
    }
    let claims: Value = unb64(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or(OAuthError::Token("claims"))?;
    let signature = unb64(s).ok_or(OAuthError::Token("signature"))?;
    Ok(Unchecked {
        alg,
        kid: header["kid"].as_str().map(str::to_owned),
        signing_input: format!("{h}.{p}"),
        signature,
        claims,
    })
}

/// What a checked ID token (and userinfo) says about the player.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdClaims {
    pub sub: String,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    pub picture: Option<String>,
}

impl IdClaims {
    fn read(v: &Value) -> IdClaims {
        let s = |k: &str| {
            v[k].as_str()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        IdClaims {
            sub: s("sub").unwrap_or_default(),
            preferred_username: s("preferred_username")
                .or_else(|| s("email").and_then(|e| e.split('@').next().map(str::to_owned))),
            name: s("name"),
            picture: s("picture"),
        }
    }

    /// The member this identity becomes.
    pub fn profile(&self, provider: &str) -> ExternalProfile {
        ExternalProfile::new(
            provider,
            &self.sub,
            self.preferred_username.as_deref().or(self.name.as_deref()),
            self.name.as_deref().or(self.preferred_username.as_deref()),
            self.picture.as_deref(),
        )
    }
}

impl Unchecked {
    /// The provider's key to check the signature with: the one named by `kid`, or the only key
    /// that fits the algorithm when the token names none. `None`: refetch the JWKS (once).
    pub fn key<'a>(&self, jwks: &'a [Jwk]) -> Option<&'a Jwk> {
        match &self.kid {
            Some(kid) => jwks
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()) && self.alg.fits(k)),
            None => {
                let mut fitting = jwks.iter().filter(|k| self.alg.fits(k));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }

    /// The checks after the host verified the signature (`signature_valid`): `iss`, `aud` (and
    /// `azp` when there are several audiences), `exp`, `iat`, `nonce`, `sub`.
    pub fn accept(
        self,
        signature_valid: bool,
        provider: &Provider,
        issuer: &str,
        nonce: Option<&str>,
        now: Millis,
    ) -> Result<IdClaims, OAuthError> {
        if !signature_valid {
            return Err(OAuthError::Token("signature"));
        }
        let c = &self.claims;
        if c["iss"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer.trim_end_matches('/'))
        {
            return Err(OAuthError::Token("iss"));
        }
        let client = provider.client_id.as_str();
        let audiences: Vec<&str> = match &c["aud"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&client) {
            return Err(OAuthError::Token("aud"));
        }
        if (audiences.len() > 1 || c.get("azp").is_some()) && c["azp"].as_str() != Some(client) {
            return Err(OAuthError::Token("azp"));
        }
        let now_secs = now / 1000;
        match c["exp"].as_u64() {
            Some(exp) if exp + LEEWAY_SECS > now_secs => {}
            _ => return Err(OAuthError::Token("exp")),
        }
        match c["iat"].as_u64() {
            Some(iat) if iat <= now_secs + LEEWAY_SECS => {}
            _ => return Err(OAuthError::Token("iat")),
        }
        let want = nonce.ok_or(OAuthError::Token("nonce"))?;
        let got = c["nonce"].as_str().unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            got.as_bytes(),
            want.as_bytes(),
        )) {
            return Err(OAuthError::Token("nonce"));
        }
        let claims = IdClaims::read(c);
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(OAuthError::Token("sub"));
        }
        Ok(claims)
    }
}

/// The userinfo answer adds the profile; its `sub` must be the ID token's (§5.3.2), or it is
/// somebody else's profile.
pub fn userinfo(id: IdClaims, status: u16, body: &[u8]) -> Result<IdClaims, OAuthError> {
    if !(200..300).contains(&status) {
        return Err(OAuthError::Provider(format!("userinfo: {status}")));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| OAuthError::Provider("userinfo: not JSON".into()))?;
    let info = IdClaims::read(&v);
    if info.sub != id.sub {
        return Err(OAuthError::Token("userinfo sub"));
    }
    Ok(IdClaims {
        sub: id.sub,
        preferred_username: info.preferred_username.or(id.preferred_username),
        name: info.name.or(id.name),
        picture: info.picture.or(id.picture),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{b64, config};
    use super::*;
    use serde_json::json;

    const ISS: &str = "http://127.0.0.1:9/oidc";

    fn provider() -> Provider {
        config::parse(
            &format!(r#"[{{"id":"local","kind":"oidc","issuer":"{ISS}","client_id":"piano"}}]"#),
            |_| None,
        )
        .unwrap()
        .remove(0)
    }

    fn token(header: Value, claims: Value) -> String {
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(b"sig")
        )
    }

    fn claims(now_s: u64) -> Value {
        json!({"iss": ISS, "aud": "piano", "exp": now_s + 300, "iat": now_s, "nonce": "n1",
               "sub": "u-1", "preferred_username": "Ada L", "name": "Ada"})
    }

    fn check(header: Value, c: Value) -> Result<IdClaims, OAuthError> {
        inspect(&token(header, c))?.accept(true, &provider(), ISS, Some("n1"), 1_000_000_000)
    }

    const RS: fn() -> Value = || json!({"alg": "RS256", "kid": "k1"});

    #[test]
    fn a_good_id_token_passes_and_names_the_player() {
        let c = check(RS(), claims(1_000_000)).unwrap();
        assert_eq!(c.sub, "u-1");
        let p = c.profile("local");
        assert_eq!(p.display_name, "Ada");
    }

    #[test]
    fn every_bad_claim_is_refused() {
        let now = 1_000_000;
        let with = |k: &str, v: Value| {
            let mut c = claims(now);
            c[k] = v;
            c
        };
        let cases = [
            (with("iss", json!("http://127.0.0.1:9/evil")), "iss"),
            (with("aud", json!("other")), "aud"),
            (with("aud", json!(["other", "piano"])), "azp"),
            (with("exp", json!(now - 61)), "exp"),
            (with("exp", json!("soon")), "exp"),
            (with("iat", json!(now + 3600)), "iat"),
            (with("nonce", json!("n2")), "nonce"),
            (with("sub", json!("")), "sub"),
        ];
        for (c, why) in cases {
            assert_eq!(check(RS(), c), Err(OAuthError::Token(why)), "{why}");
        }
        let mut ok = with("aud", json!(["other", "piano"]));
        ok["azp"] = json!("piano");
        assert!(check(RS(), ok).is_ok());
        assert!(
            check(RS(), with("exp", json!(now - 30))).is_ok(),
            "within the leeway"
        );
        let t = inspect(&token(RS(), claims(now))).unwrap();
        assert_eq!(
            t.accept(false, &provider(), ISS, Some("n1"), now * 1000),
            Err(OAuthError::Token("signature"))
        );
        let t = inspect(&token(RS(), claims(now))).unwrap();
        assert_eq!(
            t.accept(true, &provider(), ISS, None, now * 1000),
            Err(OAuthError::Token("nonce"))
        );
    }

    #[test]
    fn only_asymmetric_algorithms_and_well_formed_tokens() {
        for alg in ["none", "HS256", "RS512", "PS256", ""] {
            let t = token(json!({"alg": alg}), claims(1));
            assert_eq!(inspect(&t).unwrap_err(), OAuthError::Token("alg"), "{alg}");
        }
        assert!(inspect("a.b").is_err());
        assert!(inspect("a.b.c.d").is_err());
        assert!(inspect(&format!("{}.e30.", b64(br#"{"alg":"none"}"#))).is_err());
        assert_eq!(
            inspect(&token(json!({"alg": "RS256", "crit": ["x"]}), claims(1))).unwrap_err(),
            OAuthError::Token("crit")
        );
    }

    #[test]
    fn keys_are_picked_by_kid_and_algorithm() {
        let jwks = parse_jwks(
            json!({"keys": [
                {"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB", "use": "sig"},
                {"kty": "RSA", "kid": "enc", "n": "AQAB", "e": "AQAB", "use": "enc"},
                {"kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"},
                {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
                {"kty": "OKP", "kid": "k3", "crv": "Ed25519", "x": "a", "alg": "EdDSA"}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(jwks.len(), 4, "the encryption key is not a signing key");
        let t = inspect(&token(RS(), claims(1))).unwrap();
        assert_eq!(t.key(&jwks).unwrap().kty, "RSA");
        let t = inspect(&token(json!({"alg": "ES256", "kid": "k1"}), claims(1))).unwrap();
        assert_eq!(t.key(&jwks).unwrap().kty, "EC");
        let t = inspect(&token(json!({"alg": "RS256", "kid": "k9"}), claims(1))).unwrap();
        assert!(t.key(&jwks).is_none(), "unknown kid: refetch");
        let t = inspect(&token(json!({"alg": "EdDSA"}), claims(1))).unwrap();
        assert_eq!(t.key(&jwks).unwrap().kid.as_deref(), Some("k3"));
        let t = inspect(&token(json!({"alg": "EdDSA", "kid": "k1"}), claims(1))).unwrap();
        assert!(
            t.key(&jwks).is_none(),
            "a kid naming a key of another algorithm"
        );
    }

    #[test]
    fn discovery_must_name_our_issuer() {
        let doc = |iss: &str| {
            json!({"issuer": iss, "authorization_endpoint": format!("{ISS}/auth"),
                   "token_endpoint": format!("{ISS}/token"), "jwks_uri": format!("{ISS}/jwks"),
                   "userinfo_endpoint": format!("{ISS}/me")})
            .to_string()
        };
        let e = parse_discovery(ISS, doc(ISS).as_bytes()).unwrap();
        assert_eq!(e.jwks.as_deref(), Some("http://127.0.0.1:9/oidc/jwks"));
        assert!(parse_discovery(ISS, doc("https://evil.example").as_bytes()).is_err());
        assert!(parse_discovery(ISS, b"{}").is_err());
    }

    #[test]
    fn userinfo_of_another_subject_is_refused() {
        let id = IdClaims {
            sub: "u-1".into(),
            ..Default::default()
        };
        let ok = userinfo(
            id.clone(),
            200,
            br#"{"sub":"u-1","name":"Ada","picture":"https://x/a.png"}"#,
        )
        .unwrap();
        assert_eq!(ok.name.as_deref(), Some("Ada"));
        assert_eq!(
            userinfo(id.clone(), 200, br#"{"sub":"u-2"}"#),
            Err(OAuthError::Token("userinfo sub"))
        );
        assert!(matches!(
            userinfo(id, 500, b""),
            Err(OAuthError::Provider(_))
        ));
    }
}
