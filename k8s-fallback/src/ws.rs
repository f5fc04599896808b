//! One player's WebSocket: a reader (this task) that routes frames to the room, and a writer
//! task that drains the connection's bounded outbound queue. The two are split so a player who
//! stops reading can only fill its own queue (and be closed), never stall its room.

pub mod mpp;

use crate::cluster::replica_channel;
use crate::hub::{Hub, Route};
use crate::metrics::{METRICS, redis_error};
use crate::room_task::RoomMsg;
use crate::sockets::{Outbound, SERVICE_RESTART, SLOW_CONSUMER};
use crate::wire::Wire;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use piano_core::identity::Identity;
use piano_core::limits::close;
use piano_core::room::{ConnId, Protocol};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a closing connection waits for the client's half of the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a socket closed for falling behind (1013) is kept so its close frame can still
/// reach the client behind everything already in flight, should it start reading again. The
/// room has let it go at once; this only holds the socket (bounded).
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(30);

/// RFC 6455 "Going Away": the socket sent nothing, not even a pong to our pings, for
/// `WS_IDLE_TIMEOUT_SECS` (a dead peer, or one holding a socket open for nothing).
pub const IDLE_TIMEOUT: u16 = close::GOING_AWAY;

/// What the HTTP side learned about the connection before the upgrade.
pub struct ConnMeta {
    /// Its places in the per-network WebSocket cap and in the TCP connection caps; held for as
    /// long as the socket is open.
    pub slots: (crate::serve::ConnSlot, Option<Arc<crate::serve::ConnSlot>>),
}

/// Random ids below 2^53, like the edge's (they may pass through JavaScript numbers).
fn new_conn_id() -> ConnId {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return crate::now_us() & ((1 << 53) - 1);
    }
    u64::from_le_bytes(b) & ((1 << 53) - 1)
}

/// What a socket came for.
pub enum Entry {
    /// `/api/rooms/{name}/ws`: protobuf, in the room named at the upgrade.
    Room { room: String, identity: Identity },
    /// `/mpp`: MPP text frames; rooms come with `ch` ([`mpp`]).
    Mpp(mpp::MppSocket),
}

