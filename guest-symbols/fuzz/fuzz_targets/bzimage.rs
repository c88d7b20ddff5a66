#![no_main]
//! Setup header + payload decompression (every codec) on hostile input.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_symbols::fuzzing::bzimage(data));
