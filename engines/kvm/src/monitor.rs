//! Runs a guest on hvtrace's own KVM monitor (`vmm`), with the console
//! copied to stderr and scanned for the `/init` marker line, optionally
//! with debug handlers, VM-wide software traps, a tick on the running VM
//! and a console driver.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::guest::{ConsoleDriver, GuestEnd, GuestRun, MarkerScanner};

use crate::boot::{BootError, KvmBoot};

/// Why a run on the monitor failed (not how the guest ended).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("creating {}", .0.display())]
    Capture(PathBuf, #[source] std::io::Error),
    #[error("creating the KVM guest")]
    Build(#[source] vmm::BuildError),
    #[error("starting the vCPUs")]
    Start(#[source] vmm::BuildError),
    #[error("the guest ended without reporting an exit status: {0:?}")]
    Ended(vmm::VmExit),
}

/// Console sink: stderr plus the marker scanner, and a copy for a console
/// driver when one types on the console.
struct Console {
    scanner: Arc<Mutex<MarkerScanner>>,
    end: Arc<Mutex<Option<GuestEnd>>>,
    tap: Option<Arc<Mutex<Vec<u8>>>>,
}

/// The guest's console input, as a console driver writes it.
struct SerialInput<'a>(&'a vmm::Vm);

impl Write for SerialInput<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .inject_serial_input(b)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How often a console driver is given the output (and a chance to type)
/// while the guest runs.
const DRIVER_EVERY: Duration = Duration::from_millis(1);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(b);
        if let Some(t) = &self.tap {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
        }
        let mut s = self.scanner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(end) = s.feed(b) {
            let mut e = self.end.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none() {
                *e = Some(end.clone());
            }
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Boots `cfg` until it ends; how it ended (a VM that stopped by itself
/// without a console line that says why is an error).
pub fn run_until(
    cfg: &GuestRun,
    capture: Option<&Path>,
    interrupted: &AtomicBool,
) -> Result<GuestEnd, MonitorError> {
    let every = Duration::from_millis(50);
    let boot = KvmBoot::prepare(&cfg.kernel)?;
    let (outcome, exit, _) = run_guest(
        cfg,
        &boot,
        capture,
        None,
        None,
        interrupted,
        every,
        &mut |_| {},
        None,
    )?;
    match (outcome, exit) {
        (GuestEnd::NoMarker, Some(exit)) => Err(MonitorError::Ended(exit)),
        (end, _) => Ok(end),
    }
}

/// What the monitor did in a run besides running the guest: the VM-wide
/// software breakpoints, and the time each vCPU spent out of its guest for
/// the tracer.
#[derive(Debug, Clone, Default)]
pub struct MonitorOutcome {
    /// Per vCPU, in index order.
    pub tracer_time: Vec<vmm::TracerTime>,
    /// Hits of ours reported to the handlers.
    pub hits: u64,
    /// Step-overs by emulating the covered instruction.
    pub emulated: u64,
    /// Step-overs by single-step with the other vCPUs paused.
    pub single_stepped: u64,
    /// Guest int3s that were not ours, reinjected.
    pub reinjected: u64,
    /// int3s still in guest memory when the run ended.
    pub left: usize,
    /// Of those, original bytes back in place after the VM stopped.
    pub restored: usize,
}

/// Boots `cfg` (its kernel as `boot` says) on the KVM monitor with optional debug `handlers` until the
/// `/init` marker, a panic, the timeout or `interrupted`; `tick` runs on
/// this thread about every `tick_every` (at most 50 ms) with the running VM. Returns how the run
/// ended and, for a VM that ended by itself without a marker, its exit.
/// With `sw_trap` the VM takes VM-wide software traps of that encoding
/// (int3: every vCPU runs with USE_SW_BP); whatever way the run ends (marker, timeout, interrupt, or
/// a panic unwinding through here, by the `Vm`'s drop), the monitor puts
/// every byte it changed back before this returns.
#[allow(clippy::too_many_arguments)]
pub fn run_guest(
    cfg: &GuestRun,
    boot: &KvmBoot,
    capture: Option<&Path>,
    handlers: Option<vmm::HandlerFactory>,
    sw_trap: Option<vmm::TrapKind>,
    interrupted: &AtomicBool,
    tick_every: Duration,
    tick: &mut dyn FnMut(&vmm::Vm),
    mut driver: Option<&mut dyn ConsoleDriver>,
) -> Result<(GuestEnd, Option<vmm::VmExit>, MonitorOutcome), MonitorError> {
    let end = Arc::new(Mutex::new(None));
    let tap = driver.as_ref().map(|_| Arc::new(Mutex::new(Vec::new())));
    let console = Console {
        scanner: Arc::new(Mutex::new(MarkerScanner::default())),
        end: end.clone(),
        tap: tap.clone(),
    };
    let wait_at_most = if driver.is_some() {
        DRIVER_EVERY
    } else {
        Duration::from_millis(50)
    };
    let mut cmdline = cfg.cmdline.clone();
    if !boot.native {
        // KVM-PVM's emulator cannot run XRSTOR or POPCNT and its CPUID does
        // not hide them: keep Linux off them (FXSAVE, software popcount).
        cmdline.push_str(" noxsave clearcpuid=151,308 nowatchdog");
    }
    let mut vc = vmm::VmConfig::linux(boot.kernel.clone(), Some(cfg.initrd.clone()), cmdline);
    vc.vcpus = cfg.vcpus;
    vc.memory_mib = cfg.memory_mib;
    vc.console = Some(Box::new(console));
    vc.handlers = handlers;
    vc.sw_breakpoints = sw_trap.is_some();
    vc.sw_trap = sw_trap.unwrap_or_default();
    vc.disk = cfg.disk.clone();
    if let Some(path) = capture {
        let f = std::fs::File::create(path)
            .map_err(|e| MonitorError::Capture(path.to_path_buf(), e))?;
        vc.console2 = Some(Box::new(f));
    }
    // KVM's emulator cannot run XSAVE/XRSTOR: keep the guest on FXSAVE.
    vc.emulator_cpuid = !boot.native;
    engine::interrupt::guest_starting();
    let mut vm = vmm::build(vc).map_err(MonitorError::Build)?;
    vm.start().map_err(MonitorError::Start)?;
    let deadline = Instant::now() + cfg.timeout;
    let mut vm_exit = None;
    let outcome = loop {
        if let Some(e) = end.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            break e;
        }
        if interrupted.load(Ordering::Relaxed) {
            break GuestEnd::Interrupted;
        }
        if Instant::now() >= deadline {
            // Where each vCPU thread stood: a guest that stopped making
            // progress by itself, or a monitor thread that blocked.
            for h in vm.vcpus() {
                eprintln!(
                    "hvtrace: at the timeout, vCPU {} was {}{}",
                    h.index(),
                    h.activity(),
                    guest_position(&h)
                );
            }
            break GuestEnd::TimedOut;
        }
        if let Some(exit) = vm.wait(tick_every.min(wait_at_most)) {
            // Output written before the exit has been scanned already.
            if let Some(e) = end.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                break e;
            }
            vm_exit = Some(exit);
            break GuestEnd::NoMarker;
        }
        tick(&vm);
        if let (Some(d), Some(t)) = (driver.as_deref_mut(), &tap) {
            let out = std::mem::take(&mut *t.lock().unwrap_or_else(|e| e.into_inner()));
            // A guest that stopped reading its console ends the run by itself.
            let _ = d.drive(&out, &mut SerialInput(&vm));
        }
    };
    let left = vm.sw_breakpoints().list();
    vm.stop();
    let tracer_time = vm
        .vcpus()
        .iter()
        .map(vmm::VcpuHandle::tracer_time)
        .collect();
    vm.shutdown();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let st = &vm.sw_breakpoints().stats;
    let sw = MonitorOutcome {
        tracer_time,
        hits: load(&st.hits),
        emulated: load(&st.emulated),
        single_stepped: load(&st.single_stepped),
        reinjected: load(&st.reinjected),
        left: left.len(),
        restored: left
            .iter()
            .filter(|(_, e)| {
                let n = usize::from(e.len);
                let mut b = [0u8; 2];
                vm.read_phys(e.gpa, &mut b[..n]).is_ok() && b[..n] == e.orig[..n]
            })
            .count(),
    };
    Ok((outcome, vm_exit, sw))
}

/// Where a vCPU's guest stands, for the timeout's report: its RIP and RSP,
/// and whether its page tables map the RIP at all (a guest executing
/// unmapped memory is broken, not slow).
fn guest_position(h: &vmm::VcpuHandle) -> String {
    let at = h.run_on_within(Duration::from_secs(2), |ctx| {
        let r = ctx.regs().ok()?;
        let mapped = ctx.translate(r.rip).ok()?.is_some();
        Some((r.rip, r.rsp, mapped))
    });
    match at {
        Ok(Some((rip, rsp, true))) => format!("; the guest at RIP {rip:#x}, RSP {rsp:#x}"),
        Ok(Some((rip, rsp, false))) => format!(
            "; the guest at RIP {rip:#x}, RSP {rsp:#x}: its page tables do not map that RIP (the guest's state is broken)"
        ),
        Ok(None) => "; its registers could not be read".into(),
        Err(e) => format!("; {e}"),
    }
}
