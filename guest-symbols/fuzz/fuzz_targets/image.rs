#![no_main]
//! The whole pipeline: format detection, decompression, ELF or raw image,
//! kallsyms, exports, BTF, syscalls.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_symbols::fuzzing::image(data));
