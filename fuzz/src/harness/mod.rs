//! What each fuzz target does with its bytes. Shared by the AFL++ targets (`fuzz_targets/`) and
//! the plain-`cargo test` replay of saved crashes and seeds (`core/tests/fuzz_regressions.rs`,
//! which compiles these files with `#[path]`): keep them free of fuzzer-only dependencies.

pub mod auth_json;
pub mod input;
pub mod names;
pub mod oauth;
pub mod proto;
pub mod room;
pub mod room_input;
pub mod room_resume;
pub mod token;

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target by name, as the replay test and the `fuzz` script name them.
pub const TARGETS: [(&str, Target); 7] = [
    ("client_message", proto::client_message),
    ("server_message", proto::server_message),
    ("room", room::run),
    ("auth_json", auth_json::run),
    ("token", token::run),
    ("names", names::run),
    ("oauth", oauth::run),
];
