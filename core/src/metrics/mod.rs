//! The one list of metrics both hosts serve at `/metrics`: names, kinds, labels, help texts,
//! and the Prometheus text rendering (docs/operating-metrics-status.md).
//!
//! Every label value comes from a closed list here (message kinds, error codes, reasons,
//! lanes), never from a client: a hostile client cannot grow the number of series. Counters
//! are a flat array of `u64` ([`Counters`], one slot per series), so a room can count into its
//! own copy without locks and a host can add copies together (the fallback into atomics, the
//! edge's rooms into the directory's aggregate) and ship them as sparse `(slot, n)` pairs.

mod families;
pub mod push;

pub use families::*;

use crate::lane::Lane;
use std::fmt::Write;

/// A family of counters: one name, one optional label, a fixed list of label values.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// `(label name, values)`; `None` for a family of one unlabelled series.
    pub label: Option<(&'static str, &'static [&'static str])>,
}

impl Family {
    const fn width(&self) -> usize {
        match self.label {
            Some((_, values)) => values.len(),
            None => 1,
        }
    }
}

const fn offsets() -> [usize; FAMILIES.len() + 1] {
    let mut o = [0; FAMILIES.len() + 1];
    let mut i = 0;
    while i < FAMILIES.len() {
        o[i + 1] = o[i] + FAMILIES[i].width();
        i += 1;
    }
    o
}

const OFFSETS: [usize; FAMILIES.len() + 1] = offsets();

/// How many counter series there are.
pub const SLOTS: usize = OFFSETS[FAMILIES.len()];

/// The slot of `fam`'s series with label value number `i` (clamped to the family's last value,
/// so an out-of-range code from a newer client lands in a bounded place).
pub fn slot(fam: Fam, i: usize) -> usize {
    let f = fam as usize;
    OFFSETS[f] + i.min(FAMILIES[f].width() - 1)
}

/// The slot of an HTTP error status.
pub fn http_status_slot(status: u16) -> usize {
    let s = status.to_string();
    let i = HTTP_STATUSES
        .iter()
        .position(|v| *v == s)
        .unwrap_or(HTTP_STATUSES.len() - 1);
    slot(Fam::HttpErrors, i)
}

/// The slot of an auth outcome.
pub fn auth_slot(a: Auth) -> usize {
    slot(Fam::Auth, a as usize)
}

/// Whether a presented `METRICS_TOKEN` is the configured one, compared without an early exit
/// on the first differing byte. Both sides are trimmed: a secret stored with a trailing
/// newline (`echo token | wrangler secret put`) must still match on every host.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.trim().as_bytes(), expected.trim().as_bytes());
    !b.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counter values, one per series; what a room or a host has counted (since it was last taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    v: Box<[u64; SLOTS]>,
    dirty: bool,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            v: Box::new([0; SLOTS]),
            dirty: false,
        }
    }
}

impl Counters {
    pub fn add(&mut self, fam: Fam, i: usize, n: u64) {
        self.add_slot(slot(fam, i), n);
    }

    /// Adds `n` to a slot (out of range: ignored, e.g. sent by another version).
    pub fn add_slot(&mut self, slot: usize, n: u64) {
        if let Some(v) = self.v.get_mut(slot)
            && n > 0
        {
            *v = v.saturating_add(n);
            self.dirty = true;
        }
    }

    pub fn set_slot(&mut self, slot: usize, n: u64) {
        if let Some(v) = self.v.get_mut(slot) {
            *v = n;
            self.dirty = true;
        }
    }

    pub fn get(&self, fam: Fam, i: usize) -> u64 {
        self.v[slot(fam, i)]
    }

    /// Whether anything was counted since it was made or taken.
    pub fn is_empty(&self) -> bool {
        !self.dirty
    }

    /// Takes everything counted, leaving zeros.
    pub fn take(&mut self) -> Counters {
        std::mem::take(self)
    }

    /// Hands each non-zero slot to `f` and zeroes it (no allocation: a host drains a room's
    /// counters after every input).
    pub fn drain(&mut self, mut f: impl FnMut(usize, u64)) {
        if !self.dirty {
            return;
        }
        for (i, n) in self.v.iter_mut().enumerate() {
            if *n > 0 {
                f(i, std::mem::take(n));
            }
        }
        self.dirty = false;
    }

