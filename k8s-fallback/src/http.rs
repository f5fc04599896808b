//! The HTTP surface: the edge's URL paths (README "HTTP API"), plus `/readyz` and `/metrics`,
//! and the browser client from `STATIC_DIR`. Routed by path segments like the edge's router
//! (`src/lib.rs`), so the room name is percent-decoded by the same code
//! (`piano_core::names::percent_decode`). Every error is `{"error": {"code", "message"}}`.

use crate::accounts::{self, Accounts};
use crate::auth::{self, MAX_BODY_BYTES, RateLimiter};
use crate::hub::Hub;
use crate::json::{json, json_error, too_many_connections, with_header};
use crate::metrics::{self, METRICS};
use crate::serve::{ConnLimits, ConnSlot};
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use piano_core::limits::{MAX_FRAME_BYTES, SUBPROTOCOL};
use piano_core::metrics::{Auth, auth_slot as metrics_auth_slot};
use piano_core::names::{self, percent_decode};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tower::ServiceExt;
use tower_http::services::ServeDir;

#[derive(Clone)]
pub struct App {
    pub hub: Arc<Hub>,
    pub accounts: Arc<Accounts>,
    limiter: Arc<RateLimiter>,
    /// Open WebSockets per client network on this replica (`MAX_WEBSOCKETS_PER_IP`).
    ws_caps: Arc<ConnLimits>,
    static_files: Option<ServeDir>,
    status: Arc<crate::status::Cache>,
    /// Sign-in providers and their cached discovery documents and keys.
    oauth: Arc<crate::oauth::Providers>,
}

pub fn router(hub: Arc<Hub>, accounts: Arc<Accounts>) -> axum::Router {
    let policy = crate::security::Policy {
        cors_origins: Arc::new(hub.cfg.cors_origins.clone()),
    };
    let trusted = Arc::new(hub.cfg.trusted_proxies.clone());
    let app = App {
        accounts,
        limiter: Arc::new(RateLimiter::new(hub.cfg.auth_rate_limit)),
        ws_caps: ConnLimits::new(usize::MAX, hub.cfg.max_sockets_per_ip),
        static_files: hub
            .cfg
            .static_dir
            .as_ref()
            .map(|d| ServeDir::new(d).append_index_html_on_directories(true)),
        status: Arc::default(),
        oauth: Arc::new(crate::oauth::Providers::new(
            hub.cfg.oauth_providers.clone(),
        )),
        hub,
    };
    axum::Router::new()
        .fallback(route)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            policy,
            crate::security::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            trusted,
            crate::observe::layer,
        ))
}

/// `METRICS_ADDR`: `/metrics` alone, without a credential (keep that port off the Service).
pub fn metrics_router(hub: Arc<Hub>) -> axum::Router {
    axum::Router::new().fallback(move |req: Request| {
        let hub = hub.clone();
        async move {
            if req.uri().path() == "/metrics" && req.method() == Method::GET {
                metrics_text(&hub)
            } else {
                json_error(404, "not_found", "only /metrics is served here")
            }
        }
    })
}

