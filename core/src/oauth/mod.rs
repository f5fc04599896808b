//! Signing in through another service: Discord (OAuth2) and any OpenID Connect provider, and
//! the browser's session cookies. Sans I/O like the rest of the core: the hosts fetch, store,
//! draw random bytes and check signatures with their own crypto; every rule is here.
//!
//! - [`config`]: the providers a deployment configures (`OAUTH_PROVIDERS`) and their endpoints;
//! - [`flow`]: the authorization-code flow with PKCE, `state` and `nonce`, kept in a signed,
//!   short-lived cookie (nothing stored on the server for an anonymous visitor), the callback's
//!   checks, the code exchange request, and `return_to` (no open redirect);
//! - [`oidc`]: discovery, JWKS and the ID token's checks (alg, key, iss, aud, azp, exp, iat,
//!   nonce), userinfo; [`discord`]: Discord's `users/@me`;
//! - [`link`]: external identities and member accounts: the claim that makes one identity
//!   belong to one account, first sign-in, linking and unlinking ([`link::Linker`]);
//! - [`cookies`]: the session cookies (`piano_refresh`, `piano_csrf`), the CSRF token and the
//!   same-origin rule for cookie-authenticated requests;
//! - [`jws`] (feature `jws`): signature checks for native hosts (`ring`); the edge uses WebCrypto;
//! - this file: the failure page, and encodings the others share. [`OAuthError`] (every way a
//!   sign-in can fail) and [`LinkedIdentity`] live with the accounts (`account::external`),
//!   which this module builds on.

pub mod config;
pub mod cookies;
pub mod discord;
pub mod flow;
#[cfg(feature = "jws")]
pub mod jws;
pub mod link;
pub mod oidc;

pub use crate::account::external::{LinkedIdentity, OAuthError};
pub use config::{Endpoints, Provider};
pub use flow::{Flow, FlowKey};
pub use link::ExternalProfile;

/// How long the provider's answers may be (discovery, JWKS, tokens, profiles): the hosts stop
/// reading there.
pub const MAX_PROVIDER_BODY: usize = 64 * 1024;

/// Whether a failed browser request should get JSON rather than the page: it asked for it.
pub fn wants_json(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

/// The page a browser lands on when a sign-in fails: what happened, and the way back.
pub fn error_page(code: &str, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>Sign-in failed</title>\
         <style>body{{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}\
         code{{background:#eee;padding:0 .3em}}</style></head><body>\
         <h1>Sign-in failed</h1><p>{}</p><p>Code: <code id=\"error-code\">{}</code></p>\
         <p><a href=\"/\">Back to the piano</a></p></body></html>",
        escape_html(message),
        escape_html(code)
    )
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// base64url without padding, as JWTs and PKCE use it.
pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// Form and query encoding (`application/x-www-form-urlencoded`).
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                crate::names::percent_encode(k),
                crate::names::percent_encode(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One query parameter, decoded (`+` is a space); `None` when absent or badly escaped.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (crate::names::percent_decode(&k.replace('+', " ")).as_deref() == Some(name))
            .then(|| crate::names::percent_decode(&v.replace('+', " ")))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode_and_errors_page_escapes() {
        assert_eq!(
            query_param("a=1&state=x%2By&b", "state").as_deref(),
            Some("x+y")
        );
        assert_eq!(query_param("q=a+b", "q").as_deref(), Some("a b"));
        assert_eq!(query_param("q=%zz", "q"), None);
        assert_eq!(query_param("", "q"), None);
        let page = error_page("oauth_flow", "<script>");
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(wants_json(Some("application/json")));
        assert!(!wants_json(Some("text/html,application/json;q=0.9")));
        assert!(!wants_json(None));
    }
}
