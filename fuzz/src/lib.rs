//! wsmq's fuzz entry points, one function per `cargo fuzz` target. The stable replay tests include the same
//! modules by path (`core/tests/fuzz_corpus.rs`, `msgqueue/tests/fuzz_corpus.rs`), so the corpus committed under
//! `fuzz/corpus/<target>/` is checked by `cargo test` exactly as the fuzzer checked it.

#![forbid(unsafe_code)]

pub mod frames;
pub mod replay;
pub mod segments;
