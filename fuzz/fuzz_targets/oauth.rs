//! AFL++ target `oauth`: see piano_fuzz::harness::oauth.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        piano_fuzz::harness::oauth::run(data);
    });
}
