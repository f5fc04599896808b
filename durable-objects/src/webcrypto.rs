//! Room password checks with the runtime's WebCrypto (`crypto.subtle.deriveBits`, PBKDF2):
//! the KDF runs outside the wasm and is awaited, so the room's other events (every player's
//! notes) are handled while it runs, instead of a synchronous PBKDF2 on the room's only thread.
//! The hash format is `piano_core::password`'s PBKDF2-HMAC-SHA256 (salt, iterations, hash).
//!
//! Called through `js_sys::Reflect` rather than web-sys's SubtleCrypto bindings: no new crate
//! features in the worker's wasm (its size is a budget).

use piano_core::password::PasswordHash;
use wasm_bindgen::{JsCast, JsValue};
use worker::js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen_futures::JsFuture;

fn get(target: &JsValue, key: &str) -> Result<JsValue, JsValue> {
    Reflect::get(target, &JsValue::from_str(key))
}

async fn call(target: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: Function = get(target, method)?.dyn_into()?;
    let args: Array = args.iter().collect();
    let promise: Promise = Reflect::apply(&f, target, &args)?.dyn_into()?;
    JsFuture::from(promise).await
}

/// PBKDF2-HMAC-SHA256 of `password` with the hash's salt and iterations, compared in constant
/// time with the stored hash. Any WebCrypto failure counts as a wrong password (logged).
pub async fn verify_password(password: &str, hash: &PasswordHash) -> bool {
    match derive(password, hash).await {
        Ok(derived) => constant_time_eq(&derived, &hash.hash),
        Err(e) => {
            crate::log::error("crypto")
                .msg(format!("WebCrypto PBKDF2 failed: {e:?}"))
                .emit();
            false
        }
    }
}

