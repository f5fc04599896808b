//! The platform-neutral heart of the piano server.
//!
//! Everything a room decides lives here, as plain deterministic code with no I/O: the hosts (the
//! Cloudflare Durable Object in `durable-objects/`, the tokio server in `k8s-fallback/`) turn
//! socket events into [`room::Input`]s, pass in the time, and carry out the [`room::Effect`]s the
//! room returns. That keeps the rules testable with plain `cargo test` and identical on every host.
//!
//! Layout:
//! - [`proto`]: the wire types, generated from `proto/` at build time (prost + protox).
//! - [`room`]: the room state machine (participants, notes and quota, chat, settings, crown,
//!   moderation, time sync, errors) and its durable state.
//! - [`lobby`]: the room directory and lobby placement, hosted by the Lobby object.
//! - [`listing`]: what the directory lists about a room (its kind, summary, reports, changes),
//!   shared by [`room`] and [`lobby`] so neither depends on the other.
//! - [`mpp`]: the Multiplayer Piano protocol bridge (MPP JSON ⇄ the room's messages).
//! - [`notes`]: bounds on note batches.
//! - [`identity`]: who a player is, and the Ed25519 (EdDSA) JWTs that prove it; [`pkcs8`]:
//!   the signing key read from its PEM.
//! - [`account`]: member accounts, sessions, token issuing, profile and role changes, the auth
//!   rate limit and the one API error type, decided here and stored by the hosts; [`oauth`]:
//!   signing in through Discord and OpenID Connect providers, linked identities, and the
//!   browser's session cookies.
//! - [`names`]: validation of room names, display names and usernames.
//! - [`password`]: password hashing (rooms and accounts).
//! - [`outbox`]: the outbox's delivery rules (lanes, backoff, dead letters, coalescing), for
//!   both hosts; [`lane`]: its lanes, one per backend.
//! - [`backlog`]: what a host skips (stale note batches, cursor moves) for a listener that
//!   fell behind, and when it must close it instead.
//! - [`metrics`]: the metrics both hosts serve (names, labels, help, the Prometheus text);
//!   [`status`]: the components' states `/api/status` reports.
//! - [`analytics`]: analytics events derived from rooms' activity, their NDJSON, and the
//!   bounded batcher both hosts deliver from.
//! - [`limits`]: protocol-wide numbers (frame size, close codes) that clients rely on;
//!   [`window`]: the sliding-window rate counter rooms, sessions and accounts share.
//! - [`logging`]: the one JSON log line schema, level filter and redaction; [`report`]: error
//!   reports to a Sentry-compatible service (envelopes, dedup and rate limit).

pub mod account;
pub mod analytics;
pub mod backlog;
pub mod hex;
pub mod http_policy;
pub mod identity;
pub mod lane;
pub mod limits;
pub mod listing;
pub mod lobby;
pub mod logging;
pub mod metrics;
pub mod mpp;
pub mod names;
pub mod notes;
pub mod oauth;
pub mod outbox;
pub mod password;
pub mod pkcs8;
pub mod report;
pub mod room;
pub mod status;
pub mod window;

/// Wire types generated from `proto/pianorhythm/v1/room.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/pianorhythm.v1.rs"));
}

/// Milliseconds since the Unix epoch, as the hosts' clocks report them.
pub type Millis = u64;
