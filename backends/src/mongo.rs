//! A MongoDB client in the shape of the Atlas Data API v1: `POST {base}/action/<action>` with a
//! JSON body naming `dataSource`, `database` and `collection`.
//!
//! MongoDB retired its hosted Data API in September 2025; operators point the base URL at a
//! compatible gateway (self-hosted ones exist, e.g. `mongodb-local-data-api`, used by our tests).
//! Only plain JSON types are written (strings, numbers, booleans, arrays, objects: times are
//! milliseconds since the epoch), so relaxed JSON and EJSON agree on everything we send; answers
//! are passed through [`relax`] so a gateway that answers in canonical EJSON reads the same.

use crate::error::BackendError;
use serde_json::{Map, Value, json};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoConfig {
    /// e.g. `https://data.example.com/app/data-abc/endpoint/data/v1` (no trailing `/action`).
    pub url: String,
    pub api_key: String,
    pub data_source: String,
    pub database: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateResult {
    pub matched: u64,
    pub modified: u64,
    pub upserted_id: Option<Value>,
}

/// Options of `find`; `None` leaves the server's default.
#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    pub sort: Option<Value>,
    pub projection: Option<Value>,
    pub limit: Option<u64>,
    pub skip: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct DataApi {
    config: MongoConfig,
    http: reqwest::Client,
}

impl DataApi {
    pub fn new(config: MongoConfig) -> DataApi {
        DataApi {
            config,
            http: reqwest::Client::new(),
        }
    }

    pub fn config(&self) -> &MongoConfig {
        &self.config
    }

    pub async fn find_one(
        &self,
        collection: &str,
        filter: Value,
    ) -> Result<Option<Value>, BackendError> {
        let answer = self
            .action("findOne", collection, json!({ "filter": filter }))
            .await?;
        match answer.get("document") {
            None | Some(Value::Null) => Ok(None),
            Some(doc) => Ok(Some(doc.clone())),
        }
    }

    pub async fn find(
        &self,
        collection: &str,
        filter: Value,
        options: FindOptions,
    ) -> Result<Vec<Value>, BackendError> {
        let mut body = Map::new();
        body.insert("filter".into(), filter);
        if let Some(s) = options.sort {
            body.insert("sort".into(), s);
        }
        if let Some(p) = options.projection {
            body.insert("projection".into(), p);
        }
        if let Some(l) = options.limit {
            body.insert("limit".into(), l.into());
        }
        if let Some(s) = options.skip {
            body.insert("skip".into(), s.into());
        }
        let answer = self.action("find", collection, Value::Object(body)).await?;
        documents(answer)
    }

    pub async fn insert_one(
        &self,
        collection: &str,
        document: Value,
    ) -> Result<Value, BackendError> {
        let answer = self
            .action("insertOne", collection, json!({ "document": document }))
            .await?;
        answer
            .get("insertedId")
            .cloned()
            .ok_or_else(|| BackendError::Decode("insertOne answer without insertedId".into()))
    }

    pub async fn update_one(
        &self,
        collection: &str,
        filter: Value,
        update: Value,
        upsert: bool,
    ) -> Result<UpdateResult, BackendError> {
        self.update("updateOne", collection, filter, update, upsert)
            .await
    }

    pub async fn update_many(
        &self,
        collection: &str,
        filter: Value,
        update: Value,
    ) -> Result<UpdateResult, BackendError> {
        self.update("updateMany", collection, filter, update, false)
            .await
    }

    pub async fn delete_one(&self, collection: &str, filter: Value) -> Result<u64, BackendError> {
        let answer = self
            .action("deleteOne", collection, json!({ "filter": filter }))
            .await?;
        Ok(count(&answer, "deletedCount"))
    }

    pub async fn aggregate(
        &self,
        collection: &str,
        pipeline: Value,
    ) -> Result<Vec<Value>, BackendError> {
        let answer = self
            .action("aggregate", collection, json!({ "pipeline": pipeline }))
            .await?;
        documents(answer)
    }

    async fn update(
        &self,
        action: &str,
        collection: &str,
        filter: Value,
        update: Value,
        upsert: bool,
    ) -> Result<UpdateResult, BackendError> {
        let answer = self
            .action(
                action,
                collection,
                json!({ "filter": filter, "update": update, "upsert": upsert }),
            )
            .await?;
        Ok(UpdateResult {
            matched: count(&answer, "matchedCount"),
            modified: count(&answer, "modifiedCount"),
            upserted_id: answer.get("upsertedId").filter(|v| !v.is_null()).cloned(),
        })
    }

    /// One Data API call. `params` is merged with the data source, database and collection.
    pub async fn action(
        &self,
        action: &str,
        collection: &str,
        params: Value,
    ) -> Result<Value, BackendError> {
        let mut body = match params {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        body.insert("dataSource".into(), self.config.data_source.clone().into());
        body.insert("database".into(), self.config.database.clone().into());
        body.insert("collection".into(), collection.into());
        let url = format!("{}/action/{action}", self.config.url.trim_end_matches('/'));
        let req = self
            .http
            .post(url)
            // Atlas named the header `apiKey`; self-hosted gateways read `api-key`. Header names
            // are case-insensitive but these are two names, so both are sent.
            .header("apiKey", &self.config.api_key)
            .header("api-key", &self.config.api_key)
            .header("accept", "application/json")
            .json(&Value::Object(body));
        let (status, text) = crate::error::exchange(req, self.config.timeout).await?;
        if !(200..300).contains(&status) {
            return Err(BackendError::from_status(status, &error_text(&text)));
        }
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| BackendError::Decode(format!("{action}: {e}")))?;
        Ok(relax(value))
    }
}

fn documents(answer: Value) -> Result<Vec<Value>, BackendError> {
    match answer {
        Value::Object(mut m) => match m.remove("documents") {
            Some(Value::Array(docs)) => Ok(docs),
            _ => Err(BackendError::Decode("answer without documents".into())),
        },
        _ => Err(BackendError::Decode("answer is not an object".into())),
    }
}

fn count(answer: &Value, field: &str) -> u64 {
    answer.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// Atlas answers errors as `{"error": "...", "error_code": "..."}`; gateways often as text.
fn error_text(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => match v.get("error").and_then(Value::as_str) {
            Some(e) => e.to_owned(),
            None => body.to_owned(),
        },
        Err(_) => body.to_owned(),
    }
}

/// Turns canonical Extended JSON wrappers into plain JSON values: `{"$numberLong": "5"}` → 5,
/// `{"$numberInt"}`/`{"$numberDouble"}` → numbers, `{"$date": …}` → milliseconds,
/// `{"$oid": "…"}` → the hex string. Everything else is kept as it is.
pub fn relax(value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(relax).collect()),
        Value::Object(map) => {
            if map.len() == 1 {
                let (key, inner) = map
                    .iter()
                    .next()
                    .map(|(k, v)| (k.as_str(), v))
                    .unwrap_or(("", &Value::Null));
                match (key, inner) {
                    ("$numberLong" | "$numberInt", Value::String(s)) => {
                        if let Ok(n) = s.parse::<i64>() {
                            return n.into();
                        }
                    }
                    ("$numberDouble", Value::String(s)) => {
                        if let Some(n) =
                            s.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
                        {
                            return Value::Number(n);
                        }
                    }
                    ("$oid", Value::String(s)) => return Value::String(s.clone()),
                    ("$date", inner) => return relax(inner.clone()),
                    _ => {}
                }
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, relax(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ejson_reads_as_plain_json() {
        let canonical = json!({
            "_id": {"$oid": "5f2b6c9e8e1b2c3d4e5f6a7b"},
            "n": {"$numberLong": "9007199254740993"},
            "i": {"$numberInt": "7"},
            "d": {"$numberDouble": "1.5"},
            "at": {"$date": {"$numberLong": "1700000000000"}},
            "list": [{"$numberInt": "1"}, "x"],
            "nested": {"a": {"$numberLong": "2"}, "b": true},
        });
        assert_eq!(
            relax(canonical),
            json!({
                "_id": "5f2b6c9e8e1b2c3d4e5f6a7b",
                "n": 9007199254740993u64,
                "i": 7,
                "d": 1.5,
                "at": 1700000000000u64,
                "list": [1, "x"],
                "nested": {"a": 2, "b": true},
            })
        );
    }

    #[test]
    fn error_bodies_keep_their_message() {
        assert_eq!(
            error_text(r#"{"error":"bad filter","error_code":"InvalidParameter"}"#),
            "bad filter"
        );
        assert_eq!(error_text("E11000 duplicate key"), "E11000 duplicate key");
    }
}
