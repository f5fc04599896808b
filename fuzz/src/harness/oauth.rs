//! What a provider or a browser hands the sign-in flow: callback queries and flow cookies,
//! ID tokens, discovery documents and JWKS, Discord profiles, token endpoint answers,
//! `return_to` and `Cookie` headers. Byte 0 picks the parser; the rest is its input. Besides
//! "no panic", a few properties: an accepted `return_to` is a local path, and a flow started
//! here always comes back through its own callback.

use piano_core::oauth::config::{self, Provider};
use piano_core::oauth::flow::{self, FlowKey, START_RANDOM};
use piano_core::oauth::{cookies, discord, oidc, query_param};

pub const NOW_MS: u64 = 1_700_000_000_000;
pub const ISSUER: &str = "https://idp.example";

fn providers() -> Vec<Provider> {
    config::parse(
        r#"[{"id":"discord","kind":"discord","client_id":"1"},
            {"id":"idp","kind":"oidc","issuer":"https://idp.example","client_id":"piano"}]"#,
        |_| Some("secret".into()),
    )
    .unwrap_or_default()
}

pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let s: &str = &text;
    let key = FlowKey::from_seed(&[9; 32]);
    let ps = providers();
    match which % 6 {
        0 => {
            let mut parts = s.splitn(3, '\n');
            let (p, q, c) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next(),
            );
            let _ = flow::callback(p, q, c, &key, NOW_MS);
            round_trip(&ps, rest, &key);
        }
        1 => {
            if let Ok(t) = oidc::inspect(s) {
                let jwks = oidc::parse_jwks(
                    br#"{"keys":[{"kty":"RSA","kid":"k","n":"AQAB","e":"AQAB"}]}"#,
                )
                .unwrap_or_default();
                let _ = t.key(&jwks);
                if let Some(p) = ps.get(1) {
                    let _ = t.accept(true, p, ISSUER, Some("n"), NOW_MS);
                }
            }
        }
        2 => {
            let _ = oidc::parse_discovery(ISSUER, rest);
            let _ = oidc::parse_jwks(rest);
        }
        3 => {
            if let Some(p) = ps.first() {
                let _ = discord::profile(p, 200, rest);
            }
        }
        4 => {
            if let Ok(r) = flow::check_return_to(Some(s)) {
                assert!(
                    r.starts_with('/') && !r.starts_with("//") && !r.starts_with("/\\"),
                    "{r:?}"
                );
            }
            let _ = cookies::get(s, cookies::REFRESH_COOKIE);
            let _ = query_param(s, "state");
        }
        _ => {
            let _ = flow::token_response(200, rest);
            let _ = flow::token_response(400, rest);
            let id = oidc::IdClaims {
                sub: "u".into(),
                ..Default::default()
            };
            let _ = oidc::userinfo(id, 200, rest);
        }
    }
}

/// A flow started with these bytes as its randomness comes back through its callback.
fn round_trip(ps: &[Provider], rest: &[u8], key: &FlowKey) {
    let Some(p) = ps.get(1) else { return };
    let mut random = [0u8; START_RANDOM];
    for (r, b) in random.iter_mut().zip(rest.iter()) {
        *r = *b;
    }
    let endpoints = config::Endpoints {
        authorize: "https://idp.example/auth".into(),
        token: "https://idp.example/token".into(),
        userinfo: None,
        jwks: Some("https://idp.example/jwks".into()),
    };
    let Ok(start) = flow::start(
        p,
        &endpoints,
        "https://piano.example/cb",
        None,
        None,
        &random,
        NOW_MS,
        key,
        true,
    ) else {
        panic!("a flow without return_to starts");
    };
    let query = start.location.split_once('?').map(|x| x.1).unwrap_or("");
    let state = query_param(query, "state").unwrap_or_default();
    let cookie = start.set_cookie.split(';').next().unwrap_or("");
    let back = flow::callback(
        "idp",
        &format!("code=c&state={state}"),
        Some(cookie),
        key,
        NOW_MS + 1,
    );
    assert!(back.is_ok(), "{back:?}");
}
