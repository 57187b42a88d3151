//! `cargo fuzz run client_command`: see [`wsmq_fuzz::frames::client_command`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsmq_fuzz::frames::client_command(data));