pub async fn serve(hub: Arc<Hub>, socket: WebSocket, mut entry: Entry, meta: ConnMeta) {
    // Held until the socket ends.
    let ConnMeta { slots: _slots } = meta;
    let conn = new_conn_id();
    let (tx, rx) = mpsc::channel(hub.cfg.outbound_queue);
    let (kill_tx, kill_rx) = oneshot::channel();
    let (mpp, protocol) = match entry {
        Entry::Mpp(_) => (true, Protocol::Mpp),
        Entry::Room { .. } => (false, Protocol::Protobuf),
    };
    // An MPP socket may be moved to another room by its room (`Effect::ChangeRoom`).
    let (moves_tx, mut moves) = mpsc::channel(1);
    hub.sockets
        .register(conn, tx, kill_tx, mpp.then_some(moves_tx), protocol);
    METRICS.connections.fetch_add(1, Relaxed);
    let (sink, mut stream) = socket.split();
    // The writer says when a kill (slow consumer) made it give up on the queue: the room must
    // not wait for the client to read its way to the close frame.
    let (gone_tx, mut gone_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, rx, kill_rx, gone_tx, mpp));
    let mut gone_heard = false;
    let mut slow_closed = false;

    let mut route = match &entry {
        Entry::Room { room, identity } => {
            match hub.attach(room, conn, identity, Protocol::Protobuf).await {
                Ok(r) => Some(r),
                Err((code, reason)) => {
                    tracing::info!(room, code, reason, "connection refused by placement");
                    hub.sockets.close(conn, code, reason);
                    None
                }
            }
        }
        Entry::Mpp(_) => None,
    };

    let mut writer_done = false;
    let grace = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
    tokio::pin!(grace);
    let idle = hub.cfg.ws_idle_timeout;
    let mut heard = tokio::time::Instant::now();
    let mut idle_check = tokio::time::interval(idle / 4);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle_check.tick().await;
    let mut idle_closed = false;
    // The client closed with 1000/1001: it left. Any other end of a socket we did not close
    // ourselves is a drop (docs/resume.md): the room keeps the player's place for a while.
    let mut goodbye = false;
    loop {
        tokio::select! {
            msg = stream.next() => {
                // Anything at all (a pong included) shows the peer is there.
                heard = tokio::time::Instant::now();
                let (data, binary) = match msg {
                    Some(Ok(Message::Binary(b))) => (b, true),
                    Some(Ok(Message::Text(t))) => (Bytes::copy_from_slice(t.as_str().as_bytes()), false),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        goodbye = frame.is_some_and(|f| is_goodbye(f.code));
                        break;
                    }
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(conn, error = %e, "websocket read failed");
                        if !lost_connection(e) {
                            // The WebSocket layer refused the frame (far over the size limit,
                            // or not WebSocket at all): close with the protocol's code.
                            hub.sockets.close(conn, close::FRAME_TOO_LARGE, "frame too large");
                        }
                        break;
                    }
                };
                if let Some(route) = &route {
                    forward(&hub, route, conn, data, binary).await;
                } else if let Entry::Mpp(m) = &mut entry {
                    route = m.on_frame(&hub, conn, &data).await;
                }
            }
            Some((room, frame)) = moves.recv(), if mpp => {
                // The old room has let the connection go already.
                route = None;
                hub.unfollow(conn);
                if let Entry::Mpp(m) = &mut entry {
                    route = m.enter(&hub, conn, room, frame).await;
                }
            }
            _ = &mut writer, if !writer_done => {
                // We closed (kick, drain, slow consumer): give the client a moment to answer.
                // A slow reader may still be reading its way to the close frame: dropping the
                // socket now would reset the connection and lose that frame, so it gets longer
                // (bounded; the room let it go already).
                writer_done = true;
                if !gone_heard {
                    // Whatever try_recv answers but "empty", the receiver is spent: polling it
                    // again would panic.
                    match gone_rx.try_recv() {
                        Err(oneshot::error::TryRecvError::Empty) => {}
                        Ok(()) => {
                            gone_heard = true;
                            slow_closed = true;
                            leave(&hub, route.take(), conn, false).await;
                        }
                        Err(oneshot::error::TryRecvError::Closed) => gone_heard = true,
                    }
                }
                let wait = if slow_closed { SLOW_CLOSE_WAIT } else { CLOSE_GRACE };
                grace.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            _ = &mut grace => break,
            gone = &mut gone_rx, if !gone_heard => {
                gone_heard = true;
                slow_closed = gone.is_ok();
                if slow_closed {
                    leave(&hub, route.take(), conn, false).await;
                }
            }
            _ = idle_check.tick(), if !writer_done && !idle_closed => {
                if heard.elapsed() >= idle {
                    METRICS.idle_closes.fetch_add(1, Relaxed);
                    idle_closed = true;
                    hub.sockets.close(conn, IDLE_TIMEOUT, "idle: nothing received, not even a pong");
                } else {
                    hub.sockets.ping(conn);
                }
            }
        }
    }

    let dropped = !goodbye && !hub.sockets.closing(conn);
    leave(&hub, route.take(), conn, dropped).await;
    hub.unregister(conn);
    if !writer_done {
        // The queue's sender is gone with the registration, so the writer ends by itself.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
        writer.abort();
    }
    METRICS.connections.fetch_sub(1, Relaxed);
}

/// A close code by which a client says it is leaving (any other is a drop).
fn is_goodbye(code: u16) -> bool {
    code == close::NORMAL || code == close::GOING_AWAY
}

/// Whether a read error is the connection going away (a reset, an end without a close frame)
/// rather than a frame the WebSocket layer refused.
fn lost_connection(e: axum::Error) -> bool {
    use tungstenite::error::{Error, ProtocolError};
    match e.into_inner().downcast::<Error>() {
        Ok(e) => matches!(
            *e,
            Error::Io(_)
                | Error::ConnectionClosed
                | Error::AlreadyClosed
                | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        ),
        Err(_) => false,
    }
}

/// Tells the room (here or on its replica) that the connection is gone: `dropped` when it
/// ended without a goodbye and without us closing it (the room may keep the player's place).
async fn leave(hub: &Hub, route: Option<Route>, conn: ConnId, dropped: bool) {
    match route {
        Some(Route::Local(tx)) => {
            let _ = tx.send(RoomMsg::Disconnect { conn, dropped }).await;
        }
        Some(Route::Remote { holder, room }) => {
            if let Some(c) = &hub.cluster {
                let msg = Wire::Disconnect {
                    room,
                    conn,
                    dropped,
                };
                if let Err(e) = c.publish(&replica_channel(&holder), msg.encode()).await {
                    redis_error("forwarding a disconnect", &e);
                }
            }
        }
        None => {}
    }
}

