//! The results folder: the criterion estimates (`bench micro`) and `summary.md` (`bench
//! summary`), which gathers every scenario's table under one overview.

use crate::{machine, target_dir};
use std::path::PathBuf;

/// The criterion estimates of `cargo bench -p piano-core --bench room` as a results table.
pub fn micro() {
    let dir = target_dir().join("criterion");
    let benches = [
        (
            "notes_50_players",
            "one note batch into a 50-player room (decode, checks, one encode, one Send to 49)",
        ),
        (
            "join_50_players",
            "a join into a 50-player room (Joined snapshot + one ParticipantJoined)",
        ),
    ];
    let mut t = format!(
        "### Core micro-benchmarks (criterion, `cargo bench -p piano-core --bench room`: 1 s warm-up, 3 s measurement)\n\n\
         Machine: {}.\n\n| benchmark | what | mean µs | median µs | mean 95% CI µs |\n|---|---|---|---|---|\n",
        machine()
    );
    let mut json = serde_json::json!({ "scenario": "micro", "machine": machine() });
    for (name, what) in benches {
        let path = dir.join(name).join("new/estimates.json");
        let Some(est) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        else {
            eprintln!("bench: no criterion estimates at {}", path.display());
            continue;
        };
        let us = |v: &serde_json::Value| v.as_f64().map(|ns| ns / 1000.0).unwrap_or(f64::NAN);
        let mean = us(&est["mean"]["point_estimate"]);
        let median = us(&est["median"]["point_estimate"]);
        let lo = us(&est["mean"]["confidence_interval"]["lower_bound"]);
        let hi = us(&est["mean"]["confidence_interval"]["upper_bound"]);
        t += &format!("| `{name}` | {what} | {mean:.3} | {median:.3} | {lo:.3}–{hi:.3} |\n");
        json[name] = serde_json::json!({ "mean_ns": mean * 1000.0, "median_ns": median * 1000.0, "mean_ci_ns": [lo * 1000.0, hi * 1000.0] });
    }
    println!("{t}");
    crate::write_results("micro", &t, &json);
}

