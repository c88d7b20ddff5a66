#![no_main]
//! kallsyms table recovery on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_symbols::fuzzing::kallsyms(data));
