//! The low-level connection: protobuf frames over one WebSocket. Every wait is bounded (the
//! handshake, the Welcome, each read, each send, the close); what arrives is an [`Event`] (a
//! message, the close frame, or a broken transport), never a panic; raw sends for tests;
//! [`Connection::cut`] loses the TCP connection the way a network does (no close frame); the
//! [`Session`] (resume state) is kept up to date with every message read.

use crate::session::{Session, Unacked};
use futures_util::{SinkExt, StreamExt};
use piano_core::proto::{self, ClientMessage, ServerMessage, client_message, server_message};
use prost::Message as _;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest a WebSocket handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Welcome may take after the upgrade.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one send may wait for the server to read (long: a flood backing up briefly is
/// normal; a server that closes a reader that stalls does it well within this).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the goodbye may take (the close frame, then the server's).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection saw next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived values, read once
pub enum Event {
    Msg(server_message::Msg),
    /// The server closed (with its frame), or the connection was already closed or cut.
    Closed(Option<CloseFrame>),
    /// The connection failed without a close (reset, the server died, or it broke the protocol:
    /// a text frame, a frame that is not a ServerMessage).
    Broken(String),
}

/// How a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// Refused before the upgrade: the HTTP status and JSON body (null when the WebSocket
    /// client stopped reading before the body).
    Refused {
        status: u16,
        body: serde_json::Value,
    },
    /// No handshake within the timeout.
    Timeout,
    /// The transport or the handshake failed.
    Failed(String),
    /// Upgraded, then closed before any Welcome, after these `Error` codes.
    Closed { errors: Vec<i32>, code: Option<u16> },
    /// Upgraded, but neither a Welcome nor a close came in time.
    NoWelcome,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused { status, body } => write!(f, "refused: {status} {body}"),
            ConnectError::Timeout => write!(f, "no handshake within {HANDSHAKE_TIMEOUT:?}"),
            ConnectError::Failed(e) => write!(f, "connection failed: {e}"),
            ConnectError::Closed { errors, code } => {
                write!(
                    f,
                    "closed before the Welcome: {code:?} after errors {errors:?}"
                )
            }
            ConnectError::NoWelcome => write!(f, "no Welcome within {WELCOME_TIMEOUT:?}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Where and how to open a socket (kept to open another like it).
#[derive(Debug, Clone, Default)]
pub struct Dial {
    /// `ws://host:port/api/rooms/{room}/ws?token=...`
    pub url: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// The TCP receive buffer (a reader that stops reading then backs up on the server at once).
    pub rcvbuf: Option<u32>,
}

impl Dial {
    pub fn new(url: &str) -> Dial {
        Dial {
            url: url.to_owned(),
            ..Default::default()
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Dial {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    /// The upgrade, bounded by [`HANDSHAKE_TIMEOUT`]: the socket and the selected subprotocol.
    pub async fn upgrade(&self) -> Result<(Ws, Option<String>), ConnectError> {
        let fail = |e: &dyn std::fmt::Display| ConnectError::Failed(format!("{}: {e}", self.url));
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| fail(&e))?;
        for (k, v) in &self.headers {
            let name =
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| fail(&e))?;
            let value = v.parse().map_err(|e| fail(&e))?;
            req.headers_mut().insert(name, value);
        }
        let handshake = async {
            match self.rcvbuf {
                // No Nagle: notes are small frames that must leave at once.
                None => tokio_tungstenite::connect_async_with_config(req, None, true).await,
                Some(size) => {
                    let host = req
                        .uri()
                        .authority()
                        .map(|a| a.as_str().to_owned())
                        .unwrap_or_default();
                    let addr = tokio::net::lookup_host(&host)
                        .await?
                        .next()
                        .ok_or_else(|| std::io::Error::other("no address"))?;
                    let socket = if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.set_recv_buffer_size(size)?;
                    let stream = socket.connect(addr).await?;
                    stream.set_nodelay(true)?;
                    tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await
                }
            }
        };
        let (ws, resp) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(serde_json::Value::Null);
                return Err(ConnectError::Refused {
                    status: resp.status().as_u16(),
                    body,
                });
            }
            Ok(Err(e)) => return Err(fail(&e)),
            Ok(Ok(ok)) => ok,
        };
        let subprotocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((ws, subprotocol))
    }
}

/// `within` from now (a day at most: `Duration::MAX` means "no hurry", not an overflow).
pub fn deadline_in(within: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + within.min(Duration::from_secs(86_400))
}

/// The most `Error` codes kept while waiting for the Welcome (the first ones).
pub const MAX_EARLY_ERRORS: usize = 16;

/// Keeps `code` unless [`MAX_EARLY_ERRORS`] are kept already.
fn keep_error(errors: &mut Vec<i32>, code: i32) {
    if errors.len() < MAX_EARLY_ERRORS {
        errors.push(code);
    }
}

/// One `ClientMessage` as the binary frame that carries it.
pub fn frame(msg: client_message::Msg, seq: u64) -> Message {
    Message::Binary(
        ClientMessage {
            msg: Some(msg),
            seq,
        }
        .encode_to_vec()
        .into(),
    )
}

/// The `ServerMessage` a frame carries; `None` for anything else (other frames, garbage).
pub fn decode(frame: &Message) -> Option<ServerMessage> {
    match frame {
        Message::Binary(b) => ServerMessage::decode(&b[..]).ok(),
        _ => None,
    }
}

/// One WebSocket speaking the room protocol.
pub struct Connection {
    ws: Ws,
    pub welcome: proto::Welcome,
    /// The subprotocol the server selected, if any.
    pub subprotocol: Option<String>,
    /// What is needed to resume after a drop.
    pub resume: Session,
    pub dial: Dial,
    /// Cut or closed: what is sent now is lost, nothing more is read.
    gone: bool,
    /// Bytes of frames read since this connection last sent anything, and when that was: a
    /// host that cannot see its queues takes a client's sends as proof that it reads
    /// (`piano_core::backlog`); the high-level [`crate::Room`] pings after
    /// `ACK_EVERY_BYTES`, as the web client does. This layer only counts.
    pub read_since_send: usize,
    pub last_send: tokio::time::Instant,
}

impl Connection {
    /// Opens the socket and reads the Welcome (skipping any `Error` before it, which a close
    /// then explains: [`ConnectError::Closed`]).
    pub async fn connect(dial: Dial) -> Result<Connection, ConnectError> {
        let mut conn = Connection::upgraded(dial).await?;
        let mut errors = Vec::new();
        // One deadline for the Welcome: a server chattering without one must not keep us.
        let deadline = deadline_in(WELCOME_TIMEOUT);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match conn.next_event(left).await {
                Some(Event::Msg(server_message::Msg::Welcome(w))) => {
                    conn.welcome = w;
                    return Ok(conn);
                }
                Some(Event::Msg(server_message::Msg::Error(e))) => keep_error(&mut errors, e.code),
                Some(Event::Msg(_)) => continue,
                Some(Event::Closed(f)) => {
                    return Err(ConnectError::Closed {
                        errors,
                        code: f.map(|f| u16::from(f.code)),
                    });
                }
                Some(Event::Broken(e)) => return Err(ConnectError::Failed(e)),
                None => return Err(ConnectError::NoWelcome),
            }
        }
    }

    /// Opens the socket without waiting for anything.
    pub async fn upgraded(dial: Dial) -> Result<Connection, ConnectError> {
        let (ws, subprotocol) = dial.upgrade().await?;
        Ok(Connection {
            ws,
            welcome: Default::default(),
            subprotocol,
            resume: Session::default(),
            dial,
            gone: false,
            read_since_send: 0,
            last_send: tokio::time::Instant::now(),
        })
    }

    /// A socket upgraded elsewhere (the load generator binds its own source addresses and
    /// buffers), nothing read from it yet.
    pub fn adopt(ws: Ws, dial: Dial) -> Connection {
        Connection {
            ws,
            welcome: Default::default(),
            subprotocol: None,
            resume: Session::default(),
            dial,
            gone: false,
            read_since_send: 0,
            last_send: tokio::time::Instant::now(),
        }
    }

    /// The socket itself, for a driver that splits it (the load generator's timed senders).
    pub fn into_ws(self) -> Ws {
        self.ws
    }

    /// Sends `join` and waits up to `within` for the answer, skipping other messages; `None`
    /// when the socket ended or nothing came.
    pub async fn join(
        &mut self,
        join: proto::Join,
        within: Duration,
    ) -> Option<Result<proto::Joined, proto::JoinFailed>> {
        self.send(client_message::Msg::Join(join)).await.ok()?;
        let deadline = deadline_in(within);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Event::Msg(server_message::Msg::Joined(j)) => return Some(Ok(j)),
                Event::Msg(server_message::Msg::JoinFailed(f)) => return Some(Err(f)),
                Event::Msg(_) => continue,
                _ => return None,
            }
        }
    }

    /// A new socket like this one, carrying this connection's resume state (the old socket is
    /// left as it is: a half-open connection the server may not know is gone).
    pub async fn redial(&self) -> Result<Connection, ConnectError> {
        let mut fresh = Connection::connect(self.dial.clone()).await?;
        fresh.resume = self.resume.clone();
        Ok(fresh)
    }

    /// This participant's id (from the Welcome).
    pub fn id(&self) -> &str {
        self.welcome
            .you
            .as_ref()
            .map(|p| p.id.as_str())
            .unwrap_or("")
    }

    /// Whether the socket was cut or closed.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Sends one frame as it is. On a cut or closed socket it is lost (as on a dead
    /// connection) and `Ok`.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        if self.gone {
            return Ok(());
        }
        self.sent_now();
        self.send_bounded(msg).await
    }

    /// One send within [`SEND_TIMEOUT`]: a server that stops reading does not hold the caller
    /// forever; on expiry the connection is gone (the frame may be half written) and the error
    /// is `TimedOut`.
    async fn send_bounded(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(msg)).await {
            Ok(sent) => sent,
            Err(_) => {
                self.gone = true;
                Err(tungstenite::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("a send took over {SEND_TIMEOUT:?}: the server does not read"),
                )))
            }
        }
    }

    fn sent_now(&mut self) {
        self.read_since_send = 0;
        self.last_send = tokio::time::Instant::now();
    }

    /// Sends `msg` numbered with `seq` as given (0: not numbered).
    pub async fn send_seq(
        &mut self,
        seq: u64,
        msg: client_message::Msg,
    ) -> Result<(), tungstenite::Error> {
        self.send_raw(frame(msg, seq)).await
    }

    /// Sends `msg` unnumbered even after a close was read (a flooder closed under its feet:
    /// the send then fails).
    pub async fn try_send(&mut self, msg: client_message::Msg) -> Result<(), tungstenite::Error> {
        self.sent_now();
        self.send_bounded(frame(msg, 0)).await
    }

    /// Sends `msg` unnumbered.
    pub async fn send(&mut self, msg: client_message::Msg) -> Result<(), tungstenite::Error> {
        self.send_seq(0, msg).await
    }

    /// Sends `msg` with the next number and keeps it until acknowledged (`now`: local ms, for
    /// the keeping bound). On a cut socket it is lost and re-sent after a resume. Its number.
    pub async fn send_numbered(
        &mut self,
        msg: client_message::Msg,
        now: u64,
    ) -> Result<u64, tungstenite::Error> {
        let grace = u64::from(self.resume.grace_ms);
        let seq = self.resume.unacked.add(msg.clone(), now, grace);
        if !self.gone {
            self.send_seq(seq, msg).await?;
            self.resume.unacked.mark_sent(seq);
        }
        Ok(seq)
    }

    /// Waits up to `within` for the next event; `None` when nothing came.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        if self.gone {
            return Some(Event::Closed(None));
        }
        let deadline = deadline_in(within);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            let broken = |conn: &mut Connection, why: String| {
                conn.gone = true;
                Some(Event::Broken(why))
            };
            match next {
                Some(Ok(Message::Binary(b))) => {
                    self.read_since_send = self.read_since_send.saturating_add(b.len());
                    let Ok(msg) = ServerMessage::decode(&b[..]) else {
                        return broken(
                            self,
                            "the server sent a frame that is not a ServerMessage".into(),
                        );
                    };
                    let Some(body) = msg.msg else {
                        return broken(self, "the server sent an empty ServerMessage".into());
                    };
                    self.resume.saw(msg.seq, &body);
                    return Some(Event::Msg(body));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.gone = true;
                    return Some(Event::Closed(frame));
                }
                Some(Ok(Message::Text(t))) => {
                    let head: String = t.chars().take(80).collect();
                    return broken(self, format!("the server sent a text frame: {head}"));
                }
                Some(Ok(_)) => continue, // pings are answered by tungstenite
                Some(Err(e)) => return broken(self, e.to_string()),
                None => {
                    self.gone = true;
                    return Some(Event::Closed(None));
                }
            }
        }
    }

    /// Loses the connection as a network does: the TCP connection goes without a WebSocket
    /// close frame (the server sees an abnormal close). The resume state stays.
    pub fn cut(&mut self) {
        #[cfg(unix)]
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown(2) on a descriptor this stream owns and keeps open.
            unsafe { libc::shutdown(tcp.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.gone = true;
    }

    /// Says goodbye: a 1000 close (without a code the room would keep the place for a resume),
    /// then reads until the server's close (at most 2 s), so the room sees a clean disconnect.
    pub async fn close(mut self) {
        // The close frame waits behind what is unsent: bounded too (a server that stopped
        // reading gets no goodbye; dropping the socket then is the end).
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let closing = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close(Some(bye))).await;
        if closing.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Sends `Resume{token, last_seq}` on this (fresh) connection and waits for the answer,
    /// skipping other messages; once `Resumed`, re-sends in order what is unacknowledged
    /// ([`Connection::resend_unacked`]). `None` when the socket ended or nothing came within `within`.
    pub async fn resume_session(
        &mut self,
        within: Duration,
    ) -> Option<Result<proto::Resumed, proto::ResumeFailed>> {
        let resume = self.resume.resume_message();
        self.send(client_message::Msg::Resume(resume)).await.ok()?;
        let deadline = deadline_in(within);
        let answer = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Event::Msg(server_message::Msg::Resumed(r)) => break Ok(r),
                Event::Msg(server_message::Msg::ResumeFailed(f)) => break Err(f),
                Event::Msg(_) => continue,
                _ => return None,
            }
        };
        if answer.is_ok() {
            // This layer keeps no clock estimate: the local clock stands for the server's.
            self.resend_unacked(crate::clock::now_ms() as u64)
                .await
                .ok()?;
        }
        Some(answer)
    }

    /// Sends again, in order, what the room did not acknowledge (after a resume or a rejoin),
    /// as [`Unacked::resendable`] says (a note batch too old for the room's clock check keeps
    /// only its releases), marking each sent. `server_now`: the server's clock as estimated
    /// (ms). How many frames went.
    pub async fn resend_unacked(&mut self, server_now: u64) -> Result<u64, tungstenite::Error> {
        let again: Vec<_> = self
            .resume
            .unacked
            .iter()
            .map(|k| (k.seq, Unacked::resendable(k, server_now)))
            .collect();
        let mut sent = 0;
        for (seq, msg) in again {
            if let Some(msg) = msg {
                self.send_seq(seq, msg).await?;
                sent += 1;
            }
            self.resume.unacked.mark_sent(seq);
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_errors_are_capped_keeping_the_first() {
        let mut errors = Vec::new();
        for code in 0..100 {
            keep_error(&mut errors, code);
        }
        assert_eq!(errors.len(), MAX_EARLY_ERRORS);
        assert_eq!(errors[0], 0);
        assert_eq!(errors[MAX_EARLY_ERRORS - 1], MAX_EARLY_ERRORS as i32 - 1);
    }
}
