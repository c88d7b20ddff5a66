//! `--backend kvm`: runs a guest on hvtrace's own KVM monitor (`vmm`), with
//! the console copied to stderr and scanned for the `/init` marker line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use engine::guest::{ConsoleDriver, GuestEnd, GuestRun, MarkerScanner};

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

/// The kernel image the monitor boots, and how.
#[derive(Debug, Clone)]
pub struct KvmBoot {
    /// A bzImage (booted through its own decompressor) or an ELF vmlinux.
    pub kernel: PathBuf,
    /// The bzImage's decompressor runs, so the kernel is randomized as on a
    /// real boot (KASLR) and the slide is known only once found in the
    /// running guest. False for an ELF: it runs at its link-time addresses.
    pub randomized: bool,
    /// `/dev/kvm` runs guest code natively (not an instruction emulator).
    pub native: bool,
}

impl KvmBoot {
    /// Decides how `kernel` boots on this host's KVM. A bzImage boots as a
    /// distribution's does, through its decompressor, except on a KVM that
    /// emulates guest code (KVM-PVM), where decompressing tens of MiB would
    /// take minutes: there the ELF vmlinux is extracted (cached by content)
    /// and booted at its link-time addresses, and a warning says so.
    pub fn prepare(kernel: &Path) -> Result<Self> {
        let probe = vmm::probe_native_virtualization();
        if !probe.native {
            eprintln!(
                "hvtrace: warning: {}; the guest runs in KVM's instruction emulator",
                probe.reason
            );
        }
        // A file too short for the magic is judged (and refused) by the
        // image parser later, with its own message.
        let mut magic = [0u8; 4];
        std::fs::File::open(kernel)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
            .with_context(|| format!("reading {}", kernel.display()))?;
        if magic == *b"\x7fELF" {
            return Ok(KvmBoot {
                kernel: kernel.to_path_buf(),
                randomized: false,
                native: probe.native,
            });
        }
        if probe.native {
            return Ok(KvmBoot {
                kernel: kernel.to_path_buf(),
                randomized: true,
                native: true,
            });
        }
        eprintln!("hvtrace: warning: booting the ELF vmlinux extracted from {} (no decompressor, no KASLR): the emulator would take minutes to decompress it", kernel.display());
        let bytes =
            std::fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
        Ok(KvmBoot {
            kernel: extracted_vmlinux(kernel, &bytes)?,
            randomized: false,
            native: false,
        })
    }
}

/// The ELF vmlinux inside the bzImage `bytes` (read from `kernel`),
/// extracted once into the cache, keyed by content.
fn extracted_vmlinux(kernel: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let dir = image_builder::cache::root().join("vmlinux");
    let out = dir.join(format!("{}.elf", image_builder::cache::sha256_hex(bytes)));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let elf = guest_symbols::image::extract_vmlinux(bytes)
        .with_context(|| format!("extracting the ELF vmlinux from {}", kernel.display()))?;
    // A per-process temporary name: concurrent runs extract side by side,
    // and whichever renames last leaves the same bytes.
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, elf).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(out)
}

/// Boots `cfg` on the KVM monitor and returns the guest command's status.
pub fn run(cfg: &GuestRun) -> Result<i32> {
    run_with_capture(cfg, None)
}

/// [`run`], writing the guest's second serial port (ttyS1) to `capture`.
pub fn run_with_capture(cfg: &GuestRun, capture: Option<&Path>) -> Result<i32> {
    let end = run_until(cfg, capture)?;
    crate::run::outcome(end, cfg.timeout)
}

