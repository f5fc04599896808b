//! AFL++ target `room`: see piano_fuzz::harness::room. Findings already reported and still
//! open are not checked here (the fuzzer would keep finding them); the replay test checks them.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        piano_fuzz::harness::room::run(data);
    });
}
