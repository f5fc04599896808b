//! The HTTP side: a guest token (`POST /api/auth/guest`) and the room directory
//! (`GET /api/rooms`). Every request is bounded; errors carry the JSON error code.

use crate::error::ClientError;
/// One room as `GET /api/rooms` lists it (the server's own type).
pub use piano_core::listing::Summary;
use std::time::Duration;

/// The longest one HTTP exchange may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's REST API at a base URL (`http://host:port`).
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Result<Api, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The WebSocket URL of `room` with `token` (both percent-encoded: a JWT passes as it is).
    pub fn ws_url(&self, room: &str, token: &str) -> String {
        let base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        let enc = piano_core::names::percent_encode;
        format!("{base}/api/rooms/{}/ws?token={}", enc(room), enc(token))
    }

    /// A guest token for `name`.
    pub async fn guest_token(&self, name: &str) -> Result<String, ClientError> {
        let req = self
            .http
            .post(format!("{}/api/auth/guest", self.base))
            .json(&serde_json::json!({ "name": name }));
        let body = answer(req).await?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Broken("the guest answer has no token".into()))
    }

    /// The visible, non-empty rooms, most players first.
    pub async fn rooms(&self) -> Result<Vec<Summary>, ClientError> {
        let body = answer(self.http.get(format!("{}/api/rooms", self.base))).await?;
        serde_json::from_value(body)
            .map_err(|e| ClientError::Broken(format!("GET /api/rooms: {e}")))
    }
}

/// The JSON of a successful answer, or the typed refusal.
async fn answer(req: reqwest::RequestBuilder) -> Result<serde_json::Value, ClientError> {
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            ClientError::Timeout("http")
        } else {
            ClientError::Broken(e.to_string())
        }
    })?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(ClientError::http(status, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_url_encodes_room_and_token() {
        let api = Api::new("https://example.test/").expect("api");
        assert_eq!(
            api.ws_url("a b", "x.y_z-1&admin=1+%"),
            "wss://example.test/api/rooms/a%20b/ws?token=x.y_z-1%26admin%3D1%2B%25"
        );
    }
}
