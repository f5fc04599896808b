//! The fallback as a public server (issue 13, item 8): the client IP behind `TRUSTED_PROXIES`,
//! header/body/idle timeouts, connection caps. Real processes, raw sockets; every assertion is
//! on counts, status codes and closes (the waits are generous deadlines, not measurements).

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status codes of `n` guest sign-ins, each with its own `X-Forwarded-For` value.
async fn guest_statuses(r: &Replica, xff: impl Fn(usize) -> String, n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for i in 0..n {
        let status = client
            .post(r.http("/api/auth/guest"))
            .header("x-forwarded-for", xff(i))
            .json(&serde_json::json!({ "name": "Spoofer" }))
            .send()
            .await
            .expect("POST /api/auth/guest")
            .status()
            .as_u16();
        out.push(status);
    }
    out
}

fn count(statuses: &[u16], code: u16) -> usize {
    statuses.iter().filter(|s| **s == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_does_not_escape_the_auth_limit() {
    // Default: nobody is trusted, the header is ignored: 30 tokens, 30 different "addresses".
    let dir = scratch_dir("xff-none");
    let limit = ("AUTH_RATE_LIMIT_PER_MINUTE", "10".to_owned());
    let r = Replica::start(
        "xff-none",
        &[("DATA_DIR", dir.display().to_string()), limit.clone()],
    );
    let s = guest_statuses(&r, |i| format!("10.0.{i}.1"), 30).await;
    assert_eq!((count(&s, 200), count(&s, 429)), (10, 20), "{s:?}");
    drop(r);

    // Behind one proxy (this test client plays it): the rightmost entry is the client, so
    // whatever the client wrote to the left of it does not count.
    let dir = scratch_dir("xff-hop");
    let r = Replica::start(
        "xff-hop",
        &[
            ("DATA_DIR", dir.display().to_string()),
            limit.clone(),
            ("TRUSTED_PROXIES", "1".to_owned()),
        ],
    );
    let s = guest_statuses(&r, |i| format!("10.0.{i}.1, 203.0.113.5"), 30).await;
    assert_eq!((count(&s, 200), count(&s, 429)), (10, 20), "{s:?}");
    // Another client behind the same proxy has its own budget: the header is used.
    let s = guest_statuses(&r, |_| "198.51.100.7".to_owned(), 1).await;
    assert_eq!(s, [200]);
    drop(r);

    // Trusted proxies by CIDR: hops inside are skipped from the right.
    let dir = scratch_dir("xff-cidr");
    let r = Replica::start(
        "xff-cidr",
        &[
            ("DATA_DIR", dir.display().to_string()),
            limit,
            ("TRUSTED_PROXIES", "127.0.0.0/8, 10.0.0.0/8".to_owned()),
        ],
    );
    let s = guest_statuses(&r, |i| format!("192.0.2.{i}, 203.0.113.9, 10.1.1.1"), 30).await;
    assert_eq!((count(&s, 200), count(&s, 429)), (10, 20), "{s:?}");
}

/// Sends `prefix`, then one more header byte every 200 ms; `true` once the server closed the
/// connection (EOF, reset, or a refused write) within `within`.
async fn trickle_until_closed(port: u16, within: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .is_err()
    {
        return true;
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 512];
    while tokio::time::Instant::now() < deadline {
        if s.write_all(b"a").await.is_err() {
            return true;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 before the close is fine too; keep reading until the end.
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_all_closed_by_the_header_timeout() {
    let dir = scratch_dir("slowloris");
    let r = Replica::start(
        "slowloris",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("HTTP_HEADER_TIMEOUT_SECS", "2".to_owned()),
            // This test is about the timeout, not the per-IP cap (every socket is loopback).
            ("MAX_CONNECTIONS_PER_IP", "10000".to_owned()),
        ],
    );
    let tasks: Vec<_> = (0..300)
        .map(|_| tokio::spawn(trickle_until_closed(r.port, Duration::from_secs(30))))
        .collect();
    let mut closed = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "every slowloris socket is closed");
    let m = metrics(&r).await;
    let timeouts: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("piano_http_header_timeouts_total ")?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(timeouts >= 300, "counted: {timeouts}");

    // A kept-alive connection idle after its answer is closed on the same clock.
    let mut s = TcpStream::connect(("127.0.0.1", r.port))
        .await
        .expect("tcp");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle keep-alive connection was closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // The server still serves.
    assert!(
        blocking_get(r.port, "/healthz")
            .expect("GET")
            .contains("ok")
    );
    // Headers past 32 KiB are refused, not buffered.
    let mut s = TcpStream::connect(("127.0.0.1", r.port))
        .await
        .expect("tcp");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
}

/// Opens a TCP connection and reads what comes within `wait`: `(answer, closed)`.
async fn probe(port: u16, wait: Duration) -> (TcpStream, String, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut closed = false;
    let _ = tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (s, String::from_utf8_lossy(&got).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_ip_and_in_total() {
    let dir = scratch_dir("caps");
    let r = Replica::start(
        "caps",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("MAX_CONNECTIONS_PER_IP", "5".to_owned()),
            ("HTTP_HEADER_TIMEOUT_SECS", "60".to_owned()),
        ],
    );
    // Five idle connections are held open...
    let mut held = Vec::new();
    for _ in 0..5 {
        let (s, answer, closed) = probe(r.port, Duration::from_millis(300)).await;
        assert!(!closed && answer.is_empty(), "held: {answer:?}");
        held.push(s);
    }
    // ...the sixth is answered 429 too_many_connections and closed.
    let (_, answer, closed) = probe(r.port, Duration::from_secs(5)).await;
    assert!(closed, "the sixth connection is closed");
    assert!(
        answer.starts_with("HTTP/1.1 429") && answer.contains("too_many_connections"),
        "{answer}"
    );
    // One goes: a new one is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s, _, closed) = probe(r.port, Duration::from_millis(100)).await;
    assert!(!closed);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    drop(held);
    drop(r);

    // The replica's total.
    let dir = scratch_dir("caps-total");
    let r = Replica::start(
        "caps-total",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("MAX_CONNECTIONS", "3".to_owned()),
            ("HTTP_HEADER_TIMEOUT_SECS", "60".to_owned()),
        ],
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(probe(r.port, Duration::from_millis(300)).await.0);
    }
    let (_, answer, closed) = probe(r.port, Duration::from_secs(5)).await;
    assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_capped_per_ip_and_idle_ones_closed() {
    let dir = scratch_dir("ws-caps");
    let r = Replica::start(
        "ws-caps",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("MAX_WEBSOCKETS_PER_IP", "3".to_owned()),
            ("WS_IDLE_TIMEOUT_SECS", "2".to_owned()),
        ],
    );
    let (token, _) = guest(&r, "Many").await;
    let mut players = Vec::new();
    for i in 0..3 {
        let url = r.ws_url(&format!("caps-{i}"), &token);
        players.push(Player::connect(&url).await.expect("connect"));
    }
    match tokio_tungstenite::connect_async(r.ws_url("caps-x", &token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                    .expect("JSON error");
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("the fourth socket is refused: {:?}", other.map(|_| ())),
    }

    // Idle: a socket that reads (and so answers the server's pings) stays...
    let mut active = players.pop().expect("a player");
    assert_eq!(
        active.closed(Duration::from_secs(7)).await,
        None,
        "still open"
    );
    // ...one that never reads (no pongs) is closed with 1001.
    drop(players);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = silent_close_code(r.port, &r.ws_url("caps-idle", &token)).await;
    assert_eq!(code, Some(1001), "closed as idle");
    let m = metrics(&r).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("piano_websocket_idle_closes_total ") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_bodies_are_capped_while_streaming_and_timed() {
    let dir = scratch_dir("bodies");
    let r = Replica::start(
        "bodies",
        &[
            ("DATA_DIR", dir.display().to_string()),
            ("HTTP_BODY_TIMEOUT_SECS", "1".to_owned()),
        ],
    );
    let read_answer = |mut s: TcpStream| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            return;
                        }
                    }
                }
            }
        })
        .await;
        String::from_utf8_lossy(&got).into_owned()
    };
    for path in ["/api/auth/logout", "/api/auth/login", "/api/auth/guest"] {
        // A chunked body that would never end: 413 once 4 KiB have come, without the rest.
        let mut s = TcpStream::connect(("127.0.0.1", r.port))
            .await
            .expect("tcp");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        for _ in 0..5 {
            let chunk = format!("400\r\n{}\r\n", "a".repeat(1024));
            s.write_all(chunk.as_bytes()).await.expect("chunk");
        }
        let answer = read_answer(s).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");

        // A declared length over the cap: refused before any of it is read.
        let mut s = TcpStream::connect(("127.0.0.1", r.port))
            .await
            .expect("tcp");
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("head");
        let answer = read_answer(s).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");

        // A body that stops coming: 408.
        let mut s = TcpStream::connect(("127.0.0.1", r.port))
            .await
            .expect("tcp");
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"a\"");
        s.write_all(head.as_bytes()).await.expect("head");
        let answer = read_answer(s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
    }
}

/// Opens a WebSocket that never writes after the upgrade request (no pongs, no close reply),
/// waits 5 s, and returns the close code among the frames the server sent. Raw bytes, because
/// a WebSocket client answers pings on its next read: once the server has closed, that write
/// meets a reset, which may hide the close frame behind an error.
async fn silent_close_code(port: u16, url: &str) -> Option<u16> {
    let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}"))?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.ok()?;
    // Not reading for a while: its pings go unanswered.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    assert!(got.starts_with(b"HTTP/1.1 101"), "upgraded");
    // Server frames are unmasked: opcode, length (7 bits, or 16/64 more), payload.
    let mut frames = &got[head_end..];
    while frames.len() >= 2 {
        let opcode = frames[0] & 0x0f;
        let (len, skip) = match frames[1] & 0x7f {
            126 if frames.len() >= 4 => (u16::from_be_bytes([frames[2], frames[3]]) as usize, 4),
            127 if frames.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&frames[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n @ 0..=125 => (n as usize, 2),
            _ => return None,
        };
        let payload = frames.get(skip..skip + len)?;
        if opcode == 8 && payload.len() >= 2 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        frames = &frames[skip + len..];
    }
    None
}
