#![no_main]
//! Setup header + payload decompression (every codec) on hostile input.
use guest_symbols::bzimage::{decompress, payload, Compression};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = payload(data) {
        let _ = p.decompress();
    }
    if let Some(c) = Compression::detect(data) {
        let _ = decompress(data, c, Some(usize::MAX));
    }
});
