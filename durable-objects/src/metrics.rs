//! The edge's metrics aggregator, hosted by the Lobby object (the directory every room already
//! talks to): Room objects and the worker push what they counted (`piano_core::metrics::push`),
//! and a scrape reads only what is stored here, so gathering metrics never wakes a hibernated
//! room. Totals and each object's latest report live in the Lobby's SQLite: they survive the
//! Lobby being evicted.
//!
//! Routes on the Lobby (internal): `POST /metrics/push` (a [`Push`]), `GET /metrics` (the
//! Prometheus text), `GET /metrics/backlog` (the outbox backlog per lane, for `/api/status`);
//! objects and the worker reach them with `lobby::send_metrics` and `lobby::get_metrics`.

use piano_core::metrics::push::{self, Present, Push};
use piano_core::metrics::{self, Counters, Gauges, Histogram, LaneBacklog, SLOTS};
use worker::*;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS metric_totals (slot INTEGER PRIMARY KEY, n INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS metric_sources (source TEXT PRIMARY KEY, present TEXT NOT NULL,
        at INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS metric_latency (id INTEGER PRIMARY KEY, h TEXT NOT NULL);
";

/// Creates the aggregator's tables: once per Lobby instance, when it loads (not per push).
pub fn create_tables(sql: &SqlStorage) -> Result<()> {
    sql.exec(SCHEMA, None)?;
    Ok(())
}

/// Longest source name kept (a room's name is far shorter).
const MAX_SOURCE: usize = 200;

/// The tables exist ([`create_tables`]) before any of the functions below runs.
///
/// Adds a push's counters to the totals and keeps its source's present state (an idle source
/// is forgotten: it adds nothing to the gauges).
pub fn apply(sql: &SqlStorage, push: &Push, now: u64) -> Result<()> {
    for (slot, n) in push.counters.iter().take(SLOTS) {
        if (*slot as usize) < SLOTS && *n > 0 {
            sql.exec(
                "INSERT INTO metric_totals (slot, n) VALUES (?, ?)
                 ON CONFLICT(slot) DO UPDATE SET n = n + excluded.n",
                vec![(*slot as i64).into(), (*n as i64).into()],
            )?;
        }
    }
    if let Some(h) = push.latency.as_ref().filter(|h| h.count > 0) {
        let mut total = latency(sql)?;
        total.merge(h);
        sql.exec(
            "INSERT OR REPLACE INTO metric_latency (id, h) VALUES (0, ?)",
            vec![serde_json::to_string(&total)?.into()],
        )?;
    }
    if let (Some(source), Some(present)) = (&push.source, &push.present) {
        let source: String = source.chars().take(MAX_SOURCE).collect();
        if present.is_idle() {
            sql.exec(
                "DELETE FROM metric_sources WHERE source = ?",
                vec![source.into()],
            )?;
        } else {
            sql.exec(
                "INSERT OR REPLACE INTO metric_sources (source, present, at) VALUES (?, ?, ?)",
                vec![
                    source.into(),
                    serde_json::to_string(present)?.into(),
                    (now as i64).into(),
                ],
            )?;
        }
    }
    Ok(())
}

fn latency(sql: &SqlStorage) -> Result<Histogram> {
    #[derive(serde::Deserialize)]
    struct Row {
        h: String,
    }
    Ok(sql
        .exec("SELECT h FROM metric_latency WHERE id = 0", None)?
        .to_array::<Row>()?
        .first()
        .and_then(|r| serde_json::from_str(&r.h).ok())
        .unwrap_or_default())
}

/// The totals, the gauges from every source's latest report, and the latency histogram.
pub fn read(sql: &SqlStorage, now: u64) -> Result<(Counters, Gauges, Histogram)> {
    #[derive(serde::Deserialize)]
    struct Total {
        slot: i64,
        n: i64,
    }
    #[derive(serde::Deserialize)]
    struct Source {
        source: String,
        present: String,
        at: i64,
    }
    let mut counters = Counters::default();
    for t in sql
        .exec("SELECT slot, n FROM metric_totals", None)?
        .to_array::<Total>()?
    {
        counters.set_slot(t.slot.max(0) as usize, t.n.max(0) as u64);
    }
    let mut sources: Vec<(Present, u64)> = Vec::new();
    for s in sql
        .exec("SELECT source, present, at FROM metric_sources", None)?
        .to_array::<Source>()?
    {
        let at = s.at.max(0) as u64;
        match serde_json::from_str::<Present>(&s.present) {
            // Evicted without saying it went idle (e.g. by a deploy): forget it.
            Ok(p) if push::forgettable(&p, at, now) => {
                sql.exec(
                    "DELETE FROM metric_sources WHERE source = ?",
                    vec![s.source.into()],
                )?;
            }
            Ok(p) => sources.push((p, at)),
            Err(_) => {}
        }
    }
    let gauges = push::gauges(sources.iter().map(|(p, at)| (p, *at)), now);
    Ok((counters, gauges, latency(sql)?))
}

/// The Prometheus text of everything pushed so far.
pub fn render(sql: &SqlStorage, now: u64, instance: &str, release: &str) -> Result<String> {
    let (counters, gauges, latency) = read(sql, now)?;
    Ok(metrics::render(&metrics::Snapshot {
        counters: &counters,
        gauges: &gauges,
        latency: &latency,
        host: "edge",
        instance,
        release,
    }))
}

/// The outbox backlog per lane, summed over every object that reported one.
pub fn backlog(sql: &SqlStorage, now: u64) -> Result<[LaneBacklog; 2]> {
    Ok(read(sql, now)?.1.outbox)
}

/// For an object whose only metrics are its outbox (an Account, the Lobby): its backlog, as a
/// push when it changed since the last one (`None` otherwise, or without backends).
pub fn backlog_push(
    pusher: &std::cell::RefCell<push::Pusher>,
    outbox: &crate::outbox::Outbox,
    sql: &SqlStorage,
    source: &str,
) -> Option<Push> {
    outbox.backends()?;
    let heads = outbox
        .heads(sql)
        .map_err(|e| {
            crate::log::warn("storage")
                .error(e)
                .msg("outbox heads unreadable")
                .emit()
        })
        .ok()?;
    let present = Present {
        outbox: heads,
        ..Present::default()
    };
    pusher
        .borrow_mut()
        .due(source, present, Date::now().as_millis(), false)
}
