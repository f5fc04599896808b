//! Discord's `GET /api/users/@me` (scope `identify`): the player's id, names and avatar.

use super::config::{Endpoints, Kind, Provider};
use super::flow::HttpRequest;
use super::{ExternalProfile, OAuthError};
use serde::Deserialize;

/// The profile request, with the access token the code exchange gave.
pub fn me_request(endpoints: &Endpoints, access_token: &str) -> Option<HttpRequest> {
    Some(HttpRequest {
        method: "GET",
        url: endpoints.userinfo.clone()?,
        headers: vec![
            ("authorization", format!("Bearer {access_token}")),
            ("accept", "application/json".to_owned()),
        ],
        body: None,
    })
}

/// Reads the profile: `id` (a snowflake), `username`, `global_name` (the display name) and
/// `avatar` (a hash, turned into a CDN address).
pub fn profile(
    provider: &Provider,
    status: u16,
    body: &[u8],
) -> Result<ExternalProfile, OAuthError> {
    #[derive(Deserialize)]
    struct Me {
        id: String,
        username: String,
        #[serde(default)]
        global_name: Option<String>,
        #[serde(default)]
        avatar: Option<String>,
    }
    if !(200..300).contains(&status) {
        return Err(OAuthError::Provider(format!("users/@me: {status}")));
    }
    let me: Me = serde_json::from_slice(body)
        .map_err(|e| OAuthError::Provider(format!("users/@me: {e}")))?;
    if me.id.is_empty() || me.id.len() > 24 || !me.id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OAuthError::Token("discord id"));
    }
    let cdn = match &provider.kind {
        Kind::Discord { cdn, .. } => cdn.as_str(),
        Kind::Oidc { .. } => "",
    };
    let avatar = me
        .avatar
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 64
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(|h| format!("{cdn}/avatars/{}/{h}.png", me.id));
    Ok(ExternalProfile::new(
        &provider.id,
        &me.id,
        Some(&me.username),
        me.global_name.as_deref().or(Some(&me.username)),
        avatar.as_deref(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::config;
    use super::*;

    fn discord() -> Provider {
        config::parse(
            r#"[{"id":"discord","kind":"discord","client_id":"1"}]"#,
            |_| None,
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn the_profile_names_the_player() {
        let p = profile(
            &discord(),
            200,
            br#"{"id":"80351110224678912","username":"nelly","global_name":"Nelly","avatar":"8342729096ea3675442027381ff50dfe","discriminator":"0"}"#,
        )
        .unwrap();
        assert_eq!(p.subject, "80351110224678912");
        assert_eq!(p.display_name, "Nelly");
        assert_eq!(p.username_base, "nelly");
        assert_eq!(
            p.avatar.as_deref(),
            Some(
                "https://cdn.discordapp.com/avatars/80351110224678912/8342729096ea3675442027381ff50dfe.png"
            )
        );
        let me = me_request(&discord().static_endpoints().unwrap(), "tok").unwrap();
        assert_eq!(me.headers[0].1, "Bearer tok");
    }

    #[test]
    fn broken_profiles_are_refused() {
        assert!(profile(&discord(), 401, b"{}").is_err());
        assert!(profile(&discord(), 200, b"{}").is_err());
        assert!(profile(&discord(), 200, br#"{"id":"../x","username":"a"}"#).is_err());
        let p = profile(
            &discord(),
            200,
            br#"{"id":"1","username":"a","avatar":"../../x"}"#,
        )
        .unwrap();
        assert_eq!(p.avatar, None);
    }
}
