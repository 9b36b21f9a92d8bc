#![no_main]
//! `pesc_protocol::fuzzing::wire` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pesc_protocol::fuzzing::wire(data));
