//! Tokens: guest sign-in, the JWKS, and the token check in front of every room connection.

use crate::config::{self, Config};
use piano_core::identity::{Claims, Identity, public_jwk};
use piano_core::limits::SUBPROTOCOL;
use piano_core::names;
use piano_durable_objects::json_error;
use std::rc::Rc;
use worker::*;

/// Prefix of the subprotocol entry that carries a token (browsers cannot set headers on a
/// WebSocket): `Sec-WebSocket-Protocol: pianorhythm.v1, bearer.<jwt>`.
pub const BEARER_PREFIX: &str = "bearer.";

pub fn config_or_503(env: &Env) -> std::result::Result<Rc<Config>, Result<Response>> {
    config::load(env).map_err(|e| json_error(503, "not_configured", &e.0))
}

pub fn jwks(env: &Env) -> Result<Response> {
    let cfg = match config_or_503(env) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let keys: Vec<_> = cfg.public_keys.iter().map(public_jwk).collect();
    let mut resp = Response::from_json(&serde_json::json!({ "keys": keys }))?;
    resp.headers_mut()
        .set("cache-control", "public, max-age=300")?;
    Ok(resp)
}

pub async fn guest(mut req: Request, env: &Env) -> Result<Response> {
    let cfg = match crate::accounts::limited_config(&req, env).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let body = match crate::accounts::capped_body(&mut req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    #[derive(serde::Deserialize)]
    struct GuestRequest {
        name: String,
    }
    let Ok(GuestRequest { name }) = serde_json::from_slice::<GuestRequest>(&body) else {
        return json_error(
            400,
            "invalid_json",
            r#"expected a JSON body like {"name": "Ada"}"#,
        );
    };
    let name = match names::display_name(&name) {
        Ok(n) => n,
        Err(e) => return json_error(400, "invalid_name", &format!("name {e}")),
    };
    let now = Date::now().as_millis() / 1000;
    let claims = Claims {
        sub: format!("guest:{}", random_hex(8)?),
        name,
        roles: vec!["guest".into()],
        iat: now,
        exp: now + cfg.guest_ttl_secs,
        nbf: None,
        sid: None,
        generation: None,
        iss: cfg.issuer.clone(),
        aud: cfg.audience.clone(),
    };
    let token = cfg.signing.sign(&claims);
    let mut resp = Response::from_json(&serde_json::json!({
        "token": token,
        "expires_at": claims.exp,
        "user": { "id": claims.sub, "name": claims.name, "roles": claims.roles },
    }))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}

/// The token of a WebSocket upgrade and the subprotocol to echo back.
pub struct UpgradeAuth {
    pub token: Option<String>,
    pub subprotocol: Option<&'static str>,
}

/// Reads the token from `?token=` (tools) or a `bearer.<jwt>` subprotocol entry (browsers).
/// A client that offers subprotocols must offer `pianorhythm.v1`, the one the server echoes:
/// echoing nothing would make the browser fail the handshake, and echoing the token would send
/// the credential back in a header.
pub fn upgrade_auth(req: &Request) -> std::result::Result<UpgradeAuth, &'static str> {
    let mut token = req.url().ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let offered = req.headers().get("sec-websocket-protocol").ok().flatten();
    let mut subprotocol = None;
    if let Some(offered) = offered {
        let mut has_ours = false;
        for p in offered.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(t) = p.strip_prefix(BEARER_PREFIX) {
                token.get_or_insert_with(|| t.to_owned());
            } else if p == SUBPROTOCOL {
                has_ours = true;
            }
        }
        if !has_ours {
            return Err("offer the WebSocket subprotocol pianorhythm.v1");
        }
        subprotocol = Some(SUBPROTOCOL);
    }
    Ok(UpgradeAuth { token, subprotocol })
}

/// Verifies a token; on failure, the 401 (or 503) response to return.
/// Verifies a token; on failure, the 401 (or 503) response to return. Members' tokens are also
/// checked against their session (a logged-out or refreshed-away token is refused).
/// A member's identity ends with their session (`expires_at`, as the account answered), a
/// guest's with the token.
pub async fn verify(
    env: &Env,
    token: Option<&str>,
) -> std::result::Result<Identity, Result<Response>> {
    let (claims, session_expires) = verify_session(env, token).await?;
    let member = claims.sid.is_some();
    let mut identity = Identity::from(claims);
    if member {
        identity.expires_at = session_expires;
    }
    Ok(identity)
}

pub async fn verify_claims(
    env: &Env,
    token: Option<&str>,
) -> std::result::Result<Claims, Result<Response>> {
    verify_session(env, token).await.map(|(c, _)| c)
}

/// The token's claims and, for a member, when its session expires (when the account knows).
async fn verify_session(
    env: &Env,
    token: Option<&str>,
) -> std::result::Result<(Claims, Option<u64>), Result<Response>> {
    let cfg = config_or_503(env)?;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(unauthorized(
            "a token is required: Authorization: Bearer <jwt>, ?token=<jwt> or subprotocol bearer.<jwt>",
        ));
    };
    let now = Date::now().as_millis() / 1000;
    let claims = cfg
        .verifier
        .verify(token, now)
        .map_err(|e| unauthorized(&e.to_string()))?;
    let mut expires = None;
    if let Some(sid) = &claims.sid {
        let check =
            crate::accounts::session_is_live(env, &claims.sub, sid, claims.generation.unwrap_or(0))
                .await
                .map_err(|e| {
                    console_error!("session check failed: {e}");
                    json_error(503, "unavailable", "could not check the session; try again")
                })?;
        let Some(session_expires) = check else {
            return Err(unauthorized(
                "the session has ended (logged out or refreshed): log in again",
            ));
        };
        expires = session_expires;
    }
    Ok((claims, expires))
}

pub fn unauthorized(message: &str) -> Result<Response> {
    let mut resp = json_error(401, "unauthorized", message)?;
    resp.headers_mut()
        .set("www-authenticate", r#"Bearer error="invalid_token""#)?;
    Ok(resp)
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| Error::RustError(format!("no randomness: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token of a REST request: `Authorization: Bearer <jwt>`.
pub fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .ok()
        .flatten()
        .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_owned()))
}

/// `GET /api/users/me` for a guest: who the token says you are (members get their stored
/// profile, see [`crate::accounts`]).
pub async fn me(req: &Request, env: &Env) -> Result<Response> {
    let identity = match verify(env, bearer(req).as_deref()).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let guest = identity.roles.iter().any(|r| r == "guest");
    let mut resp = Response::from_json(&serde_json::json!({
        "id": identity.user_id,
        "name": identity.name,
        "roles": identity.roles,
        "kind": if guest { "guest" } else { "member" },
    }))?;
    resp.headers_mut().set("cache-control", "no-store")?;
    Ok(resp)
}
