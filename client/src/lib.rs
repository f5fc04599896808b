//! `piano-client`: a Rust client for the piano server, the same shape as the TypeScript SDK,
//! on tokio. The e2e tests, the load generator and the example bot (`examples/bot.rs`) use it.
//!
//! Layers:
//! - [`conn`]: one WebSocket carrying protobuf frames (`piano_core::proto`): every wait bounded,
//!   events (message / close frame / broken), raw sends for tests, [`conn::Connection::cut`]
//!   (lose the TCP without a close frame), the resume state kept as messages are read.
//! - [`room`]: the high-level API: [`Client::connect`] with a token or a guest name, [`Client::join`]
//!   → a [`Room`] that batches notes, syncs its clock by Ping/Pong, proves it reads (a ping per
//!   128 KiB read), sends chat, settings, crown and moderation requests answered with typed
//!   [`ClientError`]s, subscribes to the room list, and [`Room::reconnect`]s with resume (or a
//!   fresh join).
//! - Pure parts, no I/O (the caller passes the time): [`session`] (resume state, the queue of
//!   unacknowledged numbered messages), [`clock`] (fastest of 16 Ping/Pong samples), [`batch`]
//!   (outgoing note batches), [`scheduler`] (received batches → local playback instants).
//! - [`http`]: guest tokens and the room directory (`GET /api/rooms`), bounded.
//! - [`retry`]: when a failed reconnect is worth another try, and after how long.
//! - [`bot`]: the example bot's logic (the example's `main` and the e2e trial run it).
//!
//! A [`Room`] is driven by its caller: nothing pings, flushes a note batch or notices a dead
//! socket unless [`Room::next`] or [`Room::idle`] is being awaited, and nothing reconnects by
//! itself: on a close that allows it ([`room::may_reconnect`]), call [`Room::reconnect`]. The
//! TypeScript SDK, by contrast, keeps its own timers and reconnects on its own.

pub mod batch;
pub mod bot;
pub mod clock;
pub mod conn;
pub mod error;
pub mod http;
pub mod retry;
pub mod room;
pub mod scheduler;
pub mod session;

pub use conn::{ConnectError, Connection, Dial, Event};
pub use error::{ClientError, CloseReason};
pub use piano_core::proto;
pub use room::{Auth, Client, ConnectOptions, JoinOptions, Reentry, Room};
pub use scheduler::{Scheduled, Scheduler};
pub use tokio_tungstenite::tungstenite;
