//! GDT, identity page tables, long-mode special registers, general registers,
//! FPU and local APIC LINT0/LINT1 at boot.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// Errors of writing boot register state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write {0} into guest memory")]
    Memory(&'static str),
    /// A vCPU register ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_NE: u64 = 0x20;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const EFER_SCE: u64 = 0x1;
const EFER_NX: u64 = 0x800;

/// Packs a GDT descriptor from flags, base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT, laid out as the Linux boot protocol asks (`__BOOT_CS` =
/// 0x10, `__BOOT_DS` = 0x18).
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // data
    gdt_entry(0x808b, 0, 0xfffff), // TSS
];

/// Decodes a GDT descriptor into a KVM segment with the given selector index.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT, a null IDT and identity page tables (2 MiB pages over
/// the first [`IDENTITY_MAPPED_GIB`] GiB) into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|_| RegsError::Memory("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::Memory("IDT"))?;
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(|_| RegsError::Memory("PML4"))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(PDPTE_START + gib * 8))
            .map_err(|_| RegsError::Memory("PDPT"))?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            mem.write_obj(addr | 0x83, GuestAddress(pd + i * 8))
                .map_err(|_| RegsError::Memory("page directory"))?;
        }
    }
    Ok(())
}

/// Long-mode special registers on top of the vCPU's reset values.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[2], 2);
    let data = segment_from_gdt(BOOT_GDT[3], 3);
    let tss = segment_from_gdt(BOOT_GDT[4], 4);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA | EFER_SCE | EFER_NX;
    sregs
}

/// General registers at the kernel (or synthetic guest) entry.
pub fn boot_regs(entry: u64, rsp: u64, rsi: u64, rdi: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp,
        rbp: rsp,
        rsi,
        rdi,
        ..Default::default()
    }
}

/// FPU state at reset (as Firecracker: x87 control word and MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes sregs, regs and FPU of one vCPU.
pub fn setup_vcpu_regs(vcpu: &VcpuFd, regs: &kvm_regs) -> Result<(), RegsError> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Ioctl("KVM_GET_SREGS", e))?;
    vcpu.set_sregs(&long_mode_sregs(sregs))
        .map_err(|e| RegsError::Ioctl("KVM_SET_SREGS", e))?;
    vcpu.set_regs(regs)
        .map_err(|e| RegsError::Ioctl("KVM_SET_REGS", e))?;
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| RegsError::Ioctl("KVM_SET_FPU", e))?;
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(klapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &klapic.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(klapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        klapic.regs[off + i] = *b as _;
    }
}

/// Sets LINT0 to ExtINT and LINT1 to NMI (what a BIOS does for the 8259
/// virtual-wire mode Linux expects).
pub fn set_lint(mut klapic: kvm_lapic_state) -> kvm_lapic_state {
    let delivery = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&klapic, APIC_LVT0);
    set_lapic_reg(&mut klapic, APIC_LVT0, delivery(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&klapic, APIC_LVT1);
    set_lapic_reg(&mut klapic, APIC_LVT1, delivery(lvt1, APIC_MODE_NMI));
    klapic
}

/// Applies [`set_lint`] to a vCPU (needs the in-kernel irqchip).
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let l = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Ioctl("KVM_GET_LAPIC", e))?;
    vcpu.set_lapic(&set_lint(l))
        .map_err(|e| RegsError::Ioctl("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_code_segment_decodes_to_long_mode() {
        let cs = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((ds.selector, ds.db, ds.l, ds.type_), (0x18, 1, 0, 3));
    }

    #[test]
    fn lint_modes() {
        let l = set_lint(kvm_lapic_state::default());
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
    }
}
