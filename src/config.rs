//! Settings from the worker's vars and secrets, parsed once per isolate.
//!
//! | name | kind | default | meaning |
//! |---|---|---|---|
//! | `JWT_PRIVATE_KEY` | secret | none (required) | Ed25519 private key, PKCS#8 PEM |
//! | `JWT_VERIFY_KEYS` | var | none | previous public keys still accepted (JWK `x` values) |
//! | `JWT_ISSUER` | var | `pianorhythm` | `iss` of issued tokens, and the only one accepted |
//! | `JWT_AUDIENCE` | var | `pianorhythm` | `aud` of issued tokens, and the only one accepted |
//! | `GUEST_TOKEN_TTL_SECS` | var | `86400` | lifetime of guest tokens |

use piano_core::identity::{SigningKey, Verifier, parse_public_keys};
use std::cell::RefCell;
use std::rc::Rc;
use worker::Env;

pub struct Config {
    pub signing: SigningKey,
    pub verifier: Verifier,
    /// Every public key tokens may be signed with: the current one first, then previous ones.
    pub public_keys: Vec<[u8; 32]>,
    pub issuer: String,
    pub audience: String,
    pub guest_ttl_secs: u64,
}

/// Why the worker cannot issue or verify tokens; shown to callers as a 503.
pub struct NotConfigured(pub String);

thread_local! {
    // Keyed by the raw settings, so a changed secret (new deployment) is picked up.
    static CACHE: RefCell<Option<(String, Rc<Config>)>> = const { RefCell::new(None) };
}

fn setting(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.trim().is_empty())
}

pub fn load(env: &Env) -> Result<Rc<Config>, NotConfigured> {
    let key = setting(env, "JWT_PRIVATE_KEY").ok_or_else(|| {
        NotConfigured(
            "JWT_PRIVATE_KEY is not set: run `npm run dev` (writes a development key to .dev.vars) \
             or `wrangler secret put JWT_PRIVATE_KEY`"
                .into(),
        )
    })?;
    let issuer = setting(env, "JWT_ISSUER").unwrap_or_else(|| "pianorhythm".into());
    let audience = setting(env, "JWT_AUDIENCE").unwrap_or_else(|| "pianorhythm".into());
    let ttl = setting(env, "GUEST_TOKEN_TTL_SECS");
    let previous = setting(env, "JWT_VERIFY_KEYS").unwrap_or_default();
    let cache_key = format!("{key}\u{0}{issuer}\u{0}{audience}\u{0}{ttl:?}\u{0}{previous}");
    if let Some(hit) = CACHE.with_borrow(|c| {
        c.as_ref()
            .filter(|(k, _)| *k == cache_key)
            .map(|(_, cfg)| cfg.clone())
    }) {
        return Ok(hit);
    }
    let signing = SigningKey::from_pkcs8_pem(&key)
        .map_err(|e| NotConfigured(format!("JWT_PRIVATE_KEY is unusable: {e}")))?;
    let guest_ttl_secs = match ttl {
        None => 86_400,
        Some(t) => t
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|t| (60..=30 * 86_400).contains(t))
            .ok_or_else(|| NotConfigured("GUEST_TOKEN_TTL_SECS must be 60 to 2592000".into()))?,
    };
    let previous = parse_public_keys(&previous)
        .map_err(|e| NotConfigured(format!("JWT_VERIFY_KEYS is unusable: {e}")))?;
    let mut public_keys = vec![signing.public_key()];
    public_keys.extend(previous.into_iter().filter(|k| *k != signing.public_key()));
    let verifier = Verifier::new(&issuer, &audience).with_keys(public_keys.iter().copied());
    let cfg = Rc::new(Config {
        signing,
        verifier,
        public_keys,
        issuer,
        audience,
        guest_ttl_secs,
    });
    CACHE.with_borrow_mut(|c| *c = Some((cache_key, cfg.clone())));
    Ok(cfg)
}
