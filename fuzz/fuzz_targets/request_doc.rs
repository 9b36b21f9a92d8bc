#![no_main]
//! `pesc_protocol::fuzzing::request_doc` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pesc_protocol::fuzzing::request_doc(data));
