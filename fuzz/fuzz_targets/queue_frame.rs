//! `cargo fuzz run queue_frame`: see [`wsmq_fuzz::frames::queue_frame`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsmq_fuzz::frames::queue_frame(data));