pub async fn forward(hub: &Hub, route: &Route, conn: ConnId, data: Bytes, binary: bool) {
    let at_us = crate::now_us();
    match route {
        Route::Local(tx) => {
            let _ = tx
                .send(RoomMsg::Frame {
                    conn,
                    data,
                    binary,
                    at_us,
                })
                .await;
        }
        Route::Remote { holder, room } => {
            let Some(c) = &hub.cluster else { return };
            let msg = Wire::Frame {
                room: room.clone(),
                conn,
                binary,
                at_us,
                data,
            };
            match c.publish(&replica_channel(holder), msg.encode()).await {
                Ok(n) if n > 0 => {}
                Ok(_) => {
                    // The holder is gone: free its lease so the reconnect restores the room.
                    c.release_if(room, holder).await;
                    hub.sockets
                        .close(conn, SERVICE_RESTART, "the room moved: reconnect");
                }
                Err(e) => {
                    redis_error("forwarding a frame", &e);
                    hub.sockets
                        .close(conn, SERVICE_RESTART, "the room is unavailable: reconnect");
                }
            }
        }
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    mut kill: oneshot::Receiver<(u16, String)>,
    gone: oneshot::Sender<()>,
    text: bool,
) {
    let mut killed = false;
    // A kill (slow consumer): the close goes after whatever the socket already holds.
    let mut slow_close = None;
    loop {
        let out = tokio::select! {
            biased;
            k = &mut kill, if !killed => match k {
                Ok(close) => {
                    slow_close = Some(close);
                    break;
                }
                Err(_) => { killed = true; continue; }
            },
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        match out {
            Outbound::Frame(b) => {
                // MPP sockets are sent MPP JSON (the room's frames for them), as text.
                let message = if text {
                    match Utf8Bytes::try_from(b) {
                        Ok(t) => Message::Text(t),
                        Err(_) => {
                            // Skipped; what was fed before it must still go out.
                            if rx.is_empty() && sink.flush().await.is_err() {
                                break;
                            }
                            continue;
                        }
                    }
                } else {
                    Message::Binary(b)
                };
                // Frames already queued behind this one go out in the same write: a busy
                // room's listener costs one syscall per burst, not one per frame.
                let more = !rx.is_empty();
                let write = async {
                    sink.feed(message).await?;
                    if !more {
                        sink.flush().await?;
                    }
                    Ok::<_, axum::Error>(())
                };
                // A socket that cannot take a frame within this long is as good as gone; a kill
                // (slow consumer) while the send is stuck ends the wait at once.
                let sent = tokio::select! {
                    r = tokio::time::timeout(Duration::from_secs(10), write) => match r {
                        Ok(r) => r.is_ok(),
                        Err(_) => {
                            // Stuck that long: a slow consumer, whether or not its queue filled.
                            METRICS.slow_consumers.fetch_add(1, Relaxed);
                            slow_close = Some((SLOW_CONSUMER, "too slow: reconnect".into()));
                            false
                        }
                    },
                    k = &mut kill, if !killed => {
                        slow_close = k.ok();
                        false
                    }
                };
                if !sent {
                    break;
                }
            }
            Outbound::Ping => {
                let ping = sink.send(Message::Ping(Bytes::new()));
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(10), ping).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
            Outbound::Close(code, reason) => {
                let frame = close_frame(code, reason, text);
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
                break;
            }
        }
    }
    if let Some((code, reason)) = slow_close {
        // The room lets the connection go now; its close frame waits (bounded) behind what the
        // socket already holds, so a client that reads again still learns why (1013).
        let _ = gone.send(());
        let frame = close_frame(code, reason, text);
        let _ = tokio::time::timeout(SLOW_CLOSE_WAIT, sink.send(frame)).await;
    }
}

/// The close frame for `code`; an MPP client (`mpp`) gets MPP's code for it, here where every
/// close of its socket passes (the room's and this host's own).
fn close_frame(code: u16, reason: String, mpp: bool) -> Message {
    let code = match mpp {
        true => piano_core::mpp::close::for_mpp(code),
        false => code,
    };
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
