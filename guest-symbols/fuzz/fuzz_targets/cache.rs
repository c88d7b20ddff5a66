#![no_main]
//! Decoding cache entries (a cache folder is not trusted either).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_symbols::fuzzing::cache(data));
