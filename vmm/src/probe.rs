//! Does /dev/kvm run guest code natively (VT-x/AMD-V) or emulate it
//! (KVM-PVM without hardware support)? A tiny guest runs a `dec; jnz` loop
//! and its speed decides.

use std::time::Instant;

use kvm_bindings::{kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_SW_BP};
use kvm_ioctls::VcpuExit;

use crate::builder::{build, VmConfig};

/// Loop iterations of the probe guest.
pub const PROBE_ITERATIONS: u32 = 200_000;
/// Above this many ns per iteration the guest is taken as emulated (native
/// is ~1 ns, KVM-PVM's emulator ~460 ns).
pub const NATIVE_THRESHOLD_NS: f64 = 20.0;

/// The probe's finding.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Guest code runs natively.
    pub native: bool,
    /// Measured cost of one loop iteration (NaN if nothing ran).
    pub ns_per_iteration: f64,
    /// One line for humans.
    pub reason: String,
}

/// Probe guest: `mov ecx, N; l: dec ecx; jnz l; out 0x80, al; hlt`.
pub fn probe_code(n: u32) -> Vec<u8> {
    let mut c = vec![0xb9];
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xe6, 0x80, 0xf4]);
    c
}

fn time_loop(n: u32) -> Result<f64, String> {
    let mut vm = build(VmConfig::raw(probe_code(n))).map_err(|e| e.to_string())?;
    let mut fds = vm.take_fds();
    let fd = &mut fds[0];
    let t = Instant::now();
    loop {
        match fd.run() {
            Ok(VcpuExit::IoOut(0x80, _)) => break,
            Ok(VcpuExit::InternalError) => return Err("KVM_EXIT_INTERNAL_ERROR".into()),
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(format!("KVM_RUN failed: {e}")),
        }
    }
    Ok(t.elapsed().as_nanos() as f64)
}

/// Runs the probe guest (a few ms natively, ~0.1 s under emulation).
pub fn probe_native_virtualization() -> Probe {
    let fail = |reason: String| Probe {
        native: false,
        ns_per_iteration: f64::NAN,
        reason,
    };
    // Difference of two loop lengths removes the fixed entry cost.
    let short = match time_loop(1000) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let long = match time_loop(PROBE_ITERATIONS + 1000) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let per = ((long - short) / f64::from(PROBE_ITERATIONS)).max(0.0);
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if per <= NATIVE_THRESHOLD_NS {
        Probe {
            native: true,
            ns_per_iteration: per,
            reason: format!("guest loop runs at {per:.1} ns/iteration (native)"),
        }
    } else {
        Probe {
            native: false,
            ns_per_iteration: per,
            reason: format!(
                "/dev/kvm emulates guest code: {per:.0} ns per loop iteration against ~1 ns native{}",
                if pvm { " (KVM-PVM without VT-x/AMD-V)" } else { "" }
            ),
        }
    }
}

/// Does KVM deliver software breakpoints (int3 with
/// `KVM_GUESTDBG_USE_SW_BP`) as debug exits? KVM-PVM does not.
pub fn probe_sw_breakpoints() -> Result<bool, String> {
    // int3; out 0x80, al; hlt
    let mut vm = build(VmConfig::raw(vec![0xcc, 0xe6, 0x80, 0xf4])).map_err(|e| e.to_string())?;
    let mut fds = vm.take_fds();
    let fd = &mut fds[0];
    let dbg = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP,
        ..Default::default()
    };
    fd.set_guest_debug(&dbg).map_err(|e| e.to_string())?;
    loop {
        return match fd.run() {
            Ok(VcpuExit::Debug(a)) => Ok(a.exception == 3),
            Ok(_) => Ok(false),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(_) => Ok(false),
        };
    }
}