    /// The non-zero slots, to ship or to add elsewhere.
    pub fn sparse(&self) -> Vec<(u32, u64)> {
        (self.v.iter().enumerate())
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u32, *n))
            .collect()
    }

    pub fn add_sparse(&mut self, pairs: &[(u32, u64)]) {
        for (slot, n) in pairs {
            self.add_slot(*slot as usize, *n);
        }
    }

    pub fn merge(&mut self, other: &Counters) {
        for (i, n) in other.v.iter().enumerate() {
            self.add_slot(i, *n);
        }
    }
}

/// Upper bounds (seconds) of the relay latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The relay latency histogram: per-bucket (not cumulative) counts, total count, sum in µs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_us: u64,
}

impl Histogram {
    /// The bucket a latency falls in (`None`: above the last bound, only in `+Inf`).
    pub fn bucket_of(us: u64) -> Option<usize> {
        let secs = us as f64 / 1e6;
        LATENCY_BUCKETS.iter().position(|b| secs <= *b)
    }

    pub fn observe_us(&mut self, us: u64) {
        if let Some(i) = Histogram::bucket_of(us) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
    }
}

/// One outbox lane's backlog, as its host sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LaneBacklog {
    /// Rows waiting (dead letters excluded).
    pub depth: u64,
    /// Age of the oldest waiting row, in seconds (0: none waiting).
    pub oldest_age_secs: u64,
}

impl LaneBacklog {
    /// Two hosts' (or objects') backlogs as one: rows add up, the oldest is the oldest.
    pub fn merge(&mut self, o: LaneBacklog) {
        self.depth += o.depth;
        self.oldest_age_secs = self.oldest_age_secs.max(o.oldest_age_secs);
    }
}

/// The gauges: what is true now, gathered by the host when it is scraped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Open player WebSockets.
    pub connections: u64,
    /// Rooms running (loaded in memory, not hibernated).
    pub rooms_awake: u64,
    /// Participants joined to a room.
    pub players: u64,
    /// Outbox backlog per lane, in [`Lane::ALL`] order.
    pub outbox: [LaneBacklog; 2],
    /// Analytics events waiting in the host's batcher (the fallback's `ANALYTICS_URL` sink;
    /// the edge sends each hand-over at once and reports 0).
    pub analytics_queued: u64,
}

impl Gauges {
    pub fn lane_mut(&mut self, l: Lane) -> &mut LaneBacklog {
        &mut self.outbox[l.index()]
    }
}

/// Everything at `/metrics`: the host's counters, gauges and latency histogram, and `info`
/// (the host kind, its replica or deployment id and the release) as an info gauge.
pub struct Snapshot<'a> {
    pub counters: &'a Counters,
    pub gauges: &'a Gauges,
    pub latency: &'a Histogram,
    pub host: &'static str,
    pub instance: &'a str,
    pub release: &'a str,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value from configuration (not from clients), made safe to quote.
