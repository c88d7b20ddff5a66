//! Which engine can run guests here. The KVM monitor lands with the vmm
//! issue; until then `--backend kvm` says so.

use anyhow::{bail, Result};

use crate::guest::GuestRun;

/// Whether /dev/kvm runs guest code natively, and why we think so.
pub fn native_kvm() -> (bool, String) {
    if !std::path::Path::new("/dev/kvm").exists() {
        return (false, "no /dev/kvm".into());
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return (
            false,
            "/dev/kvm is KVM-PVM, which emulates unmodified kernels".into(),
        );
    }
    (false, "the KVM monitor is not built yet".into())
}

pub fn run_kvm(_run: &GuestRun) -> Result<i32> {
    bail!("--backend kvm: hvtrace's KVM monitor is not implemented yet (use --backend qemu)")
}
