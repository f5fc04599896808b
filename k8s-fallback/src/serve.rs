//! The accept loop: HTTP/1.1 through hyper with the limits a public server needs, which
//! `axum::serve` does not set.
//!
//! - **Header timeout** (`HTTP_HEADER_TIMEOUT_SECS`): hyper's `header_read_timeout`, whose clock
//!   starts when the connection is ready for a request (new, or idle after a response), so it is
//!   also the keep-alive idle limit. A slowloris client sending headers byte by byte is closed
//!   when it runs out, whatever it sends.
//! - **Connection caps**: `MAX_CONNECTIONS` open TCP connections per replica (beyond: 503 and
//!   close), `MAX_CONNECTIONS_PER_IP` per client network among peers that are not trusted proxies
//!   (beyond: 429 and close). A WebSocket keeps its connection's slot ([`ConnSlot`] travels into
//!   the socket's task), so upgraded connections count too.
//! - Graceful shutdown: when `shutdown` resolves, no more accepts; every connection is told to
//!   finish its current request, and the loop waits (bounded) for them.
//! - **Lingering close** ([`Lingering`]): after an answer given before the request was all read
//!   (413 for an oversized body), what the client still sends is read and dropped for a while.

use crate::client_ip::{TrustedProxies, network_of};
use crate::metrics::METRICS;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// How long, and how much, a closing connection's input is drained ([`Lingering`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Counts open connections in total and per client network.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place in [`ConnLimits`]; released when the last clone is dropped.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    /// The network counted per IP (`None`: a trusted proxy, or only the total applies).
    network: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            state: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a slot for a connection from `ip` (`None`: counted in the total only).
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnSlot, Refused> {
        let network = ip.map(network_of);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 >= self.max_total {
            return Err(Refused::Total);
        }
        if let Some(n) = network {
            let count = st.1.entry(n).or_insert(0);
            if *count >= self.max_per_ip {
                return Err(Refused::PerIp);
            }
            *count += 1;
        }
        st.0 += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            network,
        })
    }

    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut st = self.limits.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = self.network
            && let Some(count) = st.1.get_mut(&n)
        {
            *count -= 1;
            if *count == 0 {
                // The map holds only networks with open connections: it cannot grow past
                // `MAX_CONNECTIONS` entries.
                st.1.remove(&n);
            }
        }
    }
}

pub struct Settings {
    pub header_timeout: Duration,
    pub trusted: TrustedProxies,
    pub drain_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Arc<ConnLimits>,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = Arc::new(settings);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Note batches are small frames sent at once: without TCP_NODELAY, Nagle's algorithm
        // held them ~40 ms (fan-out p99 38 ms against the baseline's 0.7 ms, `bench fanout`).
        let _ = stream.set_nodelay(true);
        let per_ip = (!settings.trusted.trusts_peer(peer.ip())).then_some(peer.ip());
        let slot = match limits.acquire(per_ip) {
            Ok(s) => Arc::new(s),
            Err(why) => {
                refuse(stream, why);
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            slot,
            app.clone(),
            settings.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    while limits.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Over a cap: a short JSON answer if the socket takes it at once, then close.
fn refuse(stream: tokio::net::TcpStream, why: Refused) {
    let (status, code, message, counter) = match why {
        Refused::Total => (
            "503 Service Unavailable",
            "server_busy",
            "this server holds as many connections as it may: try again later",
            &METRICS.refused_total,
        ),
        Refused::PerIp => (
            "429 Too Many Requests",
            "too_many_connections",
            "your network holds as many connections to this server as it may",
            &METRICS.refused_per_ip,
        ),
    };
    counter.fetch_add(1, Relaxed);
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 10\r\n\r\n{body}",
        body.len()
    );
    // Never waits: a fresh socket's send buffer takes this whole; if not, it just closes.
    let _ = stream.try_write(answer.as_bytes());
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Arc<ConnSlot>,
    app: axum::Router,
    settings: Arc<Settings>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slot_for_linger = slot.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        // The WebSocket handler keeps a clone: the slot lives as long as the socket.
        req.extensions_mut().insert(slot.clone());
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        // Requests here are small (a token in the query is the largest part): 32 KiB of request
        // line and headers is plenty, and bounds what a half-sent request holds (hyper's
        // defaults are ~400 KiB of buffer and no header-size cap); more is answered 431.
        .max_buf_size(64 * 1024)
        .max_header_size(32 * 1024)
        .keep_alive(true);
    let io = Lingering {
        stream: Some(stream),
        slot: slot_for_linger,
    };
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async move {
        // Only the fact matters (the guard it returns must not live across an await).
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            METRICS.header_timeouts.fetch_add(1, Relaxed);
        }
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// The connection's socket, closed the way nginx's `lingering_close` does. When hyper (or the
/// WebSocket that took the socket over) is done with it, the client may still be sending: a
/// body refused early (413 while it streams). Closed at once, the socket resets every later
/// segment, and a proxy in front that is still forwarding the body fails its write and drops
/// the connection before it passes the answer on (nginx answers 502 there; the tests'
/// balancer lost the 413). So the write side is shut first (the answer, then FIN) and the
/// input read and dropped for at most [`LINGER`] and [`LINGER_BYTES`] before the socket
/// closes. The connection keeps its slot in the caps meanwhile.
struct Lingering {
    /// Always `Some` until dropped.
    stream: Option<TcpStream>,
    slot: Arc<ConnSlot>,
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Ok(0)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut stream), Ok(rt)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let slot = self.slot.clone();
        rt.spawn(async move {
            let _ = stream.shutdown().await;
            let mut sink = vec![0u8; 16 * 1024];
            let mut drained = 0;
            let _ = tokio::time::timeout(LINGER, async {
                while drained < LINGER_BYTES {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            })
            .await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_network_and_release_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "1.2.3.4".parse().unwrap();
        let b: IpAddr = "5.6.7.8".parse().unwrap();
        let s1 = limits.acquire(Some(a)).unwrap();
        let _s2 = limits.acquire(Some(a)).unwrap();
        assert_eq!(limits.acquire(Some(a)).err(), Some(Refused::PerIp));
        let _s3 = limits.acquire(Some(b)).unwrap();
        assert_eq!(limits.acquire(None).err(), Some(Refused::Total));
        drop(s1);
        let _s4 = limits.acquire(Some(a)).unwrap();
        assert_eq!(limits.open(), 3);
    }
}
