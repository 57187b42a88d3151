//! `cargo fuzz run http_head`: see [`wsmq_fuzz::frames::http_head`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsmq_fuzz::frames::http_head(data));
