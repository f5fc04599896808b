//! `bench cold` (issue 16): what a cold isolate pays for the worker's size. Every new isolate,
//! and every wake of a hibernated room in a new one, compiles the worker's wasm before it can
//! answer; this measures that compile with the engine workerd runs, V8, as recent as workerd's:
//! Debian's Chromium through `bench/cold-compile.mjs` (Node 20's V8 cannot read the module's
//! exception-handling opcodes). Each sample compiles the module with a custom section of its own
//! appended, so V8's cache of compiled modules never answers instead. `--wasm A,B` compares
//! builds (e.g. one from before the size work); the default is `build/index_bg.wasm`, as
//! `scripts/build-worker` left it. The rest of a cold start on Cloudflare (the isolate itself,
//! the JS shim) no local runtime shows faithfully (`wrangler dev` starts Node and workerd).

use std::path::Path;
use std::process::Command;

/// One module's compile times (ms), sorted. V8 compiles a function lazily, at its first call,
/// unless `eager` (`--no-wasm-lazy-compilation`: every function at once, what a wake that runs
/// most of the code pays in all).
pub fn compile_ms(wasm: &Path, samples: usize, eager: bool) -> Vec<f64> {
    let script = e2e_tests::repo_root().join("bench/cold-compile.mjs");
    let flags = if eager {
        "--no-wasm-lazy-compilation"
    } else {
        ""
    };
    let run = Command::new("node")
        .env("V8_FLAGS", flags)
        .arg(&script)
        .arg(wasm)
        .arg(samples.to_string())
        .current_dir(e2e_tests::repo_root())
        .output();
    let mut out: Vec<f64> = match run {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_default(),
        Ok(o) => {
            eprintln!(
                "bench: cold: {} failed: {}",
                script.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("bench: cold: node: {e}");
            Vec::new()
        }
    };
    out.sort_by(f64::total_cmp);
    out
}

/// The raw and gzip sizes of a file, in bytes (`gzip -c`, as the README's size table).
pub fn sizes(path: &Path) -> Option<(u64, u64)> {
    let raw = std::fs::metadata(path).ok()?.len();
    let gz = Command::new("gzip").arg("-c").arg(path).output().ok()?;
    gz.status.success().then_some((raw, gz.stdout.len() as u64))
}
