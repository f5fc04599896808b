//! A Redis client for the Upstash REST protocol: a command is a JSON array posted to the base
//! URL (`["SET", "k", "v"]`), several go to `/pipeline` as an array of arrays; the token travels
//! as `Authorization: Bearer`. Answers are `{"result": …}` or `{"error": "…"}`.

use crate::error::BackendError;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub url: String,
    pub token: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Upstash {
    config: RedisConfig,
    http: reqwest::Client,
}

/// A command: its name and arguments, all strings (Redis speaks bytes; JSON carries text).
pub type Command = Vec<String>;

/// Builds a [`Command`] from anything printable: `cmd(["HSET", key, field, value])`.
pub fn cmd<I, S>(parts: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: ToString,
{
    parts.into_iter().map(|p| p.to_string()).collect()
}

impl Upstash {
    pub fn new(config: RedisConfig) -> Upstash {
        Upstash {
            config,
            http: reqwest::Client::new(),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Runs one command; a Redis error (`{"error"}`) is [`BackendError::Rejected`].
    pub async fn command(&self, command: &[String]) -> Result<Value, BackendError> {
        let answer = self.post("", &command).await?;
        one_answer(answer)?.map_err(crate::error::redis_error)
    }

    /// Runs commands in one round trip, in order (not atomically); each gets its own answer.
    pub async fn pipeline(
        &self,
        commands: &[Command],
    ) -> Result<Vec<Result<Value, String>>, BackendError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let answer = self.post("/pipeline", &commands).await?;
        let Value::Array(items) = answer else {
            return Err(BackendError::Decode(
                "pipeline answer is not an array".into(),
            ));
        };
        if items.len() != commands.len() {
            return Err(BackendError::Decode(format!(
                "pipeline of {} commands answered {} results",
                commands.len(),
                items.len()
            )));
        }
        Ok(items
            .into_iter()
            .map(|item| one_answer(item).unwrap_or_else(|e| Err(e.to_string())))
            .collect())
    }

    /// A pipeline whose every command must succeed (for writes: one failure fails the whole
    /// delivery, which is then retried; every write we pipeline is idempotent).
    pub async fn pipeline_all(&self, commands: &[Command]) -> Result<Vec<Value>, BackendError> {
        self.pipeline(commands)
            .await?
            .into_iter()
            .map(|r| r.map_err(crate::error::redis_error))
            .collect()
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<Value, BackendError> {
        let url = format!("{}{path}", self.config.url.trim_end_matches('/'));
        let req = self
            .http
            .post(url)
            .bearer_auth(&self.config.token)
            .json(body);
        let (status, text) = crate::error::exchange(req, self.config.timeout).await?;
        let parsed = serde_json::from_str::<Value>(&text);
        if (200..300).contains(&status) {
            return parsed.map_err(|e| BackendError::Decode(e.to_string()));
        }
        // Upstash answers a failed command with 400 and `{"error"}`; gateways in front of a
        // Redis that is down answer 500 and the same shape: the message decides.
        if let Ok(Value::Object(m)) = &parsed
            && let Some(Value::String(e)) = m.get("error")
        {
            return Err(crate::error::redis_error(e.clone()));
        }
        Err(BackendError::from_status(status, &text))
    }
}

/// One `{"result"}` / `{"error"}` answer: the outer error is a malformed answer, the inner one
/// the message Redis gave for this command.
fn one_answer(answer: Value) -> Result<Result<Value, String>, BackendError> {
    match answer {
        Value::Object(mut m) => {
            if let Some(e) = m.remove("error") {
                return Ok(Err(match e {
                    Value::String(s) => s,
                    other => other.to_string(),
                }));
            }
            Ok(Ok(m.remove("result").unwrap_or(Value::Null)))
        }
        other => Err(BackendError::Decode(format!("unexpected answer {other}"))),
    }
}
