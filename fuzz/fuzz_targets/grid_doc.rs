#![no_main]
//! `pesc_protocol::fuzzing::grid_doc` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pesc_protocol::fuzzing::grid_doc(data));
