//! JSON responses, the shape of every API answer (`{"error": {"code", "message"}}` for refusals).
//! At the bottom of the crate so services answer HTTP without importing the router.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

pub fn json(status: u16, body: &serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn json_error(status: u16, code: &str, message: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

pub fn with_header(mut resp: Response, name: &'static str, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

/// 429 `too_many_connections` (before an upgrade), with a hint when to retry.
pub fn too_many_connections(message: &str) -> Response {
    with_header(
        json_error(429, "too_many_connections", message),
        "retry-after",
        "10",
    )
}
