//! The authorization-code flow (RFC 6749) with PKCE (RFC 7636, `S256`), `state` and, for
//! OpenID Connect, `nonce`. Between `start` and the callback the flow lives in the browser, in
//! the cookie `piano_oauth`, HMAC-signed under a key derived from the server's signing key: a
//! visitor who starts and abandons a sign-in leaves nothing on the server, and any replica or
//! isolate can finish it. The cookie is cleared at the first callback whatever happens.

use super::config::{Endpoints, Provider};
use super::{OAuthError, b64, form, unb64};
use crate::Millis;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FLOW_COOKIE: &str = "piano_oauth";
pub const FLOW_PATH: &str = "/api/auth/oauth";
/// How long a player may take at the provider.
pub const FLOW_TTL_MS: Millis = 10 * 60 * 1000;
pub const MAX_RETURN_TO: usize = 512;
/// The random bytes [`start`] consumes: state 16, verifier 32, nonce 16.
pub const START_RANDOM: usize = 64;

/// The key flow cookies are signed with, derived from the JWT signing key's seed (so every
/// replica and isolate of a deployment has it, and no extra secret is needed).
pub struct FlowKey([u8; 32]);

impl FlowKey {
    pub fn from_seed(seed: &[u8; 32]) -> FlowKey {
        let mut h = Sha256::new();
        h.update(b"piano-oauth-flow-v1\0");
        h.update(seed);
        FlowKey(h.finalize().into())
    }

    /// From the signing key's PEM (`JWT_PRIVATE_KEY`).
    pub fn from_pem(pem: &str) -> Option<FlowKey> {
        crate::pkcs8::ed25519_key(pem).map(|(s, _)| FlowKey::from_seed(&s))
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        // A 32-byte key is always accepted by HMAC.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        m.update(data);
        m.finalize().into_bytes().into()
    }
}

/// What the browser carries between `start` and the callback (short names: it is a cookie).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The provider's id.
    pub p: String,
    pub state: String,
    /// The PKCE verifier.
    pub v: String,
    /// The OpenID Connect nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Where to go afterwards (a checked path).
    pub r: String,
    /// A link flow: the member (account key) who asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l: Option<String>,
    /// Expiry (ms).
    pub e: Millis,
}

impl Flow {
    fn seal(&self, key: &FlowKey) -> String {
        let body = b64(&serde_json::to_vec(self).unwrap_or_default());
        let tag = b64(&key.mac(body.as_bytes()));
        format!("{body}.{tag}")
    }

    fn open(value: &str, key: &FlowKey) -> Result<Flow, OAuthError> {
        let (body, tag) = value.split_once('.').ok_or(OAuthError::Flow("malformed"))?;
        let tag = unb64(tag).ok_or(OAuthError::Flow("malformed"))?;
        let expected = key.mac(body.as_bytes());
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &tag[..])) {
            return Err(OAuthError::Flow("bad signature"));
        }
        let bytes = unb64(body).ok_or(OAuthError::Flow("malformed"))?;
        serde_json::from_slice(&bytes).map_err(|_| OAuthError::Flow("malformed"))
    }
}

/// `return_to` as asked, or `/`: a path on this site only.
pub fn check_return_to(raw: Option<&str>) -> Result<String, OAuthError> {
    let Some(r) = raw.filter(|r| !r.is_empty()) else {
        return Ok("/".into());
    };
    let b = r.as_bytes();
    // ASCII only: it goes back out in a `Location` header (a browser's own paths are
    // percent-encoded anyway).
    let ok = r.len() <= MAX_RETURN_TO
        && r.is_ascii()
        && b[0] == b'/'
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && !r
            .chars()
            .any(|c| c.is_control() || c == '\\' || c.is_whitespace());
    if ok {
        Ok(r.to_owned())
    } else {
        Err(OAuthError::BadReturnTo)
    }
}

/// What `start` answers: the provider's address to redirect to, and the flow cookie to set.
#[derive(Debug, Clone)]
pub struct Start {
    pub location: String,
    pub set_cookie: String,
}

