//! Which engine runs guests on this host (`--backend auto`): the KVM
//! monitor where `/dev/kvm` runs guest code natively, as a short probe
//! guest on the monitor measures, QEMU TCG elsewhere. The probe's verdict
//! is kept per host boot in the cache folder, keyed on everything that
//! decides it, so only the first run of a boot pays for the probe.

pub mod choice;
pub mod verdict_cache;

pub use choice::native_kvm;
