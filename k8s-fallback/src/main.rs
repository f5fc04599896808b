//! Placeholder binary: see the crate docs for what the native host will be.

fn main() -> std::process::ExitCode {
    eprintln!("{}", k8s_fallback::NOT_YET);
    std::process::ExitCode::from(2)
}
