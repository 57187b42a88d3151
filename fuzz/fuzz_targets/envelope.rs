//! `cargo fuzz run envelope`: see [`wsmq_fuzz::frames::envelope`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsmq_fuzz::frames::envelope(data));
