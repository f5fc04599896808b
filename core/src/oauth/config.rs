//! The providers of a deployment: `OAUTH_PROVIDERS` (a JSON array) and one secret per provider
//! (`OAUTH_CLIENT_SECRET_<ID>`). Discord's endpoints are known; an OpenID Connect provider's
//! come from its discovery document ([`super::oidc::parse_discovery`]).

use serde::Deserialize;

/// At most this many providers (each is a button and a cache entry).
pub const MAX_PROVIDERS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Discord { base: String, cdn: String },
    Oidc { issuer: String, scopes: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// 2-16 of `a-z 0-9`: in URLs, and in linked identities.
    pub id: String,
    pub name: String,
    pub client_id: String,
    /// `None`: a public client (PKCE only).
    pub client_secret: Option<String>,
    pub kind: Kind,
}

/// Where a provider is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorize: String,
    pub token: String,
    /// Discord's `users/@me`, or the OpenID Connect `userinfo_endpoint` (optional there).
    pub userinfo: Option<String>,
    /// OpenID Connect only.
    pub jwks: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    kind: String,
    client_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    cdn_url: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    scopes: Option<String>,
}

/// The variable holding a provider's client secret.
pub fn secret_var(id: &str) -> String {
    format!("OAUTH_CLIENT_SECRET_{}", id.to_ascii_uppercase())
}

/// An address a provider may be reached at: `https`, or `http` on loopback (development and
/// tests). Returned without a trailing `/`.
pub fn provider_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        if !is_loopback_authority(r.split('/').next().unwrap_or("")) {
            return Err(format!("{url}: plain http only on loopback"));
        }
        r
    } else {
        return Err(format!("{url}: not an http(s) URL"));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty()
        || url.len() > 512
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{url}: not a usable URL"));
    }
    Ok(url.to_owned())
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
pub fn is_loopback_authority(authority: &str) -> bool {
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or("").to_owned()
    };
    matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

/// Reads `OAUTH_PROVIDERS`; `secret(name)` reads one variable. An error names what is wrong (the
/// host refuses to start or reports it; a half-configured provider is never offered).
pub fn parse(json: &str, secret: impl Fn(&str) -> Option<String>) -> Result<Vec<Provider>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<Entry> =
        serde_json::from_str(json).map_err(|e| format!("OAUTH_PROVIDERS: {e}"))?;
    if entries.len() > MAX_PROVIDERS {
        return Err(format!(
            "OAUTH_PROVIDERS: at most {MAX_PROVIDERS} providers"
        ));
    }
    let mut out: Vec<Provider> = Vec::with_capacity(entries.len());
    for e in entries {
        let id = e.id.trim().to_owned();
        let ok_id = (2..=16).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok_id {
            return Err(format!(
                "OAUTH_PROVIDERS: id {id:?} must be 2-16 of a-z 0-9"
            ));
        }
        if out.iter().any(|p| p.id == id) {
            return Err(format!("OAUTH_PROVIDERS: id {id:?} twice"));
        }
        let client_id = e.client_id.trim().to_owned();
        if client_id.is_empty() || client_id.len() > 256 {
            return Err(format!(
                "OAUTH_PROVIDERS: {id}: client_id missing or too long"
            ));
        }
        let kind = match e.kind.as_str() {
            "discord" => Kind::Discord {
                base: provider_url(e.base_url.as_deref().unwrap_or("https://discord.com"))?,
                cdn: provider_url(e.cdn_url.as_deref().unwrap_or("https://cdn.discordapp.com"))?,
            },
            "oidc" => {
                let issuer = e
                    .issuer
                    .as_deref()
                    .ok_or_else(|| format!("OAUTH_PROVIDERS: {id}: oidc needs an issuer"))?;
                let scopes = e.scopes.unwrap_or_else(|| "openid profile".into());
                if !scopes.split(' ').any(|s| s == "openid") {
                    return Err(format!("OAUTH_PROVIDERS: {id}: scopes must include openid"));
                }
                Kind::Oidc {
                    issuer: provider_url(issuer)?,
                    scopes,
                }
            }
            other => return Err(format!("OAUTH_PROVIDERS: {id}: unknown kind {other:?}")),
        };
        let name = e
            .name
            .map(|n| n.trim().chars().take(40).collect::<String>())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| match kind {
                Kind::Discord { .. } => "Discord".into(),
                Kind::Oidc { .. } => id.clone(),
            });
        let client_secret = secret(&secret_var(&id))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        out.push(Provider {
            id,
            name,
            client_id,
            client_secret,
            kind,
        });
    }
    Ok(out)
}

impl Provider {
    /// Discord's endpoints (`None` for OpenID Connect: discovery gives them).
    pub fn static_endpoints(&self) -> Option<Endpoints> {
        match &self.kind {
            Kind::Discord { base, .. } => Some(Endpoints {
                authorize: format!("{base}/oauth2/authorize"),
                token: format!("{base}/api/oauth2/token"),
                userinfo: Some(format!("{base}/api/users/@me")),
                jwks: None,
            }),
            Kind::Oidc { .. } => None,
        }
    }

