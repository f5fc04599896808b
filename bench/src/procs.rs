//! The server processes under test, seen through `/proc`: which process listens on a port, its
//! process group, resident memory (`VmRSS`), and this process's file-descriptor limit.

use std::path::Path;

/// Raises this process's `RLIMIT_NOFILE` (children inherit it): the soft limit to the hard
/// limit, and where the process may (root, `CAP_SYS_RESOURCE`) both up to `fs.nr_open` (at most
/// 262,144), since `wrangler dev`'s workerd holds several descriptors per WebSocket and dies at
/// the limit ("accept: Too many open files"). Returns (new soft limit, previous hard limit).
pub fn raise_fd_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (0, 0);
    }
    let hard = lim.rlim_max;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    for want in [nr_open.min(262_144).max(hard), hard] {
        let l = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } == 0 {
            return (want, hard);
        }
    }
    (lim.rlim_cur, hard)
}

/// `VmRSS` of a process in KiB (`None` when it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The summed `VmRSS` of several processes, in KiB.
pub fn total_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_kib(*p)).sum()
}

/// The process that has a listening TCP socket on 127.0.0.1:`port` (or any address).
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = f.get(1)?.rsplit(':').next()?;
                let listening = f.get(3) == Some(&"0A");
                (listening && u16::from_str_radix(local_port, 16).ok() == Some(port))
                    .then(|| f.get(9).map(|s| s.to_string()))
                    .flatten()
            })
        })?;
    let wanted = format!("socket:[{inode}]");
    pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .map(|l| l.as_os_str() == wanted.as_str())
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// (command name, process group) of a process.
fn comm_and_group(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // After the name: state, ppid, pgrp.
    let pgrp = stat[close + 1..].split_whitespace().nth(2)?.parse().ok()?;
    Some((comm, pgrp))
}

/// Every process named `comm` in the process group of `pid` (wrangler dev's workerd processes
/// are in the group the harness started wrangler in).
pub fn group_members_named(pid: u32, comm: &str) -> Vec<u32> {
    let Some((_, group)) = comm_and_group(pid) else {
        return Vec::new();
    };
    pids()
        .into_iter()
        .filter(|p| comm_and_group(*p).is_some_and(|(c, g)| g == group && c == comm))
        .collect()
}

pub fn describe(pid: u32) -> String {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| {
            Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    format!("{exe}[{pid}]")
}

/// CPU time (user + system, every thread) a process has used, in seconds (`None` when it is
/// gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the name: state is field 3, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}
