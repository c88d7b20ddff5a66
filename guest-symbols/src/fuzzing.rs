//! The bodies of the fuzz targets, one function per target, kept here so
//! there is one copy of each: libFuzzer runs them through
//! `fuzz/fuzz_targets/*.rs` (`cargo +nightly fuzz run <target>`), and
//! `tests/fuzz_targets.rs` runs them on stable in CI for a bounded time.
//! Each must return on any input; a panic is a bug.

use crate::btf::{KernelTypes, INTROSPECTION_LAYOUT};
use crate::bzimage::{decompress, payload, Compression};
use crate::elf::{build_id_from_notes, KernelElf};

/// A target's body: must return on any input.
pub type Target = fn(&[u8]);

/// Every target by the name of its fuzz binary.
pub const TARGETS: [(&str, Target); 7] = [
    ("btf", btf),
    ("bzimage", bzimage),
    ("cache", cache),
    ("elf", elf),
    ("image", image),
    ("kallsyms", kallsyms),
    ("system_map", system_map),
];

/// BTF parsing and member resolution (nesting, cycles, bitfields).
pub fn btf(data: &[u8]) {
    if let Ok(t) = KernelTypes::parse(data.to_vec()) {
        let _ = t.layouts(INTROSPECTION_LAYOUT);
        let _ = t.member("task_struct", "se.sum_exec_runtime");
    }
}

/// Setup header + payload decompression (every codec) on hostile input.
pub fn bzimage(data: &[u8]) {
    if let Ok(p) = payload(data) {
        let _ = p.decompress();
    }
    if let Some(c) = Compression::detect(data) {
        let _ = decompress(data, c, Some(usize::MAX));
    }
}

/// Decoding cache entries (a cache folder is not trusted either).
pub fn cache(data: &[u8]) {
    let _ = crate::cache::decode(data);
}

/// ELF parsing, the address-space view and the notes walker.
pub fn elf(data: &[u8]) {
    if let Ok(e) = KernelElf::parse(data) {
        let space = e.address_space();
        for s in &e.sections {
            let _ = space.cstr(data, s.vaddr, 64);
            let _ = space.u64(data, s.vaddr.wrapping_add(s.size as u64).wrapping_sub(4));
        }
        let _ = e.section_data(data, ".rodata");
    }
    let _ = build_id_from_notes(data);
}

/// The whole pipeline: format detection, decompression, ELF or raw image,
/// kallsyms, exports, BTF, syscalls.
pub fn image(data: &[u8]) {
    let _ = crate::image::KernelImage::from_bytes(data);
}

/// kallsyms table recovery on arbitrary bytes.
pub fn kallsyms(data: &[u8]) {
    let _ = crate::kallsyms::recover(data);
}

/// System.map / /proc/kallsyms text parsing.
pub fn system_map(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = crate::symbols::KernelSymbols::parse_system_map(s) {
            let _ = t.by_addr(0xffff_ffff_8100_0000);
        }
    }
}