fn quoted(v: &str) -> String {
    v.chars()
        .take(100)
        .map(|c| {
            if matches!(c, '"' | '\\' | '\n') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The Prometheus text exposition (version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(8192);
    let g = s.gauges;
    for (name, help, v) in [
        (
            "piano_connections",
            "Open player WebSocket connections.",
            g.connections,
        ),
        (
            "piano_rooms_awake",
            "Rooms running in memory (at the edge: not hibernated).",
            g.rooms_awake,
        ),
        ("piano_players", "Participants joined to a room.", g.players),
        (
            "piano_analytics_events_queued",
            "Analytics events waiting to be sent to the HTTP sink (fallback).",
            g.analytics_queued,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
    for (name, help, get) in [
        (
            "piano_outbox_depth",
            "Rows waiting in the outbox, per backend lane.",
            (|b: &LaneBacklog| b.depth) as fn(&LaneBacklog) -> u64,
        ),
        (
            "piano_outbox_oldest_age_seconds",
            "Age of the oldest row waiting in the outbox, per backend lane (0: none).",
            |b: &LaneBacklog| b.oldest_age_secs,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        for lane in Lane::ALL {
            let v = get(&g.outbox[lane.index()]);
            let _ = writeln!(out, "{name}{{lane=\"{}\"}} {v}", lane.as_str());
        }
    }
    for (f, fam) in FAMILIES.iter().enumerate() {
        header(&mut out, fam.name, "counter", fam.help);
        match fam.label {
            None => {
                let _ = writeln!(out, "{} {}", fam.name, s.counters.v[OFFSETS[f]]);
            }
            Some((label, values)) => {
                for (i, value) in values.iter().enumerate() {
                    let n = s.counters.v[OFFSETS[f] + i];
                    let _ = writeln!(out, "{}{{{label}=\"{value}\"}} {n}", fam.name);
                }
            }
        }
    }
    let h = s.latency;
    let name = "piano_relay_latency_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "From reading a player's note batch to queueing the room's broadcast to each listener's connection.",
    );
    let mut cumulative = 0;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += h.buckets[i];
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", h.count);
    header(
        &mut out,
        "piano_build_info",
        "gauge",
        "The host kind (edge or fallback), its instance (replica or deployment id) and release.",
    );
    let _ = writeln!(
        out,
        "piano_build_info{{host=\"{}\",instance=\"{}\",release=\"{}\"}} 1",
        s.host,
        quoted(s.instance),
        quoted(s.release)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_clamped() {
        assert_eq!(slot(Fam::MessagesIn, 0), 0);
        assert_eq!(slot(Fam::MessagesOut, 0), IN_KINDS.len());
        // A code past the list lands on the family's last slot, never in the next family.
        assert_eq!(
            slot(Fam::Errors, 999),
            slot(Fam::Errors, ERROR_CODES.len() - 1)
        );
        assert_eq!(slot(Fam::Refused, 2), SLOTS - 1);
        assert_eq!(http_status_slot(404), slot(Fam::HttpErrors, 3));
        assert_eq!(
            http_status_slot(418),
            slot(Fam::HttpErrors, HTTP_STATUSES.len() - 1)
        );
    }

    #[test]
    fn metrics_token_ignores_surrounding_whitespace_on_both_sides() {
        assert!(token_matches("s3cret", "s3cret\n"));
        assert!(token_matches(" s3cret ", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("", "  \n"));
    }

    #[test]
    fn counters_ship_sparse_and_merge() {
        let mut a = Counters::default();
        assert!(a.is_empty());
        a.add(Fam::NotesRelayed, 0, 5);
        a.add(Fam::JoinFailures, 2, 1);
        let mut b = Counters::default();
        b.add_sparse(&a.sparse());
        b.add_sparse(&[(u32::MAX, 7)]);
        b.merge(&a.take());
        assert!(a.is_empty());
        assert_eq!(b.get(Fam::NotesRelayed, 0), 10);
        assert_eq!(b.get(Fam::JoinFailures, 2), 2);
        let mut drained = Vec::new();
        b.drain(|slot, n| drained.push((slot, n)));
        assert_eq!(drained.len(), 2);
        assert!(b.is_empty());
        assert_eq!(b.get(Fam::NotesRelayed, 0), 0);
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mut c = Counters::default();
        c.add(Fam::Errors, 9, 3);
        let mut g = Gauges::default();
        g.lane_mut(Lane::Redis).depth = 4;
        let mut h = Histogram::default();
        h.observe_us(300);
        h.observe_us(5_000_000);
        let text = render(&Snapshot {
            counters: &c,
            gauges: &g,
            latency: &h,
            host: "fallback",
            instance: "a\"b",
            release: "1.0",
        });
        for f in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {} counter", f.name)),
                "{}",
                f.name
            );
        }
        assert!(text.contains("piano_errors_total{code=\"rate_limited\"} 3"));
        assert!(text.contains("piano_outbox_depth{lane=\"redis\"} 4"));
        assert!(text.contains("piano_relay_latency_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("piano_relay_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("instance=\"a_b\""));
    }
}
