#![no_main]
//! System.map / /proc/kallsyms text parsing.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = guest_symbols::KernelSymbols::parse_system_map(s) {
            let _ = t.by_addr(0xffff_ffff_8100_0000);
        }
    }
});
