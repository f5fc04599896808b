//! The tests' client as docs/resume.md §5 describes one: it remembers the highest
//! `ServerMessage.seq` it received and its latest resume token, numbers what it would re-send
//! (`ClientMessage.seq`) and keeps it until acknowledged; it can lose its connection the way a
//! network does (no close frame) and come back with `Resume`.

use crate::{Client, proto};
use piano_core::proto::{ClientMessage, client_message, server_message};
use prost::Message as _;
use std::collections::VecDeque;
use tokio_tungstenite::tungstenite::Message;

/// A client's resume state (`Client::resume`).
#[derive(Debug, Clone, Default)]
pub struct Resuming {
    /// Where and how the socket was opened, to open another one like it (a test may point it
    /// at another replica).
    pub url: String,
    pub(crate) headers: Vec<(String, String)>,
    /// The latest resume token (`Joined` / `Resumed`); empty when the room gave none.
    pub token: String,
    /// The highest `ServerMessage.seq` received.
    pub last_seq: u64,
    /// Numbered messages not acknowledged yet (`Pong` / `Resumed.last_client_seq`), in order.
    pub unacked: VecDeque<(u64, client_message::Msg)>,
    next_seq: u64,
    /// The socket was cut or closed: what is sent now is lost, nothing more is read.
    pub cut: bool,
    /// Numbered messages that arrived with a seq not above the highest before (must stay 0).
    pub out_of_order: u32,
}

impl Resuming {
    pub(crate) fn new(url: &str, headers: &[(&str, &str)]) -> Resuming {
        Resuming {
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// Bookkeeping for every message received.
    pub(crate) fn saw(&mut self, seq: u64, msg: &server_message::Msg) {
        if seq != 0 {
            if seq <= self.last_seq {
                self.out_of_order += 1;
            }
            self.last_seq = self.last_seq.max(seq);
        }
        match msg {
            server_message::Msg::Joined(j) => {
                self.token = j.resume_token.clone();
                self.last_seq = self.last_seq.max(j.seq);
            }
            server_message::Msg::Resumed(r) => {
                self.token = r.resume_token.clone();
                self.ack(r.last_client_seq);
                if let Some(s) = &r.snapshot {
                    self.last_seq = self.last_seq.max(s.seq);
                }
            }
            server_message::Msg::Pong(p) => self.ack(p.last_client_seq),
            _ => {}
        }
    }

    fn ack(&mut self, upto: u64) {
        while self.unacked.front().is_some_and(|(s, _)| *s <= upto) {
            self.unacked.pop_front();
        }
    }
}

impl Client {
    /// Sends `msg` numbered with `seq` as given (a client re-sending on purpose).
    pub async fn send_seq(&mut self, seq: u64, msg: client_message::Msg) {
        let bytes = ClientMessage {
            msg: Some(msg),
            seq,
        }
        .encode_to_vec();
        self.send_raw(Message::Binary(bytes.into())).await;
    }

    /// Sends `msg` with the next number and keeps it until acknowledged. On a cut socket it is
    /// lost (as on a dead connection) and re-sent by [`Client::resume`]. Returns its number.
    pub async fn send_numbered(&mut self, msg: client_message::Msg) -> u64 {
        self.resume.next_seq += 1;
        let seq = self.resume.next_seq;
        self.resume.unacked.push_back((seq, msg.clone()));
        self.send_seq(seq, msg).await;
        seq
    }

    /// Loses the connection as a network does: the TCP connection goes without a WebSocket
    /// close frame (the server sees an abnormal close). The client keeps its resume state.
    pub fn cut(&mut self) {
        use std::os::fd::AsRawFd;
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            // SAFETY: shutdown(2) on a descriptor this stream owns and keeps open.
            unsafe { libc::shutdown(tcp.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.resume.cut = true;
    }

    /// A new socket to the same room as the same user, with this client's resume state (the
    /// old socket is left as it is: a half-open connection the server may not know is gone).
    pub async fn reconnect(&self) -> Client {
        self.try_reconnect().await.expect("reconnect")
    }

    /// [`Client::reconnect`], with the server's refusal (a room moving between replicas).
    pub async fn try_reconnect(&self) -> Result<Client, crate::Refused> {
        let headers: Vec<(&str, &str)> = self
            .resume
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut fresh = Client::connect(&self.resume.url, &headers).await?;
        fresh.resume = Resuming {
            cut: false,
            ..self.resume.clone()
        };
        Ok(fresh)
    }

    /// After [`Client::cut`], a close (a drain's 1012) or on a fresh [`Client::reconnect`]:
    /// opens a new socket if the old one is gone, sends `Resume{token, last_seq}` and, once
    /// `Resumed`, re-sends in order what is unacknowledged. The replayed messages follow; read
    /// them with `recv`.
    pub async fn resume(&mut self) -> Result<proto::Resumed, proto::ResumeFailed> {
        self.try_resume()
            .await
            .expect("the server answered the resume")
    }

    /// [`Client::resume`]; `None` when the server refused the socket or closed it before it
    /// answered (a room moving between replicas: try again).
    pub async fn try_resume(&mut self) -> Option<Result<proto::Resumed, proto::ResumeFailed>> {
        if self.resume.cut {
            *self = self.try_reconnect().await.ok()?;
        }
        let resume = proto::Resume {
            token: self.resume.token.clone(),
            last_seq: self.resume.last_seq,
        };
        self.send(client_message::Msg::Resume(resume)).await;
        let deadline = tokio::time::Instant::now() + crate::RECV_TIMEOUT;
        let answer = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                crate::Event::Msg(server_message::Msg::Resumed(r)) => break Ok(r),
                crate::Event::Msg(server_message::Msg::ResumeFailed(f)) => break Err(f),
                crate::Event::Msg(_) => continue,
                _ => return None,
            }
        };
        if answer.is_ok() {
            let again: Vec<_> = self.resume.unacked.iter().cloned().collect();
            for (seq, msg) in again {
                self.send_seq(seq, msg).await;
            }
        }
        Some(answer)
    }
}
