//! Cost of one debug exit through the monitor's whole path (vCPU thread,
//! state machine, debug handler) against a bare KVM_RUN loop on the same
//! hardware breakpoint in the same process. Rounds alternate so that both
//! sides see the same machine load.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::breakpoints::{dr7, HwBreakpoint};
use crate::builder::{build, VmConfig};
use crate::debug::{Action, DebugEvent};
use crate::layout::RAW_CODE_START;
use crate::vstate::control::VcpuCtx;

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Building the VM.
    #[error(transparent)]
    Build(#[from] crate::builder::BuildError),
    /// A KVM call or an unexpected exit.
    #[error("bare loop: {0}")]
    Bare(String),
    /// The monitor did not deliver the breakpoints.
    #[error("monitor loop: {0}")]
    Monitor(String),
}

/// Result of [`exits`].
#[derive(Debug, Clone)]
pub struct Report {
    /// Breakpoint hits timed per round.
    pub exits_per_round: u32,
    /// Rounds per side.
    pub rounds: u32,
    /// Median ns per hit, bare KVM_RUN loop.
    pub bare_ns: f64,
    /// Median ns per hit through the monitor.
    pub monitor_ns: f64,
    /// Median over rounds of monitor / bare (each round back to back).
    pub ratio: f64,
    /// How execution resumes past the breakpoint here.
    pub resume: &'static str,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "debug exit (hardware breakpoint, resume by {}): bare KVM_RUN loop {:.2} us, \
             monitor path {:.2} us, ratio {:.3} (medians over {} paired rounds x {} exits)",
            self.resume,
            self.bare_ns / 1e3,
            self.monitor_ns / 1e3,
            self.ratio,
            self.rounds,
            self.exits_per_round
        )
    }
}

/// `L: nop; inc rax; jmp L`, breakpoint on the nop.
fn bench_code() -> Vec<u8> {
    vec![0x90, 0x48, 0xff, 0xc0, 0xeb, 0xfa]
}

fn guest_debug(step: bool, armed: bool) -> kvm_guest_debug {
    let mut d = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
        ..Default::default()
    };
    if step {
        d.control |= KVM_GUESTDBG_SINGLESTEP;
    }
    d.arch.debugreg[0] = RAW_CODE_START;
    let mut bps = [None; 4];
    if armed {
        bps[0] = Some(HwBreakpoint::exec(RAW_CODE_START));
    }
    d.arch.debugreg[7] = dr7(&bps).unwrap_or(0x600);
    d
}

