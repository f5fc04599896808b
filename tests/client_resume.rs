//! The tests' client as docs/resume.md §5 describes one, on the client crate: the connection
//! keeps the resume state (`Connection::resume`: the highest `ServerMessage.seq`, the latest
//! token, the numbered messages kept until acknowledged); here the trials' panicking
//! conveniences: numbered sends, a new socket like the old one, `Resume`.

use crate::{Client, proto};
use piano_client::ConnectError;
use piano_core::proto::client_message;

impl Client {
    /// Sends `msg` numbered with `seq` as given (a client re-sending on purpose).
    pub async fn send_seq(&mut self, seq: u64, msg: client_message::Msg) {
        self.conn.send_seq(seq, msg).await.expect("websocket send");
    }

    /// Sends `msg` with the next number and keeps it until acknowledged. On a cut socket it is
    /// lost (as on a dead connection) and re-sent by [`Client::resume`]. Returns its number.
    pub async fn send_numbered(&mut self, msg: client_message::Msg) -> u64 {
        self.conn
            .send_numbered(msg, crate::now_ms())
            .await
            .expect("websocket send")
    }

    /// A new socket to the same room as the same user, with this client's resume state (the
    /// old socket is left as it is: a half-open connection the server may not know is gone).
    pub async fn reconnect(&self) -> Client {
        self.try_reconnect().await.expect("reconnect")
    }

    /// [`Client::reconnect`], with the server's refusal (a room moving between replicas).
    pub async fn try_reconnect(&self) -> Result<Client, crate::Refused> {
        match self.conn.redial().await {
            Ok(conn) => Ok(Client { conn }),
            Err(ConnectError::Refused { status, body }) => Err(crate::Refused { status, body }),
            Err(e) => panic!("reconnect to {}: {e}", self.conn.dial.url),
        }
    }

    /// After [`piano_client::Connection::cut`], a close (a drain's 1012) or on a fresh
    /// [`Client::reconnect`]: opens a new socket if the old one is gone, sends
    /// `Resume{token, last_seq}` and, once `Resumed`, re-sends in order what is
    /// unacknowledged. The replayed messages follow; read them with `recv`.
    pub async fn resume(&mut self) -> Result<proto::Resumed, proto::ResumeFailed> {
        self.try_resume()
            .await
            .expect("the server answered the resume")
    }

    /// [`Client::resume`]; `None` when the server refused the socket or closed it before it
    /// answered (a room moving between replicas: try again).
    pub async fn try_resume(&mut self) -> Option<Result<proto::Resumed, proto::ResumeFailed>> {
        if self.conn.is_gone() {
            *self = self.try_reconnect().await.ok()?;
        }
        self.conn.resume_session(crate::RECV_TIMEOUT).await
    }
}