/// `bench/results/summary.md`: every result table of the folder, oldest first.
pub fn summary() {
    let dir = e2e_tests::repo_root().join("bench/results");
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "md")
                        && p.file_name().is_some_and(|n| n != "summary.md")
                })
                .filter_map(|p| {
                    let stem = p.file_stem()?.to_str()?;
                    let stamp = stem.rsplit('-').next()?.parse().ok()?;
                    Some((stamp, p))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    // The machines the results were measured on (a scenario re-run elsewhere says so).
    let mut machines: Vec<String> = Vec::new();
    for (_, md) in &files {
        let m = std::fs::read_to_string(md.with_extension("json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|j| j["machine"].as_str().map(str::to_owned));
        if let Some(m) = m
            && !machines.contains(&m)
        {
            machines.push(m);
        }
    }
    if machines.is_empty() {
        machines.push(machine());
    }
    let mut t = format!(
        "# Standard benchmark run (`scripts/bench`)\n\nMachine: {}.\n\n{}\n",
        machines.join("; then "),
        overview(&files)
    );
    for (_, p) in files {
        t += &std::fs::read_to_string(&p).unwrap_or_default();
        t += "\n";
    }
    let _ = std::fs::write(dir.join("summary.md"), &t);
    println!("{t}");
}

/// A JSON number with `digits` decimals, or "-".
fn number(v: &serde_json::Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or("-".into())
}

/// Overview rows of the scenarios that find a limit or a cost rather than relay a load:
/// saturation (capacity and what stopped the ramp), waking a hibernated room, and compiling the
/// worker's wasm in a cold isolate (with its size).
fn limit_rows(j: &serde_json::Value) -> String {
    let mut t = String::new();
    let ms = |v: &serde_json::Value| number(v, 2);
    match j["scenario"].as_str().unwrap_or("") {
        "saturate" => {
            let name = format!(
                "saturation {}×{} (capacity: p99 ≤ 50 ms, ≤ 0.1% lost)",
                j["rooms"], j["players"]
            );
            let base = j["baseline"]["capacity_delivered_per_sec"].as_f64();
            for key in ["baseline", "fallback", "edge"] {
                let r = &j[key];
                if r.is_null() {
                    continue;
                }
                let cap = r["capacity_delivered_per_sec"].as_f64();
                let vs = match (cap, base) {
                    (Some(c), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * c / b),
                    _ => "-".into(),
                };
                t += &format!(
                    "| {name} | {key} | {} | {vs} | | | | {} | |\n",
                    cap.map(|c| format!("{c:.0}")).unwrap_or("none met".into()),
                    r["stopped"].as_str().unwrap_or("-"),
                );
            }
        }
        "wake" => {
            for key in ["fallback", "edge"] {
                let r = &j[key];
                if r.is_null() {
                    continue;
                }
                t += &format!(
                    "| wake: first relay after {} s idle ({} of {} rooms evicted; warm p50 {} ms) | {key} | | | {} | max {} | | | |\n",
                    j["idle_s"],
                    r["evicted"],
                    r["rooms"],
                    ms(&r["warm_ms"]["p50"]),
                    ms(&r["wake_ms"]["p50"]),
                    ms(&r["wake_ms"]["max"]),
                );
            }
        }
        "cold" => {
            for m in j["modules"].as_array().into_iter().flatten() {
                let p50 = |k: &str| {
                    let mut v: Vec<f64> = m[k]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_f64())
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2)
                        .map(|x| format!("{x:.1}"))
                        .unwrap_or("-".into())
                };
                t += &format!(
                    "| worker wasm: {} KiB, {} KiB gzip; V8 compile in a cold isolate (lazy / eager p50 ms) | `{}` | | | {} / {} | | | | |\n",
                    m["bytes"].as_u64().unwrap_or(0) / 1024,
                    m["gzip_bytes"].as_u64().unwrap_or(0) / 1024,
                    m["path"].as_str().unwrap_or("-"),
                    p50("lazy_compile_ms"),
                    p50("eager_compile_ms"),
                );
            }
        }
        _ => {}
    }
    t
}

/// One table over every scenario of the run (from the JSON next to each `.md`): per target the
/// delivered rate and p99 with their ratios to the baseline, or memory per connection, or the
/// criterion means.
fn overview(files: &[(u64, PathBuf)]) -> String {
    let mut t = String::from(
        "| scenario | target | delivered/s | vs baseline | p50 ms | p99 ms | p99 vs baseline | lost (saturation: what stopped it) | KiB per idle connection |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (_, md) in files {
        let Some(j) = std::fs::read_to_string(md.with_extension("json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        else {
            continue;
        };
        let l = &j["load"];
        let name = match j["scenario"].as_str().unwrap_or("") {
            "fanout" => format!(
                "fan-out {}×{} players, {}/s each",
                l["rooms"], l["players"], l["rate"]
            ),
            "large-room" => format!(
                "large room, 1 + {} listeners, {}/s",
                l["players"].as_u64().unwrap_or(1) - 1,
                l["rate"]
            ),
            "join-storm" => format!("join storm, {} joins/s (connect to Joined)", l["rate"]),
            "connections" => format!("{} idle connections, rooms of 50", l["count"]),
            "attack" => {
                t += &attack_rows(&j);
                continue;
            }
            "saturate" | "wake" | "cold" => {
                t += &limit_rows(&j);
                continue;
            }
            "micro" => {
                for (bench, what) in [
                    ("notes_50_players", "note batch, 50-player room"),
                    ("join_50_players", "join, 50-player room"),
                ] {
                    let us = j[bench]["mean_ns"].as_f64().map(|n| n / 1000.0);
                    t += &format!(
                        "| core (criterion): {what} | `Room::handle` | mean {} µs | | | | | | |\n",
                        us.map(|u| format!("{u:.2}")).unwrap_or("-".into())
                    );
                }
                continue;
            }
            other => other.to_owned(),
        };
        let base = &j["baseline"];
        for key in ["baseline", "fallback", "edge"] {
            let r = &j[key];
            if r.is_null() {
                continue;
            }
            if j["scenario"] == "connections" {
                let vs = match (
                    r["kib_per_connection"].as_f64(),
                    base["kib_per_connection"].as_f64(),
                ) {
                    (Some(x), Some(b)) if b > 0.0 => format!(" ({:.1}× baseline)", x / b),
                    _ => String::new(),
                };
                t += &format!(
                    "| {name} | {key}{} | | | | | | {} failed | {}{vs} |\n",
                    if key == "edge" {
                        format!(" (workerd, indicative; {} connections)", r["opened"])
                    } else {
                        String::new()
                    },
                    r["failed"],
                    number(&r["kib_per_connection"], 1),
                );
                continue;
            }
            let ratio = |a: &serde_json::Value, b: &serde_json::Value, pct: bool| match (
                a.as_f64(),
                b.as_f64(),
            ) {
                (Some(x), Some(y)) if y > 0.0 => {
                    if pct {
                        format!("{:.0}%", 100.0 * x / y)
                    } else {
                        format!("{:.1}×", x / y)
                    }
                }
                _ => "-".into(),
            };
            t += &format!(
                "| {name} | {key} | {} | {} | {} | {} | {} | {} | |\n",
                number(&r["delivered_per_sec"], 0),
                ratio(&r["delivered_per_sec"], &base["delivered_per_sec"], true),
                number(&r["latency_ms"]["p50"], 2),
                number(&r["latency_ms"]["p99"], 2),
                ratio(&r["latency_ms"]["p99"], &base["latency_ms"]["p99"], false),
                r["lost"],
            );
        }
    }
    t
}

/// The attack scenario's overview rows: per host, the honest players without and with the
/// attacker, the ratio of their p99s in the name (the goal is ≤ 2×).
fn attack_rows(j: &serde_json::Value) -> String {
    let l = &j["load"];
    let seconds = l["seconds"].as_f64().unwrap_or(1.0).max(1e-9);
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or("lost".into())
    };
    // The note's label ("Before: ...", "After: ...") tells the runs apart.
    let tag = j["note"]
        .as_str()
        .and_then(|n| n.split(':').next())
        .filter(|t| t.len() < 30)
        .map(|t| format!("{t}, "))
        .unwrap_or_default();
    let mut t = String::new();
    for key in ["fallback", "edge", "external"] {
        let r = &j[key];
        if r.is_null() || !r["failed"].is_null() {
            continue;
        }
        let ratio = r["p99_ratio"]
            .as_f64()
            .map(|x| format!("{x:.1}×"))
            .unwrap_or("∞: batches lost".into());
        for (phase, what) in [
            ("without_attack", "without attack".to_owned()),
            (
                "with_attack",
                format!("with attack (p99 ratio {ratio}; goal ≤ 2×)"),
            ),
        ] {
            let p = &r[phase];
            t += &format!(
                "| room under attack ({tag}{} players, {}/s each): {what} | {key} | {:.0} | | {} | {} | | {} | |\n",
                l["players"],
                l["rate"],
                p["delivered"].as_f64().unwrap_or(0.0) / seconds,
                ms(&p["latency_ms"]["p50"]),
                ms(&p["latency_ms"]["p99"]),
                p["lost"],
            );
        }
    }
    t
}
