//! The KVM VM object: /dev/kvm, the VM fd, memory slots, irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
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
    for (slot, gpa, size, host) in super::memory::regions(mem) {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: the region is a live mmap of `size` bytes owned by `mem`,
        // which the VM's owner keeps alive as long as the VM fd.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| VmError::Ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
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
