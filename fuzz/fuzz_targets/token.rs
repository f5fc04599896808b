//! AFL++ target `token`: see piano_fuzz::harness::token.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        piano_fuzz::harness::token::run(data);
    });
}
