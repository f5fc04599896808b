//! The client side of the abuse trials (`tests/abuse*.rs`), on the client crate: sends and
//! reads that report a closed or reset socket instead of panicking (a flooder is closed under
//! its feet), sockets with a small receive window (a reader that stops reading), admission
//! outcomes (admitted, refused before or after the upgrade) and clients of other networks.

use crate::{Client, Event, Refused, refused_upgrade};
use piano_client::{ConnectError, Connection, Dial};
use piano_core::proto::{client_message, server_message};
use std::time::Duration;
use tokio_tungstenite::tungstenite;

impl Client {
    /// Connects as a client at address `ip` (another network than the other trials'): the
    /// edge reads `CF-Connecting-IP` (wrangler dev passes the client's header on), the
    /// fallback `X-Forwarded-For` from its trusted proxy (the harness trusts loopback).
    pub async fn connect_from(url: &str, ip: &str) -> Result<Client, Refused> {
        Client::connect(url, &[("cf-connecting-ip", ip), ("x-forwarded-for", ip)]).await
    }

    /// Sends without panicking, even after a close was read: a flooder's socket may be closed
    /// under it (the send then fails).
    pub async fn try_send(&mut self, msg: client_message::Msg) -> Result<(), tungstenite::Error> {
        self.conn.try_send(msg).await
    }

    /// Reads (handing every message to `seen`) until the server closes the socket or `within`
    /// passes.
    pub async fn until_closed(
        &mut self,
        within: Duration,
        mut seen: impl FnMut(&server_message::Msg),
    ) -> Ending {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Msg(m)) => seen(&m),
                Some(Event::Closed(Some(f))) => return Ending::Closed(u16::from(f.code)),
                Some(Event::Closed(None)) => return Ending::ClosedWithoutFrame,
                Some(Event::Broken(e)) => return Ending::Broken(e),
                None => return Ending::StillOpen,
            }
        }
    }

    /// Opens a socket like [`Client::connect`], with the client's TCP receive buffer set to
    /// `rcvbuf` bytes (a reader that stops reading then backs up on the server at once).
    pub async fn connect_small_window(url: &str, rcvbuf: u32) -> Client {
        let dial = Dial {
            rcvbuf: Some(rcvbuf),
            ..Dial::new(url)
        };
        Client::dial(dial).await.expect("websocket handshake")
    }

    /// Connects and reports how the server answered: admitted (a Welcome), refused before the
    /// upgrade (HTTP status and body), or refused after it (the errors sent, then the close).
    pub async fn admission(url: &str) -> Admission {
        match Connection::connect(Dial::new(url)).await {
            Ok(conn) => Admission::Admitted(Box::new(Client { conn })),
            // The WebSocket client stopped reading before the body: ask again as plain HTTP
            // (refused again for the same reason; a 101 fails the trial).
            Err(ConnectError::Refused { body, .. }) if body.is_null() => {
                Admission::Refused(refused_upgrade(url, &[]).await)
            }
            Err(ConnectError::Refused { status, body }) => {
                Admission::Refused(Refused { status, body })
            }
            Err(ConnectError::Closed { errors, code }) => Admission::Closed { errors, code },
            Err(ConnectError::NoWelcome) => Admission::Failed("no Welcome and no close".into()),
            Err(e) => Admission::Failed(e.to_string()),
        }
    }
}

/// How a socket ended, as [`Client::until_closed`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Closed(u16),
    ClosedWithoutFrame,
    Broken(String),
    StillOpen,
}

/// What [`Client::admission`] saw.
pub enum Admission {
    Admitted(Box<Client>),
    Refused(Refused),
    /// Upgraded, then closed before any Welcome, after these `Error` codes.
    Closed {
        errors: Vec<i32>,
        code: Option<u16>,
    },
    Failed(String),
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Admitted(c) => write!(f, "Admitted({})", c.id()),
            Admission::Refused(r) => write!(f, "Refused({} {})", r.status, r.body),
            Admission::Closed { errors, code } => write!(f, "Closed({errors:?}, {code:?})"),
            Admission::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}
