//! Any bytes as the request of any meta RPC (the first byte picks which):
//! decoded and validated as meta's service does, never a panic.
#![no_main]

use dfs_meta::request::{validate_wire, DECODED, VALIDATED};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&pick, bytes)) = data.split_first() {
        let all = VALIDATED.len() + DECODED.len();
        let i = usize::from(pick) % all;
        let method = VALIDATED.get(i).unwrap_or_else(|| &DECODED[i - VALIDATED.len()]);
        let _ = validate_wire(method, bytes);
    }
});
