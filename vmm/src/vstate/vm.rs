//! The KVM VM object: /dev/kvm, the VM fd, memory slots, irqchip and PIT.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors of creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel/kvm_amd, or use --backend tcg)")]
    NoKvm,
    /// /dev/kvm exists but cannot be opened.
    #[error("no permission to open /dev/kvm (add the user to group kvm, or run as root)")]
    Permission,
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    /// A VM ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
}

/// Opens /dev/kvm with a clear error.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::Permission,
        _ => VmError::Open(e),
    })
}

/// Creates the VM, registers guest memory and, if asked, the in-kernel
/// irqchip (PIC + IOAPIC + LAPICs) and PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap, irqchip: bool) -> Result<VmFd, VmError> {
    let vm = kvm
        .create_vm()
        .map_err(|e| VmError::Ioctl("KVM_CREATE_VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|e| VmError::Ioctl("KVM_SET_TSS_ADDR", e))?;
    // Not every platform has it (PVM); it only matters for real mode on VMX.
    let _ = vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS);
    for slot in super::memory::initial_slots(mem) {
        set_slot(&vm, &slot)?;
    }
    if irqchip {
        vm.create_irq_chip()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| VmError::Ioctl("KVM_CREATE_PIT2", e))?;
    }
    Ok(vm)
}

/// Creates, changes or (size 0) deletes a memory slot.
pub fn set_slot(vm: &VmFd, s: &super::memory::Slot) -> Result<(), VmError> {
    let region = kvm_userspace_memory_region {
        slot: s.id,
        guest_phys_addr: s.gpa,
        memory_size: s.size,
        userspace_addr: s.host,
        flags: if s.readonly { KVM_MEM_READONLY } else { 0 },
    };
    // SAFETY: every slot the monitor registers lies inside a live mmap of
    // guest memory owned by the VM's owner, which keeps it alive as long as
    // the VM fd.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| VmError::Ioctl("KVM_SET_USER_MEMORY_REGION", e))
}
