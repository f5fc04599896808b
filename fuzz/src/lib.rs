//! Fuzz targets for the piano server (see fuzz/README.md). The harness is a library so the
//! targets and the seed writer share it; core/tests/fuzz_regressions.rs compiles it as well.

pub mod harness;
