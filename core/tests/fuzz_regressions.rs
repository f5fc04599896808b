//! Replays the fuzz corpus through the fuzz targets' own harness, with plain `cargo test` (no
//! fuzzer needed): every saved crash (`fuzz/regressions/<target>/`) and the seed corpus
//! (`fuzz/corpus/<target>/`). A crash found by `npm run fuzz` is saved there by the script, so
//! it fails here until it is fixed. See fuzz/README.md.

// The harness is the fuzz crate's, compiled here too, so a replay runs exactly what the fuzzer
// ran. Not every item is used by this test.
#[allow(dead_code)]
#[path = "../../fuzz/src/harness/mod.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

/// Runs every input of `kind` (`corpus` or `regressions`) through its target; returns how many
/// ran, and fails naming each input that panicked.
fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind);
    let mut ran = 0;
    let mut failed = Vec::new();
    for (target, run) in harness::TARGETS {
        for file in inputs(&root.join(target)) {
            let data = std::fs::read(&file).expect("readable input");
            ran += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that fail:\n{}",
        failed.join("\n")
    );
    ran
}

#[test]
fn seed_corpus_passes_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, _) in harness::TARGETS {
        assert!(
            !inputs(&root.join(target)).is_empty(),
            "no seeds for {target}"
        );
    }
    assert!(replay("corpus") >= harness::TARGETS.len());
}

#[test]
fn saved_crashes_stay_fixed() {
    replay("regressions");
}

/// The room seeds reach the states the fuzzer should start from: a full room, and a join
/// through a password check (so a seed that silently stops joining is noticed).
#[test]
fn room_seeds_reach_joined_rooms() {
    let seed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/room/seed-00"))
            .expect("room seed");
    let host = harness::room::run_host(&seed);
    assert!(host.most_participants >= 3, "{}", host.most_participants);
    assert_eq!(host.password_joins, 1);
}

/// The resume seeds reach what the fuzzer should start from there: a resume that replays what
/// was missed, and one answered with a snapshot (so a seed that silently stops resuming is
/// noticed).
#[test]
fn room_seeds_reach_resumes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/room");
    let (mut replays, mut snapshots) = (0, 0);
    for seed in ["seed-03", "seed-04", "seed-05"] {
        let data = std::fs::read(root.join(seed)).expect("room seed");
        let host = harness::room::run_host(&data);
        assert!(
            host.resumes.replays + host.resumes.snapshots > 0,
            "{seed} resumes nothing"
        );
        replays += host.resumes.replays;
        snapshots += host.resumes.snapshots;
    }
    assert!(replays >= 3, "{replays} resumes replayed something");
    assert!(snapshots >= 1, "{snapshots} resumes got a snapshot");
}
