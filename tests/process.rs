//! The one process helper of every test that starts real servers: the e2e targets
//! ([`crate::Server`]), the backend stack ([`crate::stack`]) and the fallback's own integration
//! tests (`k8s-fallback/tests/common`). Each child runs in its own process group, is stopped
//! with its whole group, and dies with the test process (`PR_SET_PDEATHSIG`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Where server logs are kept after a run (under target/, git-ignored), for post-mortems.
pub fn log_dir() -> PathBuf {
    let dir = crate::repo_root().join("target/e2e-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A log file opened for appending, as stdout and stderr of a child.
pub fn log_to(cmd: &mut Command, path: &Path) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts `cmd` in its own process group, tied to this test process: if the tests die, the
/// kernel sends the child SIGTERM (`PR_SET_PDEATHSIG`).
pub fn spawn_guarded(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to signal the child when
    // this test process dies, so a crashed test run leaves no server behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    // The kernel sends PR_SET_PDEATHSIG when the *thread* that forked exits, and test
    // threads come and go: fork from a thread that lives as long as the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread vanished"))?
}

/// Stops a child started by [`spawn_guarded`] and everything in its process group: SIGTERM,
/// up to 5 s of grace, then SIGKILL.
pub fn stop_group(child: &mut Child) {
    let pgid = child.id() as i32;
    // SAFETY: signals our own child's process group; no memory is touched.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(child);
}

/// `kill -9` of a child started by [`spawn_guarded`] and its process group: a crash, not a
/// shutdown.
pub fn kill_group(child: &mut Child) {
    // SAFETY: signals our own child's process group; no memory is touched.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

/// Waits until something accepts TCP connections on `port`, or `within` passes.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Status and body of a plain blocking `GET`, for readiness polling before any runtime exists.
pub fn blocking_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    // A server may keep the connection open after the body: what came before the timeout counts.
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET path` on `port` until it answers 200; panics with `log`'s tail when `child`
/// exits first or `within` passes.
pub fn wait_ok(port: u16, path: &str, within: Duration, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, _)) = blocking_get(port, path) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited ({status}) before it was ready:\n{}",
                log.display(),
                tail(log, 60)
            );
        }
        assert!(
            Instant::now() < deadline,
            "not ready after {within:?}:\n{}",
            tail(log, 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `redis-server` on a free loopback port.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// In memory only (`--save '' --appendonly no`).
    pub fn start() -> Redis {
        Redis::start_on(free_port(), None)
    }

    /// With an append-only file in `dir` (fsync always), so a restart keeps what was written.
    pub fn start_on(port: u16, aof_dir: Option<&Path>) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match aof_dir {
            Some(dir) => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                    .arg(dir);
            }
            None => {
                cmd.args(["--appendonly", "no"]);
            }
        }
        log_to(&mut cmd, &log_dir().join(format!("redis-{port}.log")));
        let child = spawn_guarded(cmd).expect("start redis-server");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "redis-server did not listen on {port}"
        );
        Redis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Listens on a free loopback port and sends each TCP connection to the next backend in turn
/// (so a trial's players land on every replica); lives as long as the process.
pub fn balancer(backends: Vec<u16>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind balancer");
    let port = listener.local_addr().expect("balancer address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("balancer runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let next = AtomicUsize::new(0);
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    });
    port
}
