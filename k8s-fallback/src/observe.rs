//! Every HTTP request: its id (`x-request-id`, in the answer too and in every log line inside
//! it), a panicking handler turned into a 500, and server errors logged and reported.

use crate::json::{json_error, with_header};
use crate::telemetry;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::FutureExt;
use piano_core::logging::{Level, SLOW_MS, event, for_refusal};
use piano_core::report::{Report, Severity, kind};
use std::panic::AssertUnwindSafe;
use tracing::Instrument;

pub async fn layer(req: Request, next: Next) -> Response {
    let id = telemetry::request_id(req.headers());
    let method = req.method().clone();
    // The path only: a query may carry a token (`/ws?token=`).
    let path: String = req.uri().path().chars().take(200).collect();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("request", request_id = %id);
    let answer = AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .instrument(span)
        .await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let (resp, panicked) = match answer {
        Ok(resp) => (resp, false),
        // The panic hook has logged and reported it already (with this request's id).
        Err(_) => (json_error(500, "internal", "internal error"), true),
    };
    let status = resp.status().as_u16();
    // Refusals worth a line (auth failures, rate limits), the same rule as the edge's.
    match for_refusal(status) {
        Some((Level::Warn, name)) => {
            tracing::warn!(event = name, request_id = %id, status, method = %method, path, duration_ms, "refused")
        }
        Some((Level::Error, _)) if status == 503 => {
            tracing::warn!(request_id = %id, status, method = %method, path, duration_ms, "unavailable")
        }
        _ => {}
    }
    if duration_ms >= SLOW_MS {
        tracing::warn!(event = event::SLOW_OP, request_id = %id, status, method = %method, path, duration_ms, "slow request");
    }
    // 503 is a deliberate "not now" (draining, not ready, at capacity), not a fault.
    if status >= 500 && status != 503 && !panicked {
        tracing::error!(
            event = event::HTTP_ERROR,
            request_id = %id,
            status,
            method = %method,
            path,
            duration_ms,
            "server error"
        );
        telemetry::send(
            Report::new(
                kind::HTTP_5XX,
                Severity::Error,
                format!("{method} {path} answered {status}"),
            )
            .tag("request_id", id.clone())
            .tag("status", status.to_string()),
        );
    }
    with_header(resp, "x-request-id", &id)
}
