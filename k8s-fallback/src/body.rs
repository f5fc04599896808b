//! Request bodies (the JSON endpoints): capped while streaming and bounded in time, so neither a
//! huge body nor one trickled byte by byte holds a connection or memory.

use crate::json::json_error;
use crate::metrics::METRICS;
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::response::Response;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Reads at most `limit` bytes within `timeout`: 413 `body_too_large` as soon as the declared
/// length or the bytes received pass the cap (nothing beyond it is buffered), 408
/// `request_timeout` when the body does not arrive in time.
#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Response> {
    let too_large = || {
        json_error(
            413,
            "body_too_large",
            &format!("request body is over {limit} bytes"),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // `to_bytes` reads through `http_body_util::Limited`: it fails on the first frame past the
    // cap, before buffering it.
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => {
            METRICS.body_timeouts.fetch_add(1, Relaxed);
            Err(json_error(
                408,
                "request_timeout",
                "the request body did not arrive in time",
            ))
        }
    }
}
