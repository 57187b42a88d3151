//! Replays the committed fuzz inputs (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the fuzz
//! targets' own entry points, so every input the fuzzer kept, and every crash it found, is checked by
//! `cargo test` on stable.

#[path = "../../fuzz/src/frames.rs"]
pub mod frames;
#[path = "../../fuzz/src/replay.rs"]
pub mod replay;

use replay::replay;

#[test]
fn queue_frame_corpus_reads_and_reencodes() {
    replay("queue_frame", frames::queue_frame);
}

#[test]
fn envelope_corpus_parses_and_round_trips() {
    replay("envelope", frames::envelope);
}

#[test]
fn client_command_corpus_parses_and_round_trips() {
    replay("client_command", frames::client_command);
}

#[test]
fn http_head_corpus_parses_and_credentials_round_trip() {
    replay("http_head", frames::http_head);
}
