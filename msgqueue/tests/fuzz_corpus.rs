//! Replays the committed `log_recovery` fuzz inputs (`fuzz/corpus/log_recovery/`,
//! `fuzz/regressions/log_recovery/`) through the fuzz target's own entry point: every set of segment files the
//! fuzzer kept, and every one that once failed, must recover cleanly.

#[path = "../../fuzz/src/replay.rs"]
pub mod replay;
#[path = "../../fuzz/src/segments.rs"]
pub mod segments;

#[test]
fn log_recovery_corpus_recovers_every_segment_set() {
    replay::replay("log_recovery", segments::log_recovery);
}
