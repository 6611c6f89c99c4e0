//! Any bytes as the request of any validated RPC (the first byte picks
//! which): decoded and validated as meta's service does, never a panic.
#![no_main]

use dfs_meta::request::{validate_wire, VALIDATED};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&pick, bytes)) = data.split_first() {
        let method = VALIDATED[usize::from(pick) % VALIDATED.len()];
        let _ = validate_wire(method, bytes);
    }
});