fn metrics_text(hub: &Hub) -> Response {
    with_header(
        metrics::render(hub.replica(), &hub.cfg.release, crate::status::backlog(hub))
            .into_response(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
}

/// `/metrics` on the main port: only with `METRICS_TOKEN`, presented as a bearer token.
fn metrics_gate(hub: &Hub, headers: &axum::http::HeaderMap) -> Response {
    let Some(expected) = &hub.cfg.metrics_token else {
        let message = if hub.cfg.metrics_addr.is_some() {
            "metrics are served on METRICS_ADDR"
        } else {
            "metrics are off: the operator sets METRICS_TOKEN or METRICS_ADDR"
        };
        return json_error(404, "not_found", message);
    };
    let presented = auth::bearer(headers).unwrap_or_default();
    if !piano_core::metrics::token_matches(&presented, expected) {
        return with_header(
            json_error(401, "unauthorized", "/metrics needs its bearer token"),
            "www-authenticate",
            r#"Bearer realm="metrics""#,
        );
    }
    metrics_text(hub)
}

/// The client's address: the socket peer, or what `TRUSTED_PROXIES` lets `X-Forwarded-For` say.
pub fn client_ip(hub: &Hub, peer: SocketAddr, headers: &axum::http::HeaderMap) -> IpAddr {
    let xff = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    hub.cfg.trusted_proxies.client_ip(peer.ip(), xff)
}

/// What the request says about the browser (origin, cookies) and our own origin.
fn browser(hub: &Hub, peer: SocketAddr, headers: &axum::http::HeaderMap) -> accounts::Browser {
    let from_proxy = hub.cfg.trusted_proxies.trusts_peer(peer.ip());
    accounts::Browser::of(&hub.cfg, headers, from_proxy)
}

/// Counts one request toward the auth rate limit (`AUTH_RATE_LIMIT_PER_MINUTE`).
async fn rate_limited(
    app: &App,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Result<(), piano_core::account::ApiError> {
    let hub = &app.hub;
    let ip = client_ip(hub, peer, headers);
    app.limiter
        .check_shared(hub.cluster.as_deref(), &hub.cfg.redis_key_prefix, ip)
        .await
}

/// Every request, counted: HTTP errors by status (`piano_http_errors_total`).
async fn route(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let resp = route_inner(app, peer, req).await;
    metrics::http_response(resp.status().as_u16());
    resp
}

async fn route_inner(app: App, peer: SocketAddr, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (hub, accounts) = (&app.hub, &*app.accounts);
    match (&method, segments.as_slice()) {
        // As the edge answers it (README "HTTP API"): which backends are in use.
        (&Method::GET, ["healthz"]) => json(
            200,
            &serde_json::json!({ "status": "ok", "backends": {
                "mongodb": hub.cfg.mongodb_url.is_some(),
                "redis": hub.cfg.redis_url.is_some(),
            } }),
        ),
        (&Method::GET, ["readyz"]) => {
            if hub.ready() {
                json(200, &serde_json::json!({ "status": "ready" }))
            } else if hub.draining.load(std::sync::atomic::Ordering::SeqCst) {
                json_error(503, "draining", "this replica is shutting down")
            } else {
                json_error(503, "not_ready", "not connected to Redis yet")
            }
        }
        (&Method::GET, ["metrics"]) => metrics_gate(hub, req.headers()),
        (&Method::GET, ["api", "status"]) => with_header(
            json(200, &app.status.get(hub).await),
            "cache-control",
            "public, max-age=3",
        ),
        (&Method::GET, ["api", "version"]) => json(
            200,
            &serde_json::json!({
                "name": env!("CARGO_PKG_NAME"),
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": piano_core::limits::PROTOCOL_VERSION,
                "subprotocol": SUBPROTOCOL,
                "replica": hub.replica(),
                "mode": if hub.cluster.is_some() { "redis" } else { "standalone" },
            }),
        ),
        (&Method::GET, [".well-known", "jwks.json"]) => auth::jwks(&hub.cfg),
        (
            &Method::POST,
            [
                "api",
                "auth",
                endpoint @ ("guest" | "register" | "login" | "refresh" | "logout"),
            ],
        ) => {
            let endpoint = *endpoint;
            if let Err(e) = rate_limited(&app, peer, req.headers()).await {
                metrics::add_slot(metrics_auth_slot(Auth::RateLimited), 1);
                return auth::api_error(&e);
            }
            let token = auth::bearer(req.headers());
            let (parts, body) = req.into_parts();
            let body = match read_body(hub, &parts.headers, body).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let bootstrap = parts
                .headers
                .get("x-admin-bootstrap")
                .and_then(|v| v.to_str().ok());
            let browser = browser(hub, peer, &parts.headers);
            let cfg = &hub.cfg;
            let resp = match endpoint {
                "guest" => auth::guest(cfg, &body),
                "register" => accounts::register(cfg, accounts, &browser, bootstrap, &body).await,
                "login" => accounts::login(cfg, accounts, &browser, &body).await,
                "refresh" => accounts::refresh(cfg, accounts, &browser, &body).await,
                _ => accounts::logout(cfg, accounts, &browser, token, &body).await,
            };
            if let Some(outcome) = Auth::of(endpoint, resp.status().as_u16()) {
                metrics::add_slot(metrics_auth_slot(outcome), 1);
            }
            resp
        }
        (&Method::GET, ["api", "auth", "providers"]) => crate::oauth::providers(&app.oauth),
        (&Method::GET, ["api", "auth", "oauth", id, step @ ("start" | "callback")]) => {
            let (id, step) = (*id, *step);
            let browser = browser(hub, peer, req.headers());
            let query = req.uri().query().unwrap_or("");
            // Both count as auth requests (as at the edge): each callback with a live flow
            // cookie makes a request to the provider, which a client must not repeat at will.
            if let Err(e) = rate_limited(&app, peer, req.headers()).await {
                return auth::api_error(&e);
            }
            if step == "callback" {
                return crate::oauth::callback(&hub.cfg, accounts, &app.oauth, &browser, id, query)
                    .await;
            }
            crate::oauth::start(&hub.cfg, &app.oauth, &browser, id, query).await
        }
        (&Method::POST, ["api", "auth", "oauth", id, "link"]) => {
            if let Err(e) = rate_limited(&app, peer, req.headers()).await {
                return auth::api_error(&e);
            }
            let browser = browser(hub, peer, req.headers());
            let token = auth::bearer(req.headers());
            let query = req.uri().query().unwrap_or("");
            let cfg = &hub.cfg;
            crate::oauth::link(
                cfg,
                accounts,
                &app.oauth,
                &browser,
                token.as_deref(),
                id,
                query,
            )
            .await
        }
        (&Method::GET, ["api", "auth", "identities"]) => {
            let token = auth::bearer(req.headers());
            crate::oauth::identities(&hub.cfg, accounts, token.as_deref()).await
        }
        (&Method::DELETE, ["api", "auth", "identities", id]) => {
            let token = auth::bearer(req.headers());
            crate::oauth::unlink(&hub.cfg, accounts, &app.oauth, token.as_deref(), id).await
        }
        (&Method::PUT, ["api", "users", "me"]) => {
            let token = auth::bearer(req.headers());
            let (parts, body) = req.into_parts();
            match read_body(hub, &parts.headers, body).await {
                Ok(body) => accounts::update_me(&hub.cfg, accounts, token, &body).await,
                Err(resp) => resp,
            }
        }
        (&Method::POST, ["api", "admin", "users", id, "roles"]) => {
            let id = (*id).to_owned();
            let token = auth::bearer(req.headers());
            let (parts, body) = req.into_parts();
            match read_body(hub, &parts.headers, body).await {
                Ok(body) => accounts::set_roles(&hub.cfg, accounts, token, &id, &body).await,
                Err(resp) => resp,
            }
        }
        (&Method::GET, ["api", "users", "me"]) => {
            accounts::me(&hub.cfg, accounts, req.headers()).await
        }
        (&Method::GET, ["api", "users", id, "stats"]) => user_stats(hub, id).await,
        (&Method::GET, ["api", "users", id]) => accounts::user(accounts, id).await,
        (&Method::GET, ["api", "network", "rooms"]) => {
            crate::network::rooms(hub.cluster.as_deref(), &hub.cfg.redis_key_prefix).await
        }
        (&Method::GET, ["api", "network", "online"]) => {
            crate::network::online(hub.cluster.as_deref(), &hub.cfg.redis_key_prefix).await
        }
        (&Method::GET, ["api", "rooms"]) => with_header(
            json(
                200,
                &serde_json::to_value(hub.directory.listing()).unwrap_or_default(),
            ),
            "cache-control",
            "public, max-age=2, stale-while-revalidate=10",
        ),
        (&Method::POST, ["api", "lobby", "next"]) => {
            match auth::verify(&hub.cfg, accounts, auth::bearer(req.headers()).as_deref()).await {
                Ok(identity) => json(
                    200,
                    &serde_json::json!({ "room": hub.directory.next_lobby(&identity.user_id).await }),
                ),
                Err(resp) => resp,
            }
        }
        (&Method::GET, ["api", "rooms", name, "ws"]) => {
            let name = (*name).to_owned();
            let ip = client_ip(hub, peer, req.headers());
            connect(app.clone(), req, &name, ip).await
        }
        (&Method::GET, ["mpp"]) => {
            let ip = client_ip(hub, peer, req.headers());
            crate::ws::mpp::connect(hub, &app.accounts, &app.ws_caps, req, ip).await
        }
        (&Method::GET, ["api", "rooms", name]) => match room_name(name) {
            Ok(name) => with_header(
                json(200, &hub.info(&name).await),
                "cache-control",
                "no-store",
            ),
            Err(resp) => resp,
        },
        // Test-only (`PIANO_TEST_ROUTES=1`): a panic and a 500 on demand, for the reports' trials.
        (&Method::GET, ["api", "debug", "panic", marker @ ..]) if hub.cfg.test_routes => {
            panic!("debug panic requested {}", marker.join("/"))
        }
        (&Method::GET, ["api", "debug", "error", ..]) if hub.cfg.test_routes => {
            json_error(500, "internal", "debug error requested")
        }
        // A report through the same throttle and queue as any other (the trials' sentinel).
        (&Method::GET, ["api", "debug", "report", marker @ ..]) if hub.cfg.test_routes => {
            crate::telemetry::send(piano_core::report::debug_report(&marker.join("/")));
            json(200, &serde_json::json!({}))
        }
        (
            _,
            [".well-known", "jwks.json"]
            | ["api", "version"]
            | ["healthz"]
            | ["readyz"]
            | ["metrics"]
            | ["api", "status"],
        )
        | (_, ["api", "auth", "guest"] | ["api", "rooms", _] | ["api", "rooms", _, "ws"])
        | (_, ["api", "users", "me"] | ["api", "network", "rooms" | "online"])
        | (_, ["api", "rooms"] | ["api", "lobby", "next"] | ["api", "users", _])
        | (_, ["api", "users", _, "stats"] | ["mpp"])
        | (_, ["api", "auth", "register" | "login" | "refresh" | "logout"])
        | (_, ["api", "admin", "users", _, "roles"])
        | (_, ["api", "auth", "providers" | "identities"] | ["api", "auth", "identities", _])
        | (_, ["api", "auth", "oauth", _, "start" | "callback" | "link"]) => {
            json_error(405, "method_not_allowed", "method not allowed on this path")
        }
        // The API description is a static file (`web/dist/api/openapi.json`), as at the edge
        // (`web/static/_headers` gives it the same cache policy there).
        (&Method::GET | &Method::HEAD, ["api", "openapi.json"]) => {
            with_header(static_file(&app, req).await, "cache-control", OPENAPI_CACHE)
        }
        (_, ["api", "openapi.json"]) => {
            json_error(405, "method_not_allowed", "method not allowed on this path")
        }
        (_, ["api", ..]) => json_error(404, "not_found", "no such endpoint"),
        _ if method == Method::GET || method == Method::HEAD => static_file(&app, req).await,
        _ => json_error(404, "not_found", "no such endpoint"),
    }
}

/// `Cache-Control` of `/api/openapi.json`: it changes only with a deployment.
const OPENAPI_CACHE: &str = "public, max-age=300";

/// A file of `STATIC_DIR` (the browser client, the API reference), else 404 `not_found`.
async fn static_file(app: &App, req: Request) -> Response {
    match &app.static_files {
        Some(dir) => match dir.clone().oneshot(req).await {
            Ok(resp) if resp.status() != StatusCode::NOT_FOUND => resp.map(Body::new),
            _ => json_error(404, "not_found", "no such endpoint"),
        },
        None => json_error(404, "not_found", "no such endpoint"),
    }
}

/// `GET /api/users/{id}/stats`: a member's totals over every room and deployment (MongoDB),
/// or over this deployment's rooms from its own store without MongoDB.
async fn user_stats(hub: &crate::hub::Hub, raw_id: &str) -> Response {
    let Some(user_id) = percent_decode(raw_id).filter(|u| !u.is_empty() && u.len() <= 100) else {
        return json_error(400, "invalid_user_id", "not a user id");
    };
    let Some(mongo) = &hub.mongo else {
        return match hub.store().user_stats(&user_id).await {
            Ok(t) => with_header(
                json(200, &t.unwrap_or_default().to_json(&user_id)),
                "cache-control",
                "no-store",
            ),
            Err(e) => {
                tracing::warn!(error = %e, "user stats read failed");
                json_error(
                    503,
                    "store_unavailable",
                    "the store cannot be read right now",
                )
            }
        };
    };
    match mongo.user_totals(&user_id).await {
        Ok(totals) => with_header(json(200, &totals), "cache-control", "no-store"),
        Err(e) => {
            tracing::warn!(error = %e, "user stats aggregation failed");
            json_error(
                502,
                "backend_unavailable",
                "MongoDB cannot be reached right now",
            )
        }
    }
}

/// A JSON endpoint's body: at most [`MAX_BODY_BYTES`], within `HTTP_BODY_TIMEOUT_SECS`.
#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
async fn read_body(
    hub: &Hub,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    crate::body::read(headers, body, MAX_BODY_BYTES, hub.cfg.body_timeout).await
}

/// Decodes and validates the `{name}` path segment.
#[allow(clippy::result_large_err)] // built once per request; boxing buys nothing
fn room_name(raw: &str) -> Result<String, Response> {
    let decoded = percent_decode(raw).ok_or_else(|| {
        json_error(
            400,
            "invalid_room_name",
            "room name is not valid UTF-8 percent-encoding",
        )
    })?;
    names::room_name(&decoded)
        .map(str::to_owned)
        .map_err(|e| json_error(400, "invalid_room_name", &format!("room name {e}")))
}

/// The WebSocket gate: room name, upgrade, subprotocol, then the token (in the edge's order).
async fn connect(app: App, req: Request, raw_name: &str, ip: IpAddr) -> Response {
    let name = match room_name(raw_name) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(_) => {
            return json_error(
                426,
                "upgrade_required",
                "this endpoint only accepts WebSocket upgrades",
            );
        }
    };
    let auth = match auth::upgrade_auth(&parts.uri, &parts.headers) {
        Ok(a) => a,
        Err(msg) => return json_error(400, "bad_subprotocol", msg),
    };
    let identity = match auth::verify(&app.hub.cfg, &*app.accounts, auth.token.as_deref()).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    if app.hub.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return json_error(
            503,
            "draining",
            "this replica is shutting down: connect again",
        );
    }
    // Per client network on this replica (`MAX_WEBSOCKETS_PER_IP`); the room's own caps (per
    // user and per network in the room) come next.
    let socket_slot = match app.ws_caps.acquire(Some(ip)) {
        Ok(s) => s,
        Err(_) => {
            METRICS.refused_sockets.fetch_add(1, Relaxed);
            return too_many_connections("your network holds as many sockets as it may here");
        }
    };
    let mut identity = identity;
    // The core's key (as the edge computes it from CF-Connecting-IP): IPv4, or IPv6 /64.
    identity.network = Some(piano_core::http_policy::network_key(&ip.to_string()));
    // The room's own caps (sockets per user and per network in the room), asked before the
    // upgrade when the room runs here; a room elsewhere (cluster) or not running yet checks at
    // Connect instead (Error TOO_MANY_CONNECTIONS, close 4004).
    if let Some(tx) = app.hub.rooms.tx(&name) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let ask = crate::room_task::RoomMsg::Admit {
            identity: identity.clone(),
            reply,
        };
        if tx.send(ask).await.is_ok()
            && let Ok(Ok(Err(_))) = tokio::time::timeout(Duration::from_secs(2), answer).await
        {
            METRICS.refused_sockets.fetch_add(1, Relaxed);
            return too_many_connections(
                "you (or your network) already hold the most sockets allowed in this room",
            );
        }
    }
    let meta = crate::ws::ConnMeta {
        slots: (
            socket_slot,
            parts.extensions.get::<Arc<ConnSlot>>().cloned(),
        ),
    };
    let mut upgrade = upgrade
        // Frames over the protocol limit reach the room, which closes with 1009; far larger
        // ones are refused by the WebSocket layer before they are buffered.
        .max_message_size(MAX_FRAME_BYTES * 4)
        .max_frame_size(MAX_FRAME_BYTES * 4)
        // tungstenite's default 128 KiB read buffer is zero-filled on the first read and stays
        // resident: 141.7 KiB per idle connection at 10,000 (`bench connections`); frames are
        // small, 2 KiB reads them fine (a larger frame is assembled across reads).
        .read_buffer_size(2048);
    if auth.subprotocol {
        upgrade = upgrade.protocols([SUBPROTOCOL]);
    }
    let hub = app.hub.clone();
    upgrade
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            let entry = crate::ws::Entry::Room {
                room: name,
                identity,
            };
            crate::ws::serve(hub, socket, entry, meta)
        })
}