async fn derive(password: &str, hash: &PasswordHash) -> Result<Vec<u8>, JsValue> {
    if hash.hash.is_empty() || hash.hash.len() > 64 {
        return Err(JsValue::from_str("unexpected stored hash length"));
    }
    let subtle = get(&get(&worker::js_sys::global(), "crypto")?, "subtle")?;
    let usages: Array = [JsValue::from_str("deriveBits")].iter().collect();
    let key = call(
        &subtle,
        "importKey",
        &[
            "raw".into(),
            Uint8Array::from(password.as_bytes()).into(),
            "PBKDF2".into(),
            false.into(),
            usages.into(),
        ],
    )
    .await?;
    let params = Object::new();
    Reflect::set(&params, &"name".into(), &"PBKDF2".into())?;
    Reflect::set(&params, &"hash".into(), &"SHA-256".into())?;
    Reflect::set(
        &params,
        &"salt".into(),
        &Uint8Array::from(&hash.salt[..]).into(),
    )?;
    Reflect::set(
        &params,
        &"iterations".into(),
        &JsValue::from_f64(f64::from(hash.iterations)),
    )?;
    let bits = call(
        &subtle,
        "deriveBits",
        &[
            params.into(),
            key,
            JsValue::from_f64((hash.hash.len() * 8) as f64),
        ],
    )
    .await?;
    Ok(Uint8Array::new(&bits).to_vec())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Ed25519 with the runtime's WebCrypto (RFC 8032, deterministic): the worker signs and
/// verifies its tokens here instead of compiling Ed25519 arithmetic into its wasm (a size
/// budget), and the runtime's native code is faster than wasm at it. The JWT rules themselves
/// are `piano_core::identity`'s.
pub mod ed25519 {
    use super::{call, get};
    use wasm_bindgen::JsValue;
    use worker::js_sys::{Array, Object, Reflect, Uint8Array};

    fn subtle() -> Result<JsValue, JsValue> {
        get(&get(&worker::js_sys::global(), "crypto")?, "subtle")
    }

    fn usages(usage: &str) -> Array {
        [JsValue::from_str(usage)].iter().collect()
    }

    fn algorithm() -> Result<JsValue, JsValue> {
        let a = Object::new();
        Reflect::set(&a, &"name".into(), &"Ed25519".into())?;
        Ok(a.into())
    }

    /// A signing key from its PKCS#8 DER (`piano_core::pkcs8::ed25519_der`), and its public
    /// key (the JWK's `x`, which WebCrypto derives).
    pub async fn import_signing(der: &[u8]) -> Result<(JsValue, [u8; 32]), JsValue> {
        let s = subtle()?;
        let bytes = Uint8Array::from(der);
        let import = |extractable: bool| {
            let (s, bytes) = (s.clone(), bytes.clone());
            async move {
                call(
                    &s,
                    "importKey",
                    &[
                        "pkcs8".into(),
                        bytes.into(),
                        algorithm()?,
                        extractable.into(),
                        usages("sign").into(),
                    ],
                )
                .await
            }
        };
        // Exported once to read the public key; the key kept cannot be exported.
        let exportable = import(true).await;
        let key = import(false).await;
        bytes.fill(0, 0, bytes.length());
        let jwk = call(&s, "exportKey", &["jwk".into(), exportable?]).await?;
        let key = key?;
        let x = get(&jwk, "x")?
            .as_string()
            .ok_or_else(|| JsValue::from_str("no x in the exported key"))?;
        // The exported JWK holds the private `d` too: gone from it before it is dropped.
        let _ = Reflect::delete_property(&jwk.clone().into(), &"d".into());
        let public = piano_core::identity::parse_public_keys(&x)
            .ok()
            .and_then(|k| k.first().copied())
            .ok_or_else(|| JsValue::from_str("the exported public key does not parse"))?;
        Ok((key, public))
    }

    /// A verification key from its 32 raw bytes (refused when not a valid Ed25519 point).
    pub async fn import_public(public: &[u8; 32]) -> Result<JsValue, JsValue> {
        call(
            &subtle()?,
            "importKey",
            &[
                "raw".into(),
                Uint8Array::from(&public[..]).into(),
                algorithm()?,
                false.into(),
                usages("verify").into(),
            ],
        )
        .await
    }

    pub async fn sign(key: &JsValue, data: &[u8]) -> Result<[u8; 64], JsValue> {
        let sig = call(
            &subtle()?,
            "sign",
            &[algorithm()?, key.clone(), Uint8Array::from(data).into()],
        )
        .await?;
        Uint8Array::new(&sig)
            .to_vec()
            .try_into()
            .map_err(|_| JsValue::from_str("a signature is 64 bytes"))
    }

    /// Whether `signature` is `key`'s over `data`; `Err` when WebCrypto itself failed (not
    /// the token's fault).
    pub async fn verify(key: &JsValue, signature: &[u8; 64], data: &[u8]) -> Result<bool, JsValue> {
        let ok = call(
            &subtle()?,
            "verify",
            &[
                algorithm()?,
                key.clone(),
                Uint8Array::from(&signature[..]).into(),
                Uint8Array::from(data).into(),
            ],
        )
        .await?;
        Ok(ok.as_bool() == Some(true))
    }
}

/// OpenID Connect ID token signatures (RS256, ES256, EdDSA) with the provider's JWKS key,
/// checked by the runtime's WebCrypto (`importKey("jwk")` + `verify`): no RSA or P-256 code in
/// the wasm. Which key and algorithm, and every claim, are `piano_core::oauth::oidc`'s.
pub mod jws {
    use super::{call, get};
    use piano_core::oauth::oidc::{Alg, Jwk};
    use wasm_bindgen::JsValue;
    use worker::js_sys::{Array, Object, Reflect, Uint8Array};

    fn object(pairs: &[(&str, &str)]) -> Result<Object, JsValue> {
        let o = Object::new();
        for (k, v) in pairs {
            Reflect::set(&o, &(*k).into(), &(*v).into())?;
        }
        Ok(o)
    }

    /// The import and verify algorithm parameters for `alg`.
    fn params(alg: Alg) -> Result<(Object, Object), JsValue> {
        Ok(match alg {
            Alg::Rs256 => {
                let a = object(&[("name", "RSASSA-PKCS1-v1_5"), ("hash", "SHA-256")])?;
                (a.clone(), a)
            }
            Alg::Es256 => (
                object(&[("name", "ECDSA"), ("namedCurve", "P-256")])?,
                object(&[("name", "ECDSA"), ("hash", "SHA-256")])?,
            ),
            Alg::EdDsa => {
                let a = object(&[("name", "Ed25519")])?;
                (a.clone(), a)
            }
        })
    }

    /// The key as a JWK object WebCrypto imports: only the public members of its kind.
    fn jwk(key: &Jwk) -> Result<Object, JsValue> {
        let o = object(&[("kty", &key.kty)])?;
        let fields = [
            ("crv", &key.crv),
            ("n", &key.n),
            ("e", &key.e),
            ("x", &key.x),
            ("y", &key.y),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                Reflect::set(&o, &k.into(), &v.as_str().into())?;
            }
        }
        Ok(o)
    }

    /// Whether `signature` is `key`'s over `input` under `alg` (the caller checked
    /// `alg.fits(key)`). `Err`: WebCrypto refused the key (a malformed JWK: the provider's
    /// fault) or failed.
    pub async fn verify(
        alg: Alg,
        key: &Jwk,
        input: &[u8],
        signature: &[u8],
    ) -> Result<bool, JsValue> {
        let subtle = get(&get(&worker::js_sys::global(), "crypto")?, "subtle")?;
        let (import, verify) = params(alg)?;
        let usages: Array = [JsValue::from_str("verify")].iter().collect();
        let key = call(
            &subtle,
            "importKey",
            &[
                "jwk".into(),
                jwk(key)?.into(),
                import.into(),
                false.into(),
                usages.into(),
            ],
        )
        .await?;
        let ok = call(
            &subtle,
            "verify",
            &[
                verify.into(),
                key,
                Uint8Array::from(signature).into(),
                Uint8Array::from(input).into(),
            ],
        )
        .await?;
        Ok(ok.as_bool() == Some(true))
    }
}
