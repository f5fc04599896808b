//! AFL++ target `server_message`: see piano_fuzz::harness::proto.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        piano_fuzz::harness::proto::server_message(data);
    });
}
