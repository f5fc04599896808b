//! What an outbox row holds and how it is delivered.
//!
//! A host (a Durable Object, the native server) writes each [`Op`] to its own durable storage in
//! the same step as the state change it mirrors, then delivers the rows oldest first with
//! [`deliver`], deleting a row once it is acknowledged. Every op is idempotent (upserts keyed by
//! a stable id, `$set`, `HSET`/`HDEL`, `SET`), so a delivery that succeeded but whose answer was
//! lost is simply delivered again: "at least once" on the wire, "exactly once" in the data.
//!
//! When a row goes out, is retried or becomes a dead letter is decided by the core's state
//! machine (`piano_core::outbox`, the same on both hosts); this module is what a row holds and
//! how it reaches its backend.

use crate::Backends;
use crate::error::BackendError;
use crate::redis::Command;
use serde::{Deserialize, Serialize};
use serde_json::Value;

// The delivery rules (lanes, backoff, dead letters) are the core's, shared by both hosts.
pub use piano_core::outbox::{Lane, retry_delay_ms};

/// The outbox's tables in SQLite, the same on both hosts: `outbox` (the rows waiting, with
/// their lane, stored op, failed attempts, last error and supersede key) and `outbox_dead`.
pub const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL, op TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created INTEGER NOT NULL,
        supersede TEXT
    );
    CREATE INDEX IF NOT EXISTS outbox_by_lane ON outbox (lane, id);
    CREATE INDEX IF NOT EXISTS outbox_by_supersede ON outbox (supersede);
    CREATE TABLE IF NOT EXISTS outbox_dead (
        id INTEGER PRIMARY KEY, lane TEXT NOT NULL, op TEXT NOT NULL, error TEXT NOT NULL,
        failed_at INTEGER NOT NULL
    );
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MongoAction {
    #[serde(rename = "updateOne")]
    UpdateOne,
    #[serde(rename = "updateMany")]
    UpdateMany,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "lowercase")]
pub enum Op {
    Mongo {
        action: MongoAction,
        collection: String,
        filter: Value,
        #[serde(default, skip_serializing_if = "Value::is_null")]
        update: Value,
        #[serde(default)]
        upsert: bool,
    },
    /// Commands run as one pipeline; each must succeed.
    Redis { commands: Vec<Command> },
}

impl Op {
    pub fn lane(&self) -> Lane {
        match self {
            Op::Mongo { .. } => Lane::Mongo,
            Op::Redis { .. } => Lane::Redis,
        }
    }

    pub fn upsert(collection: &str, filter: Value, update: Value) -> Op {
        Op::Mongo {
            action: MongoAction::UpdateOne,
            collection: collection.into(),
            filter,
            update,
            upsert: true,
        }
    }

    pub fn update_many(collection: &str, filter: Value, update: Value) -> Op {
        Op::Mongo {
            action: MongoAction::UpdateMany,
            collection: collection.into(),
            filter,
            update,
            upsert: false,
        }
    }

    pub fn redis(commands: Vec<Command>) -> Op {
        Op::Redis { commands }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// The op's backend is not configured (any more): nothing to deliver to.
    NotConfigured(Lane),
    Backend(BackendError),
}

impl DeliveryError {
    /// Keep the row and try again later.
    /// A backend missing from the configuration keeps its rows (a configuration slip must not
    /// lose them); only a backend's own refusal sets an op aside.
    pub fn is_transient(&self) -> bool {
        match self {
            DeliveryError::NotConfigured(_) => true,
            DeliveryError::Backend(e) => e.is_transient(),
        }
    }

    /// The failure as the outbox's state machine weighs it.
    pub fn outcome(&self) -> piano_core::outbox::Outcome {
        piano_core::outbox::Outcome::Failed {
            transient: self.is_transient(),
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::NotConfigured(l) => write!(f, "{} is not configured", l.as_str()),
            DeliveryError::Backend(e) => e.fmt(f),
        }
    }
}

pub async fn deliver(backends: &Backends, op: &Op) -> Result<(), DeliveryError> {
    match op {
        Op::Mongo {
            action,
            collection,
            filter,
            update,
            upsert,
        } => {
            let mongo = backends
                .mongo
                .as_ref()
                .ok_or(DeliveryError::NotConfigured(Lane::Mongo))?;
            let result = match action {
                MongoAction::UpdateOne => mongo
                    .update_one(collection, filter.clone(), update.clone(), *upsert)
                    .await
                    .map(drop),
                MongoAction::UpdateMany => mongo
                    .update_many(collection, filter.clone(), update.clone())
                    .await
                    .map(drop),
            };
            result.map_err(DeliveryError::Backend)
        }
        Op::Redis { commands } => {
            let redis = backends
                .redis
                .as_ref()
                .ok_or(DeliveryError::NotConfigured(Lane::Redis))?;
            redis
                .pipeline_all(commands)
                .await
                .map(drop)
                .map_err(DeliveryError::Backend)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ops_round_trip_through_their_stored_form() {
        let ops = vec![
            Op::upsert(
                "chat",
                json!({"_id": "r/1"}),
                json!({"$setOnInsert": {"text": "hi"}}),
            ),
            Op::redis(vec![crate::redis::cmd(["HDEL", "pr:online", "user:a"])]),
        ];
        for op in ops {
            let stored = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<Op>(&stored).unwrap(), op);
        }
    }
}
