//! Which engine can run guests here: the KVM monitor only where /dev/kvm
//! runs guest code natively (a short probe guest decides), QEMU TCG
//! elsewhere. The probe's verdict is kept for the host's boot
//! ([`crate::backend_cache`]); `HVTRACE_REPROBE=1` probes again.

use anyhow::Result;

use crate::backend_cache::{self, HostKey, Source, Verdict};
use crate::guest::GuestRun;

/// Whether /dev/kvm runs guest code natively, and why we think so (including
/// whether the verdict came from the cache).
pub fn native_kvm() -> (bool, String) {
    if !std::path::Path::new("/dev/kvm").exists() {
        return (false, "no /dev/kvm".into());
    }
    let probe = || {
        let p = vmm::probe_native_virtualization();
        Verdict {
            native: p.native,
            ns_per_iteration: p.ns_per_iteration,
            reason: p.reason,
        }
    };
    let key = match HostKey::read() {
        Ok(key) => key,
        Err(e) => {
            let v = probe();
            return (
                v.native,
                format!("{}; probed now, not cached: {e}", v.reason),
            );
        }
    };
    let path = backend_cache::path_in(&image_builder::cache::root());
    let reprobe = backend_cache::reprobe_requested();
    let (v, source) = backend_cache::decide(&path, &key, reprobe, probe);
    let how = match source {
        Source::Cache => format!(
            "cached verdict of this host boot, {}=1 probes again",
            backend_cache::REPROBE_ENV
        ),
        Source::Probe { stored: Ok(()) } => format!("probed now, cached in {}", path.display()),
        Source::Probe { stored: Err(e) } => format!("probed now, not cached: {e}"),
    };
    (v.native, format!("{}; {how}", v.reason))
}

pub fn run_kvm(run: &GuestRun) -> Result<i32> {
    crate::backend_kvm::run(run)
}
