//! Guest-physical memory layout of every VM the monitor builds: one place for
//! all the fixed addresses (as Firecracker's `arch::x86_64::layout`).

/// Boot GDT (5 entries: null, null, `__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT: one null entry (the guest installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four page directories (2 MiB pages)
/// mapping the first 4 GiB.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (0xb000..0xf000).
pub const PDE_START: u64 = 0xb000;
/// Number of GiB the boot page tables identity-map.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line size, terminating NUL included (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Intel MP floating pointer and table, inside the EBDA.
pub const MPTABLE_START: u64 = EBDA_START;
/// First byte above the legacy 1 MiB area.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (IOAPIC, LAPIC, ...) up to 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// First address past 32 bits, where memory continues after the hole.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// TSS area KVM needs on Intel (3 pages below the identity map page).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Identity map page KVM needs on Intel for real mode.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Where synthetic guests' code is loaded by default.
pub const RAW_CODE_START: u64 = HIMEM_START;

/// Serial port COM1.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Its interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// Serial port COM2 (bulk output, e.g. `--capture`).
pub const SERIAL2_PORT_BASE: u16 = 0x2f8;
/// Its interrupt line.
pub const SERIAL2_IRQ: u32 = 3;
/// i8042 data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// PCI configuration mechanism #1: the address latch...
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// ...and the 4-byte data window.
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Where the monitor places PCI BARs before the guest (which may move
/// them) sees them: the start of the 32-bit hole, never RAM.
pub const PCI_MMIO_START: u64 = MMIO_GAP_START;
/// BAR 0 of the virtio block device (device 00:01.0).
pub const VIRTIO_BLK_BAR: u64 = PCI_MMIO_START;

/// E820 types.
pub const E820_RAM: u32 = 1;
/// Reserved range.
pub const E820_RESERVED: u32 = 2;

/// Guest RAM ranges for `mem_size` bytes: below the 32-bit hole, and the rest
/// above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO_GAP_START),
        ]
    }
}

/// Port of the 2-byte software trap `out %al,$TRAP_PORT`
/// ([`crate::vstate::swbp::TrapKind::PortIo`]): QEMU's and Bochs' debug
/// console port, which no Linux driver uses on this machine (not 0x80,
/// the kernel's I/O delay port, nor 0x7e, which KVM special-cases).
pub const TRAP_PORT: u16 = 0xe9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_the_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, 0xc000_0000), (1 << 32, 1 << 30)]
        );
    }
}
