//! Which engine can run guests here: the KVM monitor only where /dev/kvm
//! runs guest code natively (a short probe guest decides), QEMU TCG
//! elsewhere.

use anyhow::Result;

use crate::guest::GuestRun;

/// Whether /dev/kvm runs guest code natively, and why we think so.
pub fn native_kvm() -> (bool, String) {
    if !std::path::Path::new("/dev/kvm").exists() {
        return (false, "no /dev/kvm".into());
    }
    let probe = vmm::probe_native_virtualization();
    (probe.native, probe.reason)
}

pub fn run_kvm(run: &GuestRun) -> Result<i32> {
    crate::backend_kvm::run(run)
}
