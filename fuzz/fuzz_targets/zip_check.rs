#![no_main]
//! The node's check of uploaded process zips under libFuzzer.

#[allow(dead_code)]
#[path = "../../node/src/zip_check.rs"]
mod zip_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(l) = zip_check::check_zip_from(std::io::Cursor::new(data), 1 << 20) {
        for f in &l.files {
            assert!(!f.starts_with('/') && !f.split('/').any(|c| c == ".."), "{f}");
        }
    }
});
