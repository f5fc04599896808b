//! Token security on the real runtime: the RFC 8725 ("JWT best current practices") cases are
//! refused at both entries that take a token — a REST call (`GET /api/users/me`) and a WebSocket
//! upgrade — and key rotation keeps listed previous keys valid.
//!
//! The remaining case, a token of a revoked (logged-out or refreshed-away) session, is checked at
//! both entries by `accounts::register_login_connect_refresh_logout`.

use crate::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::Mac;
use piano_core::identity::SigningKey;

fn b64json(v: &serde_json::Value) -> String {
    B64.encode(serde_json::to_vec(v).expect("json"))
}

/// Signs arbitrary header fields and claims with the server's current key (EdDSA).
fn sign_raw(s: &Server, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(s.key_pem.as_bytes()).expect("test key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn hs256(header: &serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
    let signing_input = format!("{}.{}", b64json(header), b64json(claims));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        B64.encode(mac.finalize().into_bytes())
    )
}

/// Status of `GET /api/users/me` with this token.
async fn rest_status(s: &Server, token: &str) -> (u16, serde_json::Value) {
    let resp = crate::http()
        .get(s.http("/api/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/users/me");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

pub async fn rfc8725_bad_tokens_are_refused_at_rest_and_websocket(s: &Server) {
    let kid = s.key.kid().to_owned();
    let claims = serde_json::to_value(s.claims("guest:attacker", "Mallory")).unwrap();
    let good = s.sign(&s.claims("guest:attacker", "Mallory"));
    let parts: Vec<&str> = good.split('.').collect();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims.clone();
        f(&mut c);
        c
    };
    let public_x = s.key.public_jwk()["x"].as_str().unwrap().to_owned();
    let admin_payload = b64json(&with(&|c| c["roles"] = serde_json::json!(["admin"])));
    let mut tampered_sig = parts[2].to_owned();
    let last = tampered_sig.pop().unwrap();
    tampered_sig.push(if last == 'A' { 'B' } else { 'A' });

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64json(&serde_json::json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
        ),
        (
            "HS256 with the public key (JWK x) as the secret",
            hs256(
                &serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
                &claims,
                public_x.as_bytes(),
            ),
        ),
        (
            "HS256 with the raw public key as the secret",
            hs256(
                &serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
                &claims,
                &s.key.public_key(),
            ),
        ),
        // The signature bytes are random: the point is that RS256 is refused whatever follows.
        (
            "RS256",
            format!(
                "{}.{}.{}",
                b64json(&serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid})),
                parts[1],
                B64.encode([7u8; 256])
            ),
        ),
        ("unknown kid", sign_raw(s, "no-such-key", &claims)),
        ("no kid", {
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            let key = jsonwebtoken::EncodingKey::from_ed_pem(s.key_pem.as_bytes()).unwrap();
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        }),
        (
            "tampered payload (roles: admin)",
            format!("{}.{}.{}", parts[0], admin_payload, parts[2]),
        ),
        (
            "tampered signature",
            format!("{}.{}.{}", parts[0], parts[1], tampered_sig),
        ),
        (
            "expired",
            sign_raw(s, &kid, &with(&|c| c["exp"] = (now_secs() - 120).into())),
        ),
        (
            "nbf in the future",
            sign_raw(s, &kid, &with(&|c| c["nbf"] = (now_secs() + 3600).into())),
        ),
        (
            "wrong iss",
            sign_raw(s, &kid, &with(&|c| c["iss"] = "someone-else".into())),
        ),
        (
            "wrong aud",
            sign_raw(s, &kid, &with(&|c| c["aud"] = "someone-else".into())),
        ),
        (
            "missing exp",
            sign_raw(
                s,
                &kid,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
        ),
        ("not a JWT", "definitely-not-a-token".into()),
    ];
    for (what, token) in &cases {
        let (status, body) = rest_status(s, token).await;
        assert_eq!(status, 401, "REST accepted a token with {what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        let refused = refused_upgrade(
            &format!("{}?token={token}", s.ws_url(&unique("rfc8725"))),
            &[],
        )
        .await;
        assert_eq!(
            refused.status, 401,
            "WebSocket accepted a token with {what}: {:?}",
            refused.body
        );
    }
    // The untampered token passes both.
    let (status, body) = rest_status(s, &good).await;
    assert_eq!(
        (status, body["id"].as_str(), body["kind"].as_str()),
        (200, Some("guest:attacker"), Some("guest"))
    );
    Client::connect(
        &format!("{}?token={good}", s.ws_url(&unique("rfc8725"))),
        &[],
    )
    .await
    .expect("valid token");
    // No token at all.
    let resp = crate::get(s.http("/api/users/me")).await.unwrap();
    assert_eq!(resp.status(), 401);
}

pub async fn rotated_keys_verify_while_listed_and_are_published(s: &Server) {
    let (status, jwks): (u16, serde_json::Value) = {
        let resp = crate::get(s.http("/.well-known/jwks.json")).await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    };
    assert_eq!(status, 200);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(
        kids,
        [s.key.kid(), s.previous_key.kid()],
        "current key first, then the previous one"
    );

    let old_token = s
        .previous_key
        .sign(&s.claims("guest:from-before", "Old Timer"));
    assert_eq!(
        rest_status(s, &old_token).await.0,
        200,
        "a token of the previous key still works"
    );
    Client::connect(
        &format!("{}?token={old_token}", s.ws_url(&unique("rotation"))),
        &[],
    )
    .await
    .expect("previous key connects");

    // A key that is no longer listed (removed from rotation) is refused.
    let removed = SigningKey::from_pkcs8_pem(&random_key_pem()).unwrap();
    let token = removed.sign(&s.claims("guest:removed", "Gone"));
    assert_eq!(rest_status(s, &token).await.0, 401);
    let refused = refused_upgrade(
        &format!("{}?token={token}", s.ws_url(&unique("rotation"))),
        &[],
    )
    .await;
    assert_eq!(refused.status, 401);
}