fn run_debug(fd: &mut VcpuFd) -> Result<kvm_bindings::kvm_debug_exit_arch, String> {
    loop {
        match fd.run() {
            Ok(VcpuExit::Debug(a)) => return Ok(a),
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}

/// One hit of the bare loop: RF (GET/SET_REGS) or step-over.
fn bare_resume(fd: &mut VcpuFd, rf: bool) -> Result<(), String> {
    let e = |e: kvm_ioctls::Error| e.to_string();
    if rf {
        let mut r = fd.get_regs().map_err(e)?;
        r.rflags |= 1 << 16;
        fd.set_regs(&r).map_err(e)?;
    } else {
        fd.set_guest_debug(&guest_debug(true, false)).map_err(e)?;
        run_debug(fd)?;
        fd.set_guest_debug(&guest_debug(false, true)).map_err(e)?;
    }
    Ok(())
}

/// Whether KVM honours RFLAGS.RF on an exec breakpoint (not in KVM's
/// instruction emulator).
fn rf_honoured() -> Result<bool, BenchError> {
    let mut vm = build(VmConfig::raw(bench_code()))?;
    let mut fds = vm.take_fds();
    let fd = &mut fds[0];
    let b = |e: String| BenchError::Bare(e);
    fd.set_guest_debug(&guest_debug(false, true))
        .map_err(|e| b(e.to_string()))?;
    run_debug(fd).map_err(b)?;
    bare_resume(fd, true).map_err(b)?;
    run_debug(fd).map_err(b)?;
    let r = fd.get_regs().map_err(|e| b(e.to_string()))?;
    Ok(r.rax == 1)
}

fn bare_round(n: u32, warmup: u32, rf: bool) -> Result<f64, BenchError> {
    let mut vm = build(VmConfig::raw(bench_code()))?;
    let mut fds = vm.take_fds();
    let fd = &mut fds[0];
    let b = |e: String| BenchError::Bare(e);
    fd.set_guest_debug(&guest_debug(false, true))
        .map_err(|e| b(e.to_string()))?;
    let mut t0 = Instant::now();
    for i in 0..warmup + n {
        if i == warmup {
            t0 = Instant::now();
        }
        let a = run_debug(fd).map_err(b)?;
        if a.dr6 & 1 == 0 {
            return Err(b(format!("not our breakpoint: {a:?}")));
        }
        bare_resume(fd, rf).map_err(b)?;
    }
    Ok(t0.elapsed().as_nanos() as f64 / f64::from(n))
}

fn monitor_round(n: u32, warmup: u32) -> Result<f64, BenchError> {
    let (tx, rx) = mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let mut cfg = VmConfig::raw(bench_code());
    cfg.handlers = Some(Box::new(move |_| {
        let tx = tx.clone();
        let mut hits = 0u32;
        let mut t0 = Instant::now();
        Box::new(move |ctx: &mut VcpuCtx<'_>, ev: DebugEvent| match ev {
            DebugEvent::Started => {
                let bp = HwBreakpoint::exec(RAW_CODE_START);
                match ctx.set_hw_breakpoint(0, Some(bp)) {
                    Ok(()) => Action::Continue,
                    Err(_) => Action::Stop,
                }
            }
            DebugEvent::HwBreakpoint { .. } => {
                if hits == warmup {
                    t0 = Instant::now();
                }
                hits += 1;
                if hits == warmup + n {
                    let _ = tx
                        .lock()
                        .map(|t| t.send(t0.elapsed().as_nanos() as f64 / f64::from(n)));
                    return Action::Stop;
                }
                Action::Continue
            }
            _ => Action::Continue,
        })
    }));
    let mut vm = build(cfg)?;
    vm.start()?;
    let r = rx.recv_timeout(Duration::from_secs(120));
    let exit = vm.wait(Duration::from_secs(5));
    r.map_err(|_| BenchError::Monitor(format!("no result; VM ended with {exit:?}")))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measures `rounds` alternating rounds of `n` breakpoint hits on each side.
pub fn exits(n: u32, rounds: u32) -> Result<Report, BenchError> {
    let rf = rf_honoured()?;
    let warmup = (n / 10).max(10);
    let (mut bare, mut mon) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        bare.push(bare_round(n, warmup, rf)?);
        mon.push(monitor_round(n, warmup)?);
    }
    // Each round pairs a bare and a monitor run taken back to back: the
    // median of the paired ratios is robust to load that comes and goes.
    let ratios: Vec<f64> = bare.iter().zip(&mon).map(|(b, m)| m / b).collect();
    let (bare_ns, monitor_ns) = (median(bare), median(mon));
    Ok(Report {
        exits_per_round: n,
        rounds: rounds.max(1),
        bare_ns,
        monitor_ns,
        ratio: median(ratios),
        resume: if rf {
            "RFLAGS.RF"
        } else {
            "single-step over the instruction (KVM ignores RF here)"
        },
    })
}

/// `L: out 0x80, al; jmp L`: one port-I/O exit per iteration.
fn pio_code() -> Vec<u8> {
    vec![0xe6, 0x80, 0xeb, 0xfc]
}

/// Median ns of one exit round trip through the host kernel (the guest's
/// `out`, the exit, KVM_RUN's return, and the next entry, with nothing
/// done in between), over `rounds` rounds of `n` exits: the part of a
/// traced exit's cost the vCPU thread cannot time itself.
pub fn pio_round_trip(n: u32, rounds: u32) -> Result<f64, BenchError> {
    pio_round_trip_with(n, rounds, true, Some(0x100))
}

/// [`pio_round_trip`] with or without the in-kernel irqchip and an armed
/// (never hit) hardware breakpoint `debug` bytes past the loop, as a traced
/// Linux guest has both.
pub fn pio_round_trip_with(
    n: u32,
    rounds: u32,
    irqchip: bool,
    debug: Option<u64>,
) -> Result<f64, BenchError> {
    let mut cfg = VmConfig::raw(pio_code());
    cfg.irqchip = irqchip;
    let mut vm = build(cfg)?;
    let mut fds = vm.take_fds();
    let fd = &mut fds[0];
    if let Some(off) = debug {
        let mut d = guest_debug(false, true);
        // Armed on an address the loop never reaches.
        d.arch.debugreg[0] = RAW_CODE_START + off;
        fd.set_guest_debug(&d)
            .map_err(|e| BenchError::Bare(e.to_string()))?;
    }
    let warmup = (n / 10).max(10);
    let mut per_round = Vec::new();
    for _ in 0..rounds.max(1) {
        let mut t0 = Instant::now();
        let mut i = 0;
        while i < warmup + n {
            match fd.run() {
                Ok(VcpuExit::IoOut(0x80, _)) => {}
                Ok(other) => return Err(BenchError::Bare(format!("unexpected exit {other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(BenchError::Bare(format!("KVM_RUN: {e}"))),
            }
            i += 1;
            if i == warmup {
                t0 = Instant::now();
            }
        }
        per_round.push(t0.elapsed().as_nanos() as f64 / f64::from(n.max(1)));
    }
    Ok(median(per_round))
}
