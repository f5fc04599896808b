//! The client side of the abuse trials (`tests/abuse*.rs`): sends and reads that report a
//! closed or reset socket instead of panicking (a flooder is closed under its feet), sockets
//! with a small receive window (a reader that stops reading), admission outcomes (admitted,
//! refused before or after the upgrade) and clients of other networks.

use crate::{Client, Event, RECV_TIMEOUT, Refused, refused_upgrade};
use futures_util::SinkExt;
use piano_core::proto::{ClientMessage, client_message, server_message};
use prost::Message as _;
use std::time::Duration;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

impl Client {
    /// Connects as a client at address `ip` (another network than the other trials'): the
    /// edge reads `CF-Connecting-IP` (wrangler dev passes the client's header on), the
    /// fallback `X-Forwarded-For` from its trusted proxy (the harness trusts loopback).
    pub async fn connect_from(url: &str, ip: &str) -> Result<Client, Refused> {
        Client::connect(url, &[("cf-connecting-ip", ip), ("x-forwarded-for", ip)]).await
    }

    /// Sends without panicking: a flooder's socket may be closed under it.
    pub async fn try_send(&mut self, msg: client_message::Msg) -> Result<(), tungstenite::Error> {
        let bytes = ClientMessage {
            msg: Some(msg),
            ..Default::default()
        }
        .encode_to_vec();
        self.ws.send(Message::Binary(bytes.into())).await
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
        let rest = url.trim_start_matches("ws://");
        let host = rest.split('/').next().unwrap_or(rest);
        let addr: std::net::SocketAddr = host.parse().expect("a loopback ip:port url");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("tcp connect");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket handshake");
        let mut client = Client {
            ws,
            welcome: Default::default(),
            subprotocol: None,
            resume: crate::Resuming::new(url, &[]),
        };
        match client.recv().await {
            server_message::Msg::Welcome(w) => client.welcome = w,
            other => panic!("expected Welcome first, got {other:?}"),
        }
        client
    }

    /// Connects and reports how the server answered: admitted (a Welcome), refused before the
    /// upgrade (HTTP status and body), or refused after it (the errors sent, then the close).
    pub async fn admission(url: &str) -> Admission {
        let req = url.into_client_request().expect("valid ws url");
        let (ws, _) = match tokio_tungstenite::connect_async(req).await {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                let refused = Refused::from_response(&resp);
                if refused.body.is_null() {
                    // The WebSocket client stopped reading before the body: ask again as plain
                    // HTTP (refused again for the same reason; a 101 fails the trial).
                    return Admission::Refused(refused_upgrade(url, &[]).await);
                }
                return Admission::Refused(refused);
            }
            Err(e) => return Admission::Failed(e.to_string()),
        };
        let mut client = Client {
            ws,
            welcome: Default::default(),
            subprotocol: None,
            resume: crate::Resuming::new(url, &[]),
        };
        let mut errors = Vec::new();
        loop {
            match client.next_event(RECV_TIMEOUT).await {
                Some(Event::Msg(server_message::Msg::Welcome(w))) => {
                    client.welcome = w;
                    return Admission::Admitted(Box::new(client));
                }
                Some(Event::Msg(server_message::Msg::Error(e))) => errors.push(e.code),
                Some(Event::Msg(_)) => continue,
                Some(Event::Closed(f)) => {
                    return Admission::Closed {
                        errors,
                        code: f.map(|f| u16::from(f.code)),
                    };
                }
                Some(Event::Broken(e)) => return Admission::Failed(e),
                None => return Admission::Failed("no Welcome and no close".into()),
            }
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
