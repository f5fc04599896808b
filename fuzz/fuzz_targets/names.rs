//! AFL++ target `names`: see piano_fuzz::harness::names.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        piano_fuzz::harness::names::run(data);
    });
}
