//! The Linux zero page (`struct boot_params`) with our e820 map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::layout::*;

/// Errors of building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More e820 entries than the zero page holds.
    #[error("too many e820 entries")]
    E820Full,
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// One e820 entry (address, size, type).
pub type E820Entry = (u64, u64, u32);

/// The e820 map of a guest with `mem_size` bytes of RAM: conventional memory
/// up to the EBDA, the EBDA and BIOS area reserved, then RAM from 1 MiB, split
/// around the 32-bit MMIO hole.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut v = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_size) {
        if start == 0 {
            v.push((HIMEM_START, len - HIMEM_START, E820_RAM));
        } else {
            v.push((start, len, E820_RAM));
        }
    }
    v
}

/// Builds the zero page: the kernel's own setup header when it came from a
/// bzImage, our command line and initramfs, and the e820 map.
pub fn build(
    kernel_header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> Result<boot_params, BootParamsError> {
    let mut p = boot_params::default();
    if let Some(h) = kernel_header {
        p.hdr = h;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    if p.hdr.kernel_alignment == 0 {
        p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    if e820.len() > p.e820_table.len() {
        return Err(BootParamsError::E820Full);
    }
    for (i, &(addr, size, type_)) in e820.iter().enumerate() {
        p.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    p.e820_entries = e820.len() as u8;
    Ok(p)
}

/// Where an initramfs of `size` bytes goes: page-aligned at the top of
/// memory below 4 GiB, under the kernel's `initrd_addr_max`.
pub fn initrd_address(mem_size: u64, size: u64, addr_max: u64, kernel_end: u64) -> Option<u64> {
    let top = mem_size.min(MMIO_GAP_START).min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_and_header() {
        let map = e820_map(512 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2], (0x10_0000, (512 << 20) - 0x10_0000, E820_RAM));
        let p = build(None, 12, Some((0x1000_0000, 0x1000)), &map).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!(p.e820_entries, 3);
        assert_eq!(e820_map(4 << 30).len(), 4);
    }

    #[test]
    fn initrd_placement() {
        assert_eq!(
            initrd_address(256 << 20, 0x1800, u32::MAX as u64, 0x200_0000),
            Some((256 << 20) - 0x2000)
        );
        assert_eq!(
            initrd_address(64 << 20, 63 << 20, u32::MAX as u64, 0x200_0000),
            None
        );
    }
}
