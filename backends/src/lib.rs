//! External persistence over HTTP (docs/architecture.md §5): the shared data of a deployment in MongoDB and
//! Redis, reached the same way from workerd (wasm) and natively.
//!
//! - [`mongo`]: a client in the shape of the Atlas Data API v1 (`/action/findOne` …).
//! - [`redis`]: a client for the Upstash REST protocol (command arrays, `/pipeline`).
//! - [`layout`]: what goes where: collection names, Redis keys, and the writes that mirror each
//!   change (accounts, rooms, chat → MongoDB; presence, room index, revoked sessions → Redis).
//! - [`outbox`]: the op a host stores durably before delivering it (idempotent by design) and
//!   its delivery; the rules (lanes, backoff, dead letters) are `piano_core::outbox`.
//! - [`error`]: one error type, split into transient and permanent failures.
//!
//! Both backends are optional: [`Backends::from_vars`] reads the configuration and leaves a
//! backend out when its URL is not set, and the hosts then keep everything in their embedded
//! storage (the zero-configuration default).

pub mod error;
pub mod layout;
pub mod mongo;
pub mod outbox;
pub mod redis;

pub use error::BackendError;
use std::time::Duration;

/// The configured backends of one deployment.
#[derive(Debug, Clone)]
pub struct Backends {
    pub mongo: Option<mongo::DataApi>,
    pub redis: Option<redis::Upstash>,
    pub keys: layout::Keys,
    /// Names this deployment in shared data (chat ids, presence, room index).
    pub deployment: String,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

impl Backends {
    /// Reads `MONGODB_DATA_API_URL`/`_KEY`, `MONGODB_DATA_SOURCE`, `MONGODB_DATABASE`,
    /// `UPSTASH_REDIS_REST_URL`/`_TOKEN`, `REDIS_KEY_PREFIX`, `BACKEND_TIMEOUT_MS` and
    /// `DEPLOYMENT_ID` through `get` (the worker's env, or the process environment).
    /// A URL without its key, or a malformed number, is an error: a half-configured backend
    /// must not silently fall back to local storage.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Backends, String> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let timeout = match get("BACKEND_TIMEOUT_MS") {
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|ms| (100..=60_000).contains(ms))
                .ok_or(
                    "BACKEND_TIMEOUT_MS must be a number of milliseconds between 100 and 60000",
                )?,
            None => DEFAULT_TIMEOUT_MS,
        };
        let timeout = Duration::from_millis(timeout);
        let mongo = match (get("MONGODB_DATA_API_URL"), get("MONGODB_DATA_API_KEY")) {
            (None, _) => None,
            (Some(_), None) => {
                return Err("MONGODB_DATA_API_URL is set but MONGODB_DATA_API_KEY is not".into());
            }
            (Some(url), Some(api_key)) => Some(mongo::DataApi::new(mongo::MongoConfig {
                url: check_url("MONGODB_DATA_API_URL", url)?,
                api_key,
                data_source: get("MONGODB_DATA_SOURCE").unwrap_or_else(|| "Cluster0".into()),
                database: get("MONGODB_DATABASE").unwrap_or_else(|| "pianorhythm".into()),
                timeout,
            })),
        };
        let redis = match (
            get("UPSTASH_REDIS_REST_URL"),
            get("UPSTASH_REDIS_REST_TOKEN"),
        ) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(
                    "UPSTASH_REDIS_REST_URL is set but UPSTASH_REDIS_REST_TOKEN is not".into(),
                );
            }
            (Some(url), Some(token)) => Some(redis::Upstash::new(redis::RedisConfig {
                url: check_url("UPSTASH_REDIS_REST_URL", url)?,
                token,
                timeout,
            })),
        };
        Ok(Backends {
            mongo,
            redis,
            keys: layout::Keys {
                prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "pr:".into()),
            },
            deployment: get("DEPLOYMENT_ID").unwrap_or_else(|| "edge".into()),
        })
    }

    pub fn is_configured(&self) -> bool {
        self.mongo.is_some() || self.redis.is_some()
    }

    /// Whether writes for `lane` should be queued at all.
    pub fn has(&self, lane: outbox::Lane) -> bool {
        match lane {
            outbox::Lane::Mongo => self.mongo.is_some(),
            outbox::Lane::Redis => self.redis.is_some(),
        }
    }
}

fn check_url(var: &str, url: String) -> Result<String, String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(format!("{var} must be an http(s) URL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn nothing_configured_is_the_embedded_default() {
        let b = Backends::from_vars(vars(&[])).unwrap();
        assert!(!b.is_configured());
        assert_eq!(b.keys.prefix, "pr:");
        assert_eq!(b.deployment, "edge");
    }

    #[test]
    fn half_configured_backends_are_refused() {
        let e = Backends::from_vars(vars(&[("MONGODB_DATA_API_URL", "http://x")])).unwrap_err();
        assert!(e.contains("MONGODB_DATA_API_KEY"), "{e}");
        let e = Backends::from_vars(vars(&[
            ("UPSTASH_REDIS_REST_URL", "x"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ]))
        .unwrap_err();
        assert!(e.contains("http(s) URL"), "{e}");
        let e = Backends::from_vars(vars(&[("BACKEND_TIMEOUT_MS", "0")])).unwrap_err();
        assert!(e.contains("BACKEND_TIMEOUT_MS"), "{e}");
    }

    #[test]
    fn both_backends_from_their_variables() {
        let b = Backends::from_vars(vars(&[
            ("MONGODB_DATA_API_URL", "http://127.0.0.1:1/v1/"),
            ("MONGODB_DATA_API_KEY", "k"),
            ("UPSTASH_REDIS_REST_URL", "https://r.example"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
            ("DEPLOYMENT_ID", "eu"),
        ]))
        .unwrap();
        let mongo = b.mongo.as_ref().unwrap().config();
        assert_eq!(mongo.url, "http://127.0.0.1:1/v1");
        assert_eq!(
            (mongo.database.as_str(), mongo.data_source.as_str()),
            ("pianorhythm", "Cluster0")
        );
        assert!(b.redis.is_some());
        assert_eq!(b.deployment, "eu");
    }
}
