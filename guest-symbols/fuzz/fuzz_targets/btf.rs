#![no_main]
//! BTF parsing and member resolution (nesting, cycles, bitfields).
use guest_symbols::{KernelTypes, INTROSPECTION_LAYOUT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = KernelTypes::parse(data.to_vec()) {
        let _ = t.layouts(INTROSPECTION_LAYOUT);
        let _ = t.member("task_struct", "se.sum_exec_runtime");
    }
});