/// Boots `cfg` until it ends; how it ended (a VM that stopped by itself
/// without a console line that says why is an error).
pub fn run_until(cfg: &GuestRun, capture: Option<&Path>) -> Result<GuestEnd> {
    let interrupted = crate::guest::install_interrupt_flag();
    let every = Duration::from_millis(50);
    let boot = KvmBoot::prepare(&cfg.kernel)?;
    let (outcome, exit, _) = run_guest(
        cfg,
        &boot,
        capture,
        None,
        None,
        &interrupted,
        every,
        &mut |_| {},
        None,
    )?;
    match (outcome, exit) {
        (GuestEnd::NoMarker, Some(exit)) => {
            bail!("the guest ended without reporting an exit status: {exit:?}")
        }
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
    interrupted: &std::sync::atomic::AtomicBool,
    tick_every: Duration,
    tick: &mut dyn FnMut(&vmm::Vm),
    mut driver: Option<&mut dyn ConsoleDriver>,
) -> Result<(GuestEnd, Option<vmm::VmExit>, MonitorOutcome)> {
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
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        vc.console2 = Some(Box::new(f));
    }
    // KVM's emulator cannot run XSAVE/XRSTOR: keep the guest on FXSAVE.
    vc.emulator_cpuid = !boot.native;
    crate::interrupt::guest_starting();
    let mut vm = vmm::build(vc).context("creating the KVM guest")?;
    vm.start().context("starting the vCPUs")?;
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
                    "hvtrace: at the timeout, vCPU {} was {}",
                    h.index(),
                    h.activity()
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

/// `hvtrace bench exits`: one debug exit through the monitor against a bare
/// KVM_RUN loop.
pub fn bench_exits() -> Result<()> {
    let probe = vmm::probe_native_virtualization();
    println!("kvm: {}", probe.reason);
    let r = vmm::bench::exits(2000, 9).context("debug-exit benchmark")?;
    println!("{r}");
    println!("ratio {:.3} (goal <= 1.10)", r.ratio);
    for (irqchip, debug, what) in [
        (false, None, "no irqchip, no breakpoint"),
        (true, None, "in-kernel irqchip, no breakpoint"),
        (
            true,
            Some(0x100),
            "in-kernel irqchip, a breakpoint armed on the loop's page",
        ),
    ] {
        let rt = vmm::bench::pio_round_trip_with(2000, 9, irqchip, debug)
            .context("exit round-trip benchmark")?;
        println!(
            "bare exit round trip (port I/O, nothing done in user space; {what}): {:.2} us",
            rt / 1e3
        );
    }
    Ok(())
}

/// One vCPU stopped in a debug exit of the KVM monitor, as the engine-
/// independent core sees it: registers read once per trap, guest-virtual
/// reads through a page walk of the guest's own tables.
pub struct KvmContext<'a, 'b> {
    ctx: &'a vmm::VcpuCtx<'b>,
    regs: vmm::kvm_regs,
    sregs: vmm::kvm_sregs,
    /// IA32_KERNEL_GS_BASE, read only when asked for (the core needs it
    /// only when GS base is not the kernel's, i.e. rarely at our probes).
    kernel_gs_base: std::cell::Cell<Option<u64>>,
}

impl<'a, 'b> KvmContext<'a, 'b> {
    /// Snapshots the registers of `ctx` (GET_REGS, GET_SREGS).
    pub fn new(ctx: &'a mut vmm::VcpuCtx<'b>) -> Result<Self, vmm::DebugError> {
        let regs = ctx.regs()?;
        let sregs = ctx.sregs()?;
        Ok(KvmContext {
            ctx,
            regs,
            sregs,
            kernel_gs_base: std::cell::Cell::new(None),
        })
    }

    /// Uses `v` as IA32_KERNEL_GS_BASE instead of reading the MSR (a
    /// vCPU's per-CPU base does not change once the kernel set it up; the
    /// MSR read allocates, which a trap must not).
    pub fn with_kernel_gs_base(self, v: Option<u64>) -> Self {
        self.kernel_gs_base.set(v);
        self
    }

    /// GS base (the kernel's per-CPU base when the vCPU is in the kernel).
    pub fn gs_base(&self) -> u64 {
        self.sregs.gs.base
    }
}

impl introspect::VcpuContext for KvmContext<'_, '_> {
    fn read_reg(&self, reg: introspect::Reg) -> u64 {
        use introspect::Reg::*;
        let (r, s) = (&self.regs, &self.sregs);
        match reg {
            Rax => r.rax,
            Rbx => r.rbx,
            Rcx => r.rcx,
            Rdx => r.rdx,
            Rsi => r.rsi,
            Rdi => r.rdi,
            Rbp => r.rbp,
            Rsp => r.rsp,
            R8 => r.r8,
            R9 => r.r9,
            R10 => r.r10,
            R11 => r.r11,
            R12 => r.r12,
            R13 => r.r13,
            R14 => r.r14,
            R15 => r.r15,
            Rip => r.rip,
            Cr0 => s.cr0,
            Cr3 => s.cr3,
            Cr4 => s.cr4,
            Efer => s.efer,
            GsBase => s.gs.base,
            KernelGsBase => match self.kernel_gs_base.get() {
                Some(v) => v,
                None => {
                    let v = self.ctx.msr(0xc000_0102).unwrap_or(0);
                    self.kernel_gs_base.set(Some(v));
                    v
                }
            },
        }
    }

    fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), introspect::MemError> {
        let la57 = self.sregs.cr4 & (1 << 12) != 0;
        let phys = |pa: u64| {
            let mut b = [0u8; 8];
            self.ctx
                .read_phys(pa, &mut b)
                .ok()
                .map(|_| u64::from_le_bytes(b))
        };
        let mut done = 0usize;
        while done < buf.len() {
            let addr = va.wrapping_add(done as u64);
            let t = introspect::paging::translate(&phys, self.sregs.cr3, addr, la57)
                .map_err(|_| introspect::MemError::Unmapped(addr))?;
            let in_page = (t.page_size - (addr & (t.page_size - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            self.read_phys(t.pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<(), introspect::MemError> {
        self.ctx
            .read_phys(pa, buf)
            .map_err(|_| introspect::MemError::OutOfRange(pa))
    }

    fn vcpu_index(&self) -> u32 {
        self.ctx.index()
    }
}