/// Begins a flow. `random` from the host's CSPRNG; `secure`: see [`super::cookies::secure`].
#[allow(clippy::too_many_arguments)]
pub fn start(
    provider: &Provider,
    endpoints: &Endpoints,
    redirect_uri: &str,
    return_to: Option<&str>,
    link: Option<String>,
    random: &[u8; START_RANDOM],
    now: Millis,
    key: &FlowKey,
    secure: bool,
) -> Result<Start, OAuthError> {
    let r = check_return_to(return_to)?;
    let state = b64(&random[..16]);
    let verifier = b64(&random[16..48]);
    let nonce = provider.is_oidc().then(|| b64(&random[48..64]));
    let challenge = b64(&Sha256::digest(verifier.as_bytes()));
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", provider.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("scope", provider.scopes()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if let Some(n) = &nonce {
        params.push(("nonce", n));
    }
    let sep = if endpoints.authorize.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{sep}{}", endpoints.authorize, form(&params));
    let flow = Flow {
        p: provider.id.clone(),
        state,
        v: verifier,
        n: nonce,
        r,
        l: link,
        e: now + FLOW_TTL_MS,
    };
    let set_cookie = super::cookies::set(
        FLOW_COOKIE,
        &flow.seal(key),
        FLOW_PATH,
        "Lax",
        true,
        secure,
        FLOW_TTL_MS / 1000,
    );
    Ok(Start {
        location,
        set_cookie,
    })
}

/// The cookie that ends a flow (set on every callback answer).
pub fn clear_flow_cookie(secure: bool) -> String {
    super::cookies::set(FLOW_COOKIE, "", FLOW_PATH, "Lax", true, secure, 0)
}

/// The callback's checks, in order: the flow cookie (signature, provider, expiry), `state`,
/// the provider's `error`, the code. Returns the flow and the code to exchange.
pub fn callback(
    provider: &str,
    query: &str,
    cookie_header: Option<&str>,
    key: &FlowKey,
    now: Millis,
) -> Result<(Flow, String), OAuthError> {
    let value = cookie_header
        .and_then(|h| super::cookies::get(h, FLOW_COOKIE))
        .filter(|v| !v.is_empty())
        .ok_or(OAuthError::Flow("no flow cookie"))?;
    let flow = Flow::open(value, key)?;
    if flow.p != provider {
        return Err(OAuthError::Flow("another provider's flow"));
    }
    if now >= flow.e {
        return Err(OAuthError::Flow("expired"));
    }
    let state = super::query_param(query, "state").unwrap_or_default();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        state.as_bytes(),
        flow.state.as_bytes(),
    )) {
        return Err(OAuthError::Flow("state differs"));
    }
    if let Some(error) = super::query_param(query, "error") {
        return Err(OAuthError::Denied(error));
    }
    let code = super::query_param(query, "code")
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or(OAuthError::Flow("no code"))?;
    Ok((flow, code))
}

/// An HTTP request for the host to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

/// The code exchange: the verifier proves this is the browser that started; the client
/// authenticates with HTTP Basic (RFC 6749 §2.3.1) when it has a secret.
pub fn token_request(
    provider: &Provider,
    endpoints: &Endpoints,
    flow: &Flow,
    code: &str,
    redirect_uri: &str,
) -> HttpRequest {
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", &flow.v),
        ("client_id", &provider.client_id),
    ]);
    let mut headers = vec![
        (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("accept", "application/json".to_owned()),
    ];
    if let Some(secret) = &provider.client_secret {
        use base64::Engine;
        let pair = format!(
            "{}:{}",
            crate::names::percent_encode(&provider.client_id),
            crate::names::percent_encode(secret)
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(pair);
        headers.push(("authorization", format!("Basic {basic}")));
    }
    HttpRequest {
        method: "POST",
        url: endpoints.token.clone(),
        headers,
        body: Some(body),
    }
}

/// What the token endpoint gave.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub id_token: Option<String>,
}

