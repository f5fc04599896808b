//! The baseline: a minimal tokio WebSocket broadcast server with no room logic. A connection to
//! `/<room>` receives every data frame (binary, or text in the MPP mode) any other connection of that room sends, as is. It
//! shows the fan-out this machine can do at all, and the least memory a connection needs, so
//! the real servers are judged against it.

// tungstenite's handshake callback returns its (large) HTTP error response type; ours never errs.
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>>;

/// Lean buffers, so the baseline is also the floor for memory per connection: tungstenite's
/// default 128 KiB read buffer is zero-filled up to its capacity on the first read, so it is
/// all resident; 4 KiB holds any note batch.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind baseline");
    let addr = listener.local_addr().expect("baseline address");
    let rooms: Rooms = Arc::default();
    tokio::spawn(async move {
        let mut next_id = 0u64;
        while let Ok((stream, _)) = listener.accept().await {
            // As any real-time server does: no Nagle delay on small frames.
            let _ = stream.set_nodelay(true);
            next_id += 1;
            let id = next_id;
            let rooms = rooms.clone();
            tokio::spawn(async move {
                let mut path = String::new();
                let ws = tokio_tungstenite::accept_hdr_async_with_config(
                    stream,
                    |req: &Request, resp: Response| {
                        path = req.uri().path().to_owned();
                        Ok(resp)
                    },
                    Some(config()),
                )
                .await;
                let Ok(ws) = ws else { return };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
                if let Ok(mut r) = rooms.lock() {
                    r.entry(path.clone()).or_default().push((id, tx));
                }
                // What is queued behind a frame goes out in the same write (one flush per
                // burst), as the fallback's writer does: the floor is the best a bare server
                // does, not one syscall per frame.
                let writer = tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        let more = !rx.is_empty();
                        if sink.feed(m).await.is_err() || (!more && sink.flush().await.is_err()) {
                            break;
                        }
                    }
                });
                while let Some(Ok(msg)) = stream.next().await {
                    // Encoded once (the client's frame: binary, or text in the MPP mode),
                    // handed to every other member.
                    if (msg.is_binary() || msg.is_text())
                        && let Ok(r) = rooms.lock()
                    {
                        for (other, tx) in r.get(&path).into_iter().flatten() {
                            if *other != id {
                                let _ = tx.send(msg.clone());
                            }
                        }
                    }
                }
                if let Ok(mut r) = rooms.lock()
                    && let Some(v) = r.get_mut(&path)
                {
                    v.retain(|(other, _)| *other != id);
                }
                writer.abort();
            });
        }
    });
    addr
}
