//! The proxy's config loader with arbitrary text: never panics, and every error names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use weft_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errs) = Config::parse(text, "fuzz-config.yaml", Path::new("/fuzz")) {
        let msg = errs.to_string();
        assert!(msg.contains("fuzz-config.yaml"), "error does not name the file: {msg}");
    }
});
