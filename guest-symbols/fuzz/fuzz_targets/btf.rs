#![no_main]
//! BTF parsing and member resolution (nesting, cycles, bitfields).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_symbols::fuzzing::btf(data));
