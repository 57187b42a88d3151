//! `cargo fuzz run log_recovery`: see [`wsmq_fuzz::segments::log_recovery`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsmq_fuzz::segments::log_recovery(data));
