//! Which engine can run guests here: the KVM monitor only where /dev/kvm
//! runs guest code natively (a short probe guest decides), QEMU TCG
//! elsewhere. The probe's verdict is kept for the host's boot
//! ([`crate::verdict_cache`]); `HVTRACE_REPROBE=1` probes again.

use std::path::Path;

use crate::verdict_cache::{self, HostKey, Source, Verdict};

/// Whether /dev/kvm runs guest code natively, and why we think so (including
/// whether the verdict came from the cache, kept under `cache_root` for
/// hvtrace `version`).
pub fn native_kvm(cache_root: &Path, version: &str) -> (bool, String) {
    if !Path::new("/dev/kvm").exists() {
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
    let key = match HostKey::read(version) {
        Ok(key) => key,
        Err(e) => {
            let v = probe();
            return (
                v.native,
                format!("{}; probed now, not cached: {e}", v.reason),
            );
        }
    };
    let path = verdict_cache::path_in(cache_root);
    let reprobe = verdict_cache::reprobe_requested();
    let (v, source) = verdict_cache::decide(&path, &key, reprobe, probe);
    let how = match source {
        Source::Cache => format!(
            "cached verdict of this host boot, {}=1 probes again",
            verdict_cache::REPROBE_ENV
        ),
        Source::Probe { stored: Ok(()) } => format!("probed now, cached in {}", path.display()),
        Source::Probe { stored: Err(e) } => format!("probed now, not cached: {e}"),
    };
    (v.native, format!("{}; {how}", v.reason))
}
