//! Every HTTP request: its id (`x-request-id`, in the answer too and in every log line inside
//! it), and its answer logged and reported by the core's rule (`piano_core::logging::classify`).
//!
//! Panics: the hook (`telemetry::install_panic_hook`) logs and reports them. Release builds
//! abort after the hook (the workspace's `panic = "abort"`; the orchestrator restarts the
//! process); only debug builds unwind, where the handler's panic becomes a 500 here.

use crate::client_ip::TrustedProxies;
use crate::json::{json_error, with_header};
use crate::telemetry;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::FutureExt;
use piano_core::logging::{Level, SLOW_MS, classify, event};
use piano_core::report::{Report, capped_path, kind};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tracing::Instrument;

pub async fn layer(
    State(trusted): State<Arc<TrustedProxies>>,
    req: Request,
    next: Next,
) -> Response {
    // A client's own `x-request-id` is honoured only from our proxies: anyone else could
    // make their requests' lines look like another's.
    let from_proxy = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| trusted.trusts_peer(peer.ip()));
    let id = telemetry::request_id(req.headers(), from_proxy);
    let method = req.method().clone();
    // The path only: a query may carry a token (`/ws?token=`).
    let path = capped_path(req.uri().path());
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
    if duration_ms >= SLOW_MS {
        tracing::warn!(event = event::SLOW_OP, request_id = %id, status, method = %method, path, duration_ms, "slow request");
    }
    // The one rule for both hosts: which answers are logged, which are reported.
    let outcome = classify(status);
    match outcome.log {
        _ if panicked => {}
        Some((Level::Error, name)) => {
            tracing::error!(event = name, request_id = %id, status, method = %method, path, duration_ms, "server error")
        }
        Some((_, name)) => {
            tracing::warn!(event = name, request_id = %id, status, method = %method, path, duration_ms, "refused")
        }
        None => {}
    }
    if outcome.report && !panicked {
        telemetry::send(
            Report::http_5xx(kind::HTTP_5XX, method.as_str(), &path, status)
                .tag("request_id", id.clone()),
        );
    }
    with_header(resp, "x-request-id", &id)
}
