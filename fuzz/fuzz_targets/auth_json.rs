//! AFL++ target `auth_json`: see piano_fuzz::harness::auth_json.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        piano_fuzz::harness::auth_json::run(data);
    });
}
