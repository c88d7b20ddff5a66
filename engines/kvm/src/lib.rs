//! hvtrace's KVM engine, host side: the guest on hvtrace's own KVM monitor
//! (`vmm`), and a recording on it. `boot` decides how the kernel boots
//! (bzImage with KASLR, or an ELF vmlinux); `monitor` runs the guest with
//! its console scanned for the run's end; `context` is a vCPU in a debug
//! exit as `introspect` reads it; `record` arms the probes (hardware
//! breakpoints, then VM-wide software traps), handles each trap through
//! `introspect::runtime` into the CTF writer, and writes `kvm.json`.

pub mod boot;
pub mod context;
pub mod monitor;
pub mod record;
pub mod seam;
