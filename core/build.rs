//! Generates the protocol types from `proto/` with protox (a pure-Rust protobuf compiler), so no
//! `protoc` binary is needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = protox::compile(["pianorhythm/v1/room.proto"], [&root])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
