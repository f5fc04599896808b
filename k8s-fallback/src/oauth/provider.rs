//! The providers' side: requests to them (a timeout, no redirects followed, bodies capped at
//! [`MAX_PROVIDER_BODY`]) and, per OpenID Connect provider, its discovery document and keys
//! (JWKS) kept in memory under the core's rules: [`DISCOVERY_TTL_MS`], and a refetch of the
//! keys for an unknown `kid` at most every [`JWKS_REFETCH_MIN_MS`]. One entry per configured
//! provider, so the cache is bounded by `OAUTH_PROVIDERS`.

use piano_core::oauth::config::{Endpoints, Kind, Provider};
use piano_core::oauth::flow::HttpRequest;
use piano_core::oauth::oidc::{self, DISCOVERY_TTL_MS, JWKS_REFETCH_MIN_MS, Jwk, Unchecked};
use piano_core::oauth::{MAX_PROVIDER_BODY, OAuthError};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Mutex;

/// A provider's request and its answer, at most this long.
const TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed discovery, the provider is not asked again for this long (ms): sign-ins
/// arriving while it is down fail at once instead of queueing behind one timeout each.
const RETRY_AFTER_FAILURE_MS: u64 = 10_000;

struct Discovered {
    endpoints: Endpoints,
    keys: Vec<Jwk>,
    /// When the discovery document, and the keys, were fetched (ms).
    fetched: u64,
    keys_fetched: u64,
}

#[derive(Default)]
struct Slot {
    found: Option<Discovered>,
    /// No discovery before then (ms), after a failure.
    quiet_until: u64,
}

pub struct Providers {
    pub list: Vec<Provider>,
    http: reqwest::Client,
    /// Per OpenID Connect provider; its lock also makes concurrent misses fetch once.
    cache: HashMap<String, Mutex<Slot>>,
}

impl Providers {
    pub fn new(list: Vec<Provider>) -> Providers {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            // A provider's endpoints answer; a redirect would send the request elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let cache = list
            .iter()
            .filter(|p| p.is_oidc())
            .map(|p| (p.id.clone(), Mutex::default()))
            .collect();
        Providers { list, http, cache }
    }

    /// Makes `req`; the status and the body (capped). Failures and timeouts are the provider's.
    pub async fn fetch(&self, what: &str, req: &HttpRequest) -> Result<(u16, Vec<u8>), OAuthError> {
        let failed = |e: String| OAuthError::Provider(format!("{what}: {e}"));
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
        let mut builder = self.http.request(method, &req.url);
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let read = async {
            let mut resp = builder.send().await?;
            let status = resp.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_PROVIDER_BODY {
                    return Ok(None);
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Some((status, body)))
        };
        match tokio::time::timeout(TIMEOUT, read).await {
            Err(_) => Err(failed("timed out".into())),
            Ok(Err(e)) => Err(failed(e.without_url().to_string())),
            Ok(Ok(None)) => Err(failed("answer too long".into())),
            Ok(Ok(Some(answer))) => Ok(answer),
        }
    }

    async fn get(&self, what: &str, url: &str) -> Result<(u16, Vec<u8>), OAuthError> {
        let req = HttpRequest {
            method: "GET",
            url: url.to_owned(),
            headers: vec![("accept", "application/json".to_owned())],
            body: None,
        };
        let (status, body) = self.fetch(what, &req).await?;
        if !(200..300).contains(&status) {
            return Err(OAuthError::Provider(format!("{what}: {status}")));
        }
        Ok((status, body))
    }

    async fn keys(&self, endpoints: &Endpoints) -> Result<Vec<Jwk>, OAuthError> {
        let url = endpoints
            .jwks
            .as_deref()
            .ok_or_else(|| OAuthError::Provider("no jwks_uri".into()))?;
        let (_, body) = self.get("jwks", url).await?;
        oidc::parse_jwks(&body)
    }

    /// Where `p` is reached: Discord's known endpoints, or the discovery document's (cached).
    pub async fn endpoints(&self, p: &Provider, now: u64) -> Result<Endpoints, OAuthError> {
        if let Some(e) = p.static_endpoints() {
            return Ok(e);
        }
        let mut slot = self.slot(p)?.lock().await;
        let fresh = |d: &&Discovered| now < d.fetched + DISCOVERY_TTL_MS;
        if let Some(d) = slot.found.as_ref().filter(fresh) {
            return Ok(d.endpoints.clone());
        }
        if now < slot.quiet_until {
            // What we had (expired) rather than nothing, while the provider is not answering.
            return match &slot.found {
                Some(d) => Ok(d.endpoints.clone()),
                None => Err(OAuthError::Provider("discovery failed recently".into())),
            };
        }
        match self.discover(p).await {
            Ok((endpoints, keys)) => {
                slot.found = Some(Discovered {
                    endpoints: endpoints.clone(),
                    keys,
                    fetched: now,
                    keys_fetched: now,
                });
                Ok(endpoints)
            }
            Err(e) => {
                slot.quiet_until = now + RETRY_AFTER_FAILURE_MS;
                match &slot.found {
                    Some(d) => Ok(d.endpoints.clone()),
                    None => Err(e),
                }
            }
        }
    }

    /// The discovery document and the keys it names.
    async fn discover(&self, p: &Provider) -> Result<(Endpoints, Vec<Jwk>), OAuthError> {
        let (Kind::Oidc { issuer, .. }, Some(url)) = (&p.kind, p.discovery_url()) else {
            return Err(OAuthError::Provider(
                "not an OpenID Connect provider".into(),
            ));
        };
        let (_, body) = self.get("discovery", &url).await?;
        let endpoints = oidc::parse_discovery(issuer, &body)?;
        let keys = self.keys(&endpoints).await?;
        Ok((endpoints, keys))
    }

    fn slot(&self, p: &Provider) -> Result<&Mutex<Slot>, OAuthError> {
        self.cache
            .get(&p.id)
            .ok_or_else(|| OAuthError::Provider("not an OpenID Connect provider".into()))
    }

    /// The key an ID token names: from the cached JWKS, or from a fresh one when the token's
    /// `kid` is unknown (at most every [`JWKS_REFETCH_MIN_MS`]); else `oauth_token` (`kid`).
    pub async fn key(&self, p: &Provider, token: &Unchecked, now: u64) -> Result<Jwk, OAuthError> {
        self.endpoints(p, now).await?;
        let mut slot = self.slot(p)?.lock().await;
        let Some(d) = slot.found.as_mut() else {
            return Err(OAuthError::Provider("discovery vanished".into()));
        };
        if let Some(k) = token.key(&d.keys) {
            return Ok(k.clone());
        }
        if now < d.keys_fetched + JWKS_REFETCH_MIN_MS {
            return Err(OAuthError::Token("kid"));
        }
        d.keys_fetched = now;
        d.keys = self.keys(&d.endpoints).await?;
        token.key(&d.keys).cloned().ok_or(OAuthError::Token("kid"))
    }
}