/// Reads the token endpoint's answer: `invalid_grant` (a replayed or expired code, a wrong
/// verifier) is the code's fault; anything else unusable is the provider's.
pub fn token_response(status: u16, body: &[u8]) -> Result<Tokens, OAuthError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        id_token: Option<String>,
        #[serde(default)]
        token_type: Option<String>,
        #[serde(default)]
        error: Option<String>,
    }
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        return match answer.and_then(|a| a.error) {
            Some(e) if e == "invalid_grant" => Err(OAuthError::Code),
            Some(e) => Err(OAuthError::Provider(format!(
                "token endpoint: {status} {e}"
            ))),
            None => Err(OAuthError::Provider(format!("token endpoint: {status}"))),
        };
    }
    let a = answer.ok_or_else(|| OAuthError::Provider("token endpoint: not JSON".into()))?;
    let bearer = a
        .token_type
        .as_deref()
        .is_none_or(|t| t.eq_ignore_ascii_case("bearer"));
    match a.access_token {
        Some(t) if bearer && !t.is_empty() && t.len() <= 4096 => Ok(Tokens {
            access_token: t,
            id_token: a.id_token,
        }),
        _ => Err(OAuthError::Provider(
            "token endpoint: no bearer access token".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::config;
    use super::super::query_param;
    use super::*;

    fn key() -> FlowKey {
        FlowKey::from_seed(&[7; 32])
    }

    fn oidc() -> (Provider, Endpoints) {
        let p = config::parse(
            r#"[{"id":"local","kind":"oidc","issuer":"http://127.0.0.1:9/oidc","client_id":"piano"}]"#,
            |_| Some("sec:ret".into()),
        )
        .unwrap()
        .remove(0);
        let e = Endpoints {
            authorize: "http://127.0.0.1:9/oidc/auth".into(),
            token: "http://127.0.0.1:9/oidc/token".into(),
            userinfo: None,
            jwks: Some("http://127.0.0.1:9/oidc/jwks".into()),
        };
        (p, e)
    }

    fn cookie_of(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_owned()
    }

    fn started(now: Millis) -> (Start, Provider, Endpoints) {
        let (p, e) = oidc();
        let rnd = [3u8; START_RANDOM];
        let s = start(
            &p,
            &e,
            "http://x/cb",
            Some("/r?a=1"),
            None,
            &rnd,
            now,
            &key(),
            false,
        )
        .unwrap();
        (s, p, e)
    }

    #[test]
    fn start_redirects_with_pkce_state_and_nonce() {
        let (s, _, _) = started(1000);
        let q = s.location.split_once('?').unwrap().1;
        assert!(s.location.starts_with("http://127.0.0.1:9/oidc/auth?"));
        assert_eq!(
            query_param(q, "code_challenge_method").as_deref(),
            Some("S256")
        );
        assert_eq!(
            query_param(q, "redirect_uri").as_deref(),
            Some("http://x/cb")
        );
        assert_eq!(query_param(q, "scope").as_deref(), Some("openid profile"));
        assert!(query_param(q, "nonce").is_some());
        assert!(s.set_cookie.contains("HttpOnly") && s.set_cookie.contains("Path=/api/auth/oauth"));
        assert!(s.set_cookie.contains("SameSite=Lax") && !s.set_cookie.contains("Secure"));
        // The challenge is S256 of the verifier the cookie keeps.
        let state = query_param(q, "state").unwrap();
        let cb = format!("code=abc&state={state}");
        let (flow, code) =
            callback("local", &cb, Some(&cookie_of(&s.set_cookie)), &key(), 2000).unwrap();
        assert_eq!(code, "abc");
        assert_eq!(flow.r, "/r?a=1");
        assert_eq!(
            query_param(q, "code_challenge").unwrap(),
            b64(&Sha256::digest(flow.v.as_bytes()))
        );
    }

    #[test]
    fn callback_refuses_every_broken_flow() {
        let (s, _, _) = started(1000);
        let q = s.location.split_once('?').unwrap().1.to_owned();
        let state = query_param(&q, "state").unwrap();
        let good = cookie_of(&s.set_cookie);
        let cb = format!("code=abc&state={state}");
        let flow = |r: Result<(Flow, String), OAuthError>| r.unwrap_err();
        assert_eq!(
            flow(callback("local", &cb, None, &key(), 2000)),
            OAuthError::Flow("no flow cookie")
        );
        assert_eq!(
            flow(callback(
                "local",
                "code=abc&state=zzz",
                Some(&good),
                &key(),
                2000
            )),
            OAuthError::Flow("state differs")
        );
        assert_eq!(
            flow(callback("local", "code=abc", Some(&good), &key(), 2000)),
            OAuthError::Flow("state differs")
        );
        assert_eq!(
            flow(callback(
                "local",
                &cb,
                Some(&good),
                &key(),
                1000 + FLOW_TTL_MS
            )),
            OAuthError::Flow("expired")
        );
        assert_eq!(
            flow(callback("discord", &cb, Some(&good), &key(), 2000)),
            OAuthError::Flow("another provider's flow")
        );
        let other = FlowKey::from_seed(&[8; 32]);
        assert_eq!(
            flow(callback("local", &cb, Some(&good), &other, 2000)),
            OAuthError::Flow("bad signature")
        );
        // A tampered body (say, a verifier of the attacker's choosing) breaks the signature.
        let (body, tag) = good.split_once('=').unwrap().1.split_once('.').unwrap();
        let mut f: Flow = serde_json::from_slice(&unb64(body).unwrap()).unwrap();
        f.v = "attacker".into();
        let forged = format!(
            "piano_oauth={}.{tag}",
            b64(&serde_json::to_vec(&f).unwrap())
        );
        assert_eq!(
            flow(callback("local", &cb, Some(&forged), &key(), 2000)),
            OAuthError::Flow("bad signature")
        );
        let denied = format!("error=access_denied&state={state}");
        assert_eq!(
            flow(callback("local", &denied, Some(&good), &key(), 2000)),
            OAuthError::Denied("access_denied".into())
        );
        let no_code = format!("state={state}");
        assert_eq!(
            flow(callback("local", &no_code, Some(&good), &key(), 2000)),
            OAuthError::Flow("no code")
        );
    }

    #[test]
    fn return_to_is_a_local_path_only() {
        assert_eq!(check_return_to(None).unwrap(), "/");
        assert_eq!(
            check_return_to(Some("/rooms?x=1#a")).unwrap(),
            "/rooms?x=1#a"
        );
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil.example",
            "/a\\b",
            "/a\nb",
            "/ a",
            "javascript:alert(1)",
            "/\u{2603}",
            "/caf\u{e9}",
        ] {
            assert_eq!(
                check_return_to(Some(bad)),
                Err(OAuthError::BadReturnTo),
                "{bad}"
            );
        }
        assert!(check_return_to(Some(&format!("/{}", "a".repeat(MAX_RETURN_TO)))).is_err());
    }

    #[test]
    fn token_exchange_request_and_answers() {
        let (s, p, e) = started(1000);
        let q = s.location.split_once('?').unwrap().1.to_owned();
        let state = query_param(&q, "state").unwrap();
        let (flow, code) = callback(
            "local",
            &format!("code=c%2B1&state={state}"),
            Some(&cookie_of(&s.set_cookie)),
            &key(),
            2000,
        )
        .unwrap();
        let r = token_request(&p, &e, &flow, &code, "http://x/cb");
        let body = r.body.unwrap();
        assert_eq!(query_param(&body, "code").as_deref(), Some("c+1"));
        assert_eq!(query_param(&body, "code_verifier").unwrap(), flow.v);
        // Basic auth over the form-encoded id and secret.
        let basic = r.headers.iter().find(|h| h.0 == "authorization").unwrap();
        assert_eq!(basic.1, "Basic cGlhbm86c2VjJTNBcmV0");
        assert!(
            token_response(
                200,
                br#"{"access_token":"a","token_type":"Bearer","id_token":"x"}"#
            )
            .is_ok()
        );
        assert_eq!(
            token_response(400, br#"{"error":"invalid_grant"}"#).unwrap_err(),
            OAuthError::Code
        );
        assert!(matches!(
            token_response(500, b"oops"),
            Err(OAuthError::Provider(_))
        ));
        assert!(matches!(
            token_response(200, br#"{"token_type":"mac","access_token":"a"}"#),
            Err(OAuthError::Provider(_))
        ));
        assert!(matches!(
            token_response(200, b"<html>"),
            Err(OAuthError::Provider(_))
        ));
    }
}
