#![no_main]
//! System.map / /proc/kallsyms text parsing.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_symbols::fuzzing::system_map(data));
