#![no_main]
//! ELF parsing, the address-space view and the notes walker.
use guest_symbols::elf::{build_id_from_notes, KernelElf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = KernelElf::parse(data) {
        let space = e.address_space();
        for s in &e.sections {
            let _ = space.cstr(data, s.vaddr, 64);
            let _ = space.u64(data, s.vaddr.wrapping_add(s.size as u64).wrapping_sub(4));
        }
        let _ = e.section_data(data, ".rodata");
    }
    let _ = build_id_from_notes(data);
});
