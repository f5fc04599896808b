//! In-process TCP proxies for the fidelity scenario, one per client, between it and the server:
//! plain, with jitter (each chunk read is held `mean ± spread` ms, each direction on its own,
//! never before the chunk read ahead of it: a TCP stream's bytes keep their order), and
//! cuttable (`cut()` resets every connection it carries at once: RST both ways, no close frame,
//! as a network failure would; new connections pass).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Jitter {
    pub mean_ms: f64,
    pub spread_ms: f64,
}

pub struct Proxy {
    pub port: u16,
    cuts: watch::Sender<u64>,
    /// Connections reset by `cut()`.
    pub resets: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a port of its own and forwards every connection to `upstream` (host:port).
    pub async fn start(upstream: String, jitter: Option<Jitter>, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let (cuts, cut_rx) = watch::channel(0u64);
        let resets = Arc::new(AtomicU64::new(0));
        let resets2 = resets.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut cut_rx, resets) = (cut_rx.clone(), resets2.clone());
                cut_rx.mark_unchanged();
                let seed = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                tokio::spawn(async move {
                    if carry(client, server, jitter, seed, &mut cut_rx).await {
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Proxy {
            port,
            cuts,
            resets,
            task,
        }
    }

    /// Resets every connection open now.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// `url` (ws://host:port/path) through this proxy.
    pub fn url(&self, url: &str) -> String {
        let rest = url.strip_prefix("ws://").unwrap_or(url);
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

/// host:port of a ws:// URL.
pub fn upstream_of(url: &str) -> String {
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// One chunk's wait: `mean ± spread` ms, uniform (xorshift64; 0 without jitter).
fn delay(jitter: Option<Jitter>, rng: &mut u64) -> Duration {
    let Some(j) = jitter else {
        return Duration::ZERO;
    };
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let u = (*rng >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    Duration::from_micros(((j.mean_ms + u * j.spread_ms).max(0.0) * 1000.0) as u64)
}

/// Carries one connection both ways until either side ends it (true) or a cut resets it
/// (false). Each chunk read is written at its deadline, never before the chunk read ahead of
/// it in the same direction.
async fn carry(
    mut client: TcpStream,
    mut server: TcpStream,
    jitter: Option<Jitter>,
    seed: u64,
    cut: &mut watch::Receiver<u64>,
) -> bool {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut rng = seed | 1;
    let cut_now = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let (mut up, mut down) = (VecDeque::<(Instant, Vec<u8>)>::new(), VecDeque::new());
        let (mut cbuf, mut sbuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            let up_at = up.front().map(|(at, _)| *at).unwrap_or(far);
            let down_at = down.front().map(|(at, _)| *at).unwrap_or(far);
            tokio::select! {
                _ = cut.changed() => break true,
                r = cr.read(&mut cbuf) => match r {
                    Ok(n) if n > 0 => {
                        let at = (Instant::now() + delay(jitter, &mut rng))
                            .max(up.back().map(|(at, _)| *at).unwrap_or(up_at.min(Instant::now())));
                        up.push_back((at, cbuf[..n].to_vec()));
                    }
                    _ => break false,
                },
                r = sr.read(&mut sbuf) => match r {
                    Ok(n) if n > 0 => {
                        let at = (Instant::now() + delay(jitter, &mut rng))
                            .max(down.back().map(|(at, _)| *at).unwrap_or(down_at.min(Instant::now())));
                        down.push_back((at, sbuf[..n].to_vec()));
                    }
                    _ => break false,
                },
                _ = tokio::time::sleep_until(up_at), if !up.is_empty() => {
                    if let Some((_, chunk)) = up.pop_front() && sw.write_all(&chunk).await.is_err() {
                        break false;
                    }
                }
                _ = tokio::time::sleep_until(down_at), if !down.is_empty() => {
                    if let Some((_, chunk)) = down.pop_front() && cw.write_all(&chunk).await.is_err() {
                        break false;
                    }
                }
            }
        }
    };
    if cut_now {
        // Linger 0: closing sends RST, both ways, as a failed network path would end it.
        #[allow(deprecated)]
        {
            let _ = client.set_linger(Some(Duration::ZERO));
            let _ = server.set_linger(Some(Duration::ZERO));
        }
    }
    cut_now
}
