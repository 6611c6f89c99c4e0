//! Any text as an exports file: read or refused with a line number.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = dfs_meta::exports::Exports::parse(&String::from_utf8_lossy(data)) {
        assert!(e.starts_with("line "), "{e}");
    }
});