    /// The discovery document's address (OpenID Connect).
    pub fn discovery_url(&self) -> Option<String> {
        match &self.kind {
            Kind::Oidc { issuer, .. } => Some(format!("{issuer}/.well-known/openid-configuration")),
            Kind::Discord { .. } => None,
        }
    }

    pub fn is_oidc(&self) -> bool {
        matches!(self.kind, Kind::Oidc { .. })
    }

    pub fn scopes(&self) -> &str {
        match &self.kind {
            Kind::Discord { .. } => "identify",
            Kind::Oidc { scopes, .. } => scopes,
        }
    }

    /// What `GET /api/auth/providers` lists.
    pub fn public(&self) -> serde_json::Value {
        let kind = if self.is_oidc() { "oidc" } else { "discord" };
        serde_json::json!({ "id": self.id, "name": self.name, "kind": kind })
    }
}

/// `GET /api/auth/providers`.
pub fn providers_body(providers: &[Provider]) -> serde_json::Value {
    serde_json::json!({ "providers": providers.iter().map(Provider::public).collect::<Vec<_>>() })
}

/// The provider named in a path, or `unknown_provider`.
pub fn find<'a>(providers: &'a [Provider], id: &str) -> Result<&'a Provider, super::OAuthError> {
    providers
        .iter()
        .find(|p| p.id == id)
        .ok_or(super::OAuthError::UnknownProvider)
}

/// The callback address registered at the provider: `PUBLIC_URL` when set, else the origin the
/// request came to.
pub fn redirect_uri(public_origin: &str, provider: &str) -> String {
    format!(
        "{}/api/auth/oauth/{provider}/callback",
        public_origin.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(name: &str) -> Option<String> {
        (name == "OAUTH_CLIENT_SECRET_DISCORD").then(|| " s3cret\n".to_owned())
    }

    #[test]
    fn providers_parse_with_defaults_and_secrets() {
        let ps = parse(
            r#"[{"id":"discord","kind":"discord","client_id":"123"},
                {"id":"google","kind":"oidc","name":"Google","issuer":"https://accounts.google.com/","client_id":"g"}]"#,
            secrets,
        )
        .unwrap();
        assert_eq!(ps[0].client_secret.as_deref(), Some("s3cret"));
        assert_eq!(ps[0].name, "Discord");
        let e = ps[0].static_endpoints().unwrap();
        assert_eq!(e.token, "https://discord.com/api/oauth2/token");
        assert_eq!(
            e.userinfo.as_deref(),
            Some("https://discord.com/api/users/@me")
        );
        assert_eq!(ps[1].client_secret, None);
        assert_eq!(
            ps[1].discovery_url().unwrap(),
            "https://accounts.google.com/.well-known/openid-configuration"
        );
        assert_eq!(ps[1].scopes(), "openid profile");
        assert_eq!(providers_body(&ps)["providers"][1]["kind"], "oidc");
        assert_eq!(parse("", secrets).unwrap(), vec![]);
    }

    #[test]
    fn bad_configurations_are_refused() {
        for bad in [
            r#"[{"id":"D","kind":"discord","client_id":"1"}]"#,
            r#"[{"id":"a","kind":"discord","client_id":"1"}]"#,
            r#"[{"id":"dd","kind":"discord","client_id":""}]"#,
            r#"[{"id":"dd","kind":"saml","client_id":"1"}]"#,
            r#"[{"id":"dd","kind":"oidc","client_id":"1"}]"#,
            r#"[{"id":"dd","kind":"oidc","client_id":"1","issuer":"http://idp.example"}]"#,
            r#"[{"id":"dd","kind":"oidc","client_id":"1","issuer":"https://i","scopes":"profile"}]"#,
            r#"[{"id":"dd","kind":"discord","client_id":"1"},{"id":"dd","kind":"discord","client_id":"2"}]"#,
            r#"[{"id":"dd","kind":"discord","client_id":"1","extra":1}]"#,
            r#"{"id":"dd"}"#,
        ] {
            assert!(parse(bad, secrets).is_err(), "{bad}");
        }
        assert!(provider_url("http://127.0.0.1:8080/oidc").is_ok());
        assert!(provider_url("http://localhost").is_ok());
        assert!(provider_url("http://[::1]:9/x").is_ok());
        assert!(provider_url("http://127.0.0.1.evil.example").is_err());
        assert!(provider_url("javascript:alert(1)").is_err());
    }

    #[test]
    fn unknown_provider_and_redirect_uri() {
        let ps = parse(
            r#"[{"id":"discord","kind":"discord","client_id":"1"}]"#,
            secrets,
        )
        .unwrap();
        assert!(find(&ps, "discord").is_ok());
        assert_eq!(
            find(&ps, "x").unwrap_err(),
            super::super::OAuthError::UnknownProvider
        );
        assert_eq!(
            redirect_uri("https://piano.example/", "discord"),
            "https://piano.example/api/auth/oauth/discord/callback"
        );
    }
}
