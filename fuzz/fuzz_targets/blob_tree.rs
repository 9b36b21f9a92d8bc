#![no_main]
//! `pesc_protocol::fuzzing::blob_tree` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pesc_protocol::fuzzing::blob_tree(data));
