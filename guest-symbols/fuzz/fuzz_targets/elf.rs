#![no_main]
//! ELF parsing, the address-space view and the notes walker.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_symbols::fuzzing::elf(data));
