//! AFL++ target `room`: see piano_fuzz::harness::room.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        piano_fuzz::harness::room::run(data);
    });
}
