//! Flight-recorder triggers inside QEMU (`hvtrace record --trigger`).
//!
//! Plugin argument `triggers=PATH`: an [`introspect::triggers::TriggerPlan`].
//! Trap callbacks on the trigger sites (function entries; the return sites
//! of `do_syscall_64`) check the condition and, when it holds, write a
//! `hvtrace_trigger` marker event, close their vCPU's partial packet (so the
//! triggering event is in the snapshot even if this vCPU stays silent),
//! note who fired in atomics and wake the trigger thread through a pipe:
//! no allocation, no lock, no text. The trigger thread asks ltt-writer for
//! the snapshot ([`ltt_writer::TriggerHandle`]), waits for it and appends a
//! line to the log. The same thread reads snapshot requests (one byte
//! each, from hvtrace's SIGUSR1) from the request FIFO.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering,
};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use introspect::ctx::{read_u64, Reg, VcpuContext};
use introspect::decode::pt_regs;
use introspect::kernel::reloc;
use introspect::triggers::{Condition, LogEntry, TriggerPlan};
use ltt_writer::{Catalog, FieldDecl, FieldType, TaskCtx, TraceWriter, TriggerHandle, Value};
use qemu_plugin::{
    install::Args, install::Value as ArgValue, CallbackFlags, Instruction, VCPUIndex,
};

/// The marker event written where a trigger fires.
pub const MARKER: &str = "hvtrace_trigger";

/// How long the trigger thread waits for the writer to write a snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);
/// How often the thread wakes up without a request (stop checks).
const POLL_MS: i32 = 50;

/// The plan and the marker's event id, from `declare`.
static PLAN: OnceLock<(TriggerPlan, Option<u32>)> = OnceLock::new();
/// Runtime state, from `start`.
static STATE: OnceLock<State> = OnceLock::new();

const IDLE: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// Who fired, written by the trap that won `state` (IDLE → WRITING), read
/// by the trigger thread once `state` is READY.
struct Fired {
    state: AtomicU8,
    index: AtomicU32,
    cpu: AtomicU32,
    pid: AtomicI32,
    tid: AtomicI32,
    comm: [AtomicU64; 2],
    unix_ns: AtomicU64,
    detail: AtomicI64,
}

struct State {
    plan: &'static TriggerPlan,
    marker: Option<u32>,
    /// (compat, nr, ret, trigger index) of the syscall triggers.
    syscalls: Vec<(bool, u32, i64, u32)>,
    fired: Fired,
    /// Hits while a snapshot was pending (they share it).
    coalesced: AtomicU64,
    /// Write end of the wake-up pipe (non-blocking; never closed).
    wake: RawFd,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Snapshots requested and not yet confirmed when the thread stopped.
    pending: Mutex<Vec<LogEntry>>,
    out: PathBuf,
}

/// Loads the trigger plan named by the plugin argument `triggers` and
/// declares the marker event in `catalog`. Call before the writer exists.
pub(crate) fn declare(args: &Args, catalog: &mut Catalog) {
    let Some(ArgValue::String(path)) = args.parsed.get("triggers") else {
        return;
    };
    let plan = match TriggerPlan::load(path) {
        Ok(p) => p,
        Err(e) => {
            crate::note(format!("triggers: {e}"));
            return;
        }
    };
    let marker = catalog
        .add_event(
            MARKER,
            vec![
                FieldDecl::new("trigger", FieldType::Str),
                FieldDecl::new("detail", FieldType::int(64, true)),
            ],
        )
        .map_err(|e| crate::note(format!("triggers: marker event: {e}")))
        .ok();
    let _ = PLAN.set((plan, marker));
}

/// Starts the trigger thread (flight recorder only).
pub(crate) fn start(writer: Option<&TraceWriter>, out: &str) {
    let (Some((plan, marker)), Some(w)) = (PLAN.get(), writer) else {
        return;
    };
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        crate::note("triggers: cannot create the wake-up pipe".into());
        return;
    }
    // SAFETY: fds[0] is the read end pipe2 just opened, owned from here on.
    let wake_r = unsafe { File::from_raw_fd(fds[0]) };
    let fifo = if plan.request_fifo.is_empty() {
        None
    } else {
        // Read and write: opening does not wait for a writer, and the FIFO
        // never reports end-of-file when hvtrace closes its end.
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&plan.request_fifo)
        {
            Ok(f) => Some(f),
            Err(e) => {
                crate::note(format!("triggers: request FIFO {}: {e}", plan.request_fifo));
                None
            }
        }
    };
    let syscalls = plan
        .triggers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match t.cond {
            Condition::SyscallReturns { nr, ret, .. } => Some((false, nr, ret, i as u32)),
            Condition::CompatSyscallReturns { nr, ret, .. } => Some((true, nr, ret, i as u32)),
            _ => None,
        })
        .collect();
    let st = State {
        plan,
        marker: *marker,
        syscalls,
        fired: Fired {
            state: AtomicU8::new(IDLE),
            index: AtomicU32::new(0),
            cpu: AtomicU32::new(0),
            pid: AtomicI32::new(0),
            tid: AtomicI32::new(0),
            comm: [AtomicU64::new(0), AtomicU64::new(0)],
            unix_ns: AtomicU64::new(0),
            detail: AtomicI64::new(0),
        },
        coalesced: AtomicU64::new(0),
        wake: fds[1],
        stop: AtomicBool::new(false),
        thread: Mutex::new(None),
        pending: Mutex::new(Vec::new()),
        out: PathBuf::from(out),
    };
    if STATE.set(st).is_err() {
        return;
    }
    let Some(st) = STATE.get() else { return };
    let handle = w.trigger_handle();
    match std::thread::Builder::new()
        .name("hvtrace-triggers".into())
        .spawn(move || run(st, handle, fifo, wake_r))
    {
        Ok(t) => {
            if let Ok(mut slot) = st.thread.lock() {
                *slot = Some(t);
            }
        }
        Err(e) => crate::note(format!("triggers: cannot start the thread: {e}")),
    }
}

/// Trigger sites at translation time.
#[derive(Default)]
pub(crate) struct Sites {
    /// Runtime function entry → trigger index.
    entries: HashMap<u64, u32>,
    /// Runtime address of `do_syscall_64` (false) or `ia32_sys_call`
    /// (true: compat) for the syscall triggers.
    callees: HashMap<u64, bool>,
    /// Return sites of calls to a callee, and whether it is the compat one.
    returns: HashMap<u64, bool>,
}

impl Sites {
    /// Relocates the plan's sites once the KASLR slide is known.
    pub(crate) fn arm(&mut self, slide: u64) {
        let Some((plan, _)) = PLAN.get() else { return };
        for (i, t) in plan.triggers.iter().enumerate() {
            match t.cond {
                Condition::Enter { link } | Condition::SignalExit { do_exit: link } => {
                    if link != 0 {
                        self.entries.entry(reloc(link, slide)).or_insert(i as u32);
                    }
                }
                Condition::SyscallReturns { do_syscall_64, .. } => {
                    if do_syscall_64 != 0 {
                        self.callees.insert(reloc(do_syscall_64, slide), false);
                    }
                }
                Condition::CompatSyscallReturns { ia32_sys_call, .. } => {
                    if ia32_sys_call != 0 {
                        self.callees.insert(reloc(ia32_sys_call, slide), true);
                    }
                }
            }
        }
    }

    /// Registers the trigger callbacks of one instruction (after the
    /// tracing probes', so that the event that fires is written first).
    pub(crate) fn instrument(&mut self, insn: &Instruction<'_>) {
        let va = insn.vaddr();
        if let Some(&i) = self.entries.get(&va) {
            insn.register_execute_callback_flags(
                move |vcpu| on_entry(i, vcpu),
                CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
            );
        }
        match self.returns.get(&va) {
            Some(false) => insn
                .register_execute_callback_flags(on_return, CallbackFlags::QEMU_PLUGIN_CB_R_REGS),
            Some(true) => insn.register_execute_callback_flags(
                on_compat_return,
                CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
            ),
            None => {}
        }
        if !self.callees.is_empty() && insn.size() == 5 {
            let mut b = [0u8; 5];
            if insn.read_data(&mut b) == 5 && b[0] == 0xe8 {
                let rel = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                let target = va.wrapping_add(5).wrapping_add(rel as i64 as u64);
                if let Some(&compat) = self.callees.get(&target) {
                    self.returns.insert(va.wrapping_add(5), compat);
                }
            }
        }
    }
}

/// Trap: entry of a trigger function.
fn on_entry(index: u32, vcpu: VCPUIndex) {
    let Some(st) = STATE.get() else { return };
    let Some(t) = st.plan.triggers.get(index as usize) else {
        return;
    };
    with_vcpu(vcpu, |rt| {
        let detail = match t.cond {
            Condition::SignalExit { .. } => {
                // do_exit(long code): a signal in the low 7 bits.
                let code = rt.ctx.read_reg(Reg::Rdi) as i64;
                if code & 0x7f == 0 {
                    return;
                }
                code
            }
            _ => 0,
        };
        fire(st, index, rt, detail);
    });
}

/// Trap: return site of `do_syscall_64` (RSP points at `pt_regs`).
fn on_return(vcpu: VCPUIndex) {
    let Some(st) = STATE.get() else { return };
    with_vcpu(vcpu, |rt| {
        let regs = rt.ctx.read_reg(Reg::Rsp);
        check_return(st, rt, false, regs, |rt| {
            read_u64(&rt.ctx, regs.wrapping_add(pt_regs::AX)).ok()
        });
    });
}

/// Trap: return site of a call to `ia32_sys_call` (RAX is the return
/// value; the number is in the task's own `pt_regs`).
fn on_compat_return(vcpu: VCPUIndex) {
    let Some(st) = STATE.get() else { return };
    let Some(k) = crate::G.get().and_then(|g| g.kernel.get()) else {
        return;
    };
    with_vcpu(vcpu, |rt| {
        let Ok(regs) = introspect::task::current_pt_regs(&rt.ctx, k) else {
            return;
        };
        check_return(st, rt, true, regs, |rt| Some(rt.ctx.read_reg(Reg::Rax)));
    });
}

/// Fires the syscall triggers of (`compat`, `orig_ax` at `regs`) whose
/// return value `ret()` gives.
fn check_return(
    st: &State,
    rt: &mut crate::slots::VcpuRuntime,
    compat: bool,
    regs: u64,
    ret: impl FnOnce(&crate::slots::VcpuRuntime) -> Option<u64>,
) {
    let Ok(nr) = read_u64(&rt.ctx, regs.wrapping_add(pt_regs::ORIG_AX)) else {
        return;
    };
    let nr = nr as u32;
    let mine = |s: &&(bool, u32, i64, u32)| s.0 == compat && s.1 == nr;
    if !st.syscalls.iter().any(|s| mine(&s)) {
        return;
    }
    let Some(ret) = ret(rt) else { return };
    let ret = ret as i64;
    if let Some(&(_, _, _, i)) = st.syscalls.iter().filter(mine).find(|s| s.2 == ret) {
        fire(st, i, rt, ret);
    }
}

fn with_vcpu(vcpu: VCPUIndex, f: impl FnOnce(&mut crate::slots::VcpuRuntime)) {
    let Some(g) = crate::G.get() else { return };
    let Some(slot) = g.slots.get(vcpu as usize) else {
        return;
    };
    // SAFETY: trap callbacks run on the thread of vCPU `vcpu`, after (never
    // inside) the tracing callback of the same instruction.
    if let Some(rt) = unsafe { slot.get() }.as_mut() {
        f(rt);
    }
}

/// The trap path of a trigger that holds: marker, packet, atomics, wake-up.
fn fire(st: &State, index: u32, rt: &mut crate::slots::VcpuRuntime, detail: i64) {
    let Some(g) = crate::G.get() else { return };
    let Some(k) = g.kernel.get() else { return };
    let Some(t) = st.plan.triggers.get(index as usize) else {
        return;
    };
    let task = introspect::task::current_task(&rt.ctx, k);
    let ts = crate::now_ns(g);
    // Records the vCPU still holds back go first.
    rt.flush();
    if let (Some(p), Some(id)) = (rt.sink.producer.as_mut(), st.marker) {
        let ctx = TaskCtx::new(task.pid, task.tid, &task.comm);
        let _ = p.emit(
            id,
            ts,
            &ctx,
            &[Value::Str(t.name.as_bytes()), Value::I(detail)],
        );
    }
    let f = &st.fired;
    if f.state
        .compare_exchange(IDLE, WRITING, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        st.coalesced.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Close this vCPU's packet now: it holds the event that fired.
    if let Some(p) = rt.sink.producer.as_mut() {
        let _ = p.flush();
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&task.comm[..8]);
    f.comm[0].store(u64::from_le_bytes(c), Ordering::Relaxed);
    c.copy_from_slice(&task.comm[8..]);
    f.comm[1].store(u64::from_le_bytes(c), Ordering::Relaxed);
    f.index.store(index, Ordering::Relaxed);
    f.cpu.store(rt.ctx.vcpu_index(), Ordering::Relaxed);
    f.pid.store(task.pid, Ordering::Relaxed);
    f.tid.store(task.tid, Ordering::Relaxed);
    f.unix_ns
        .store(g.epoch_unix_ns.wrapping_add(ts), Ordering::Relaxed);
    f.detail.store(detail, Ordering::Relaxed);
    f.state.store(READY, Ordering::Release);
    wake(st.wake);
}

fn wake(fd: RawFd) {
    let b = 1u8;
    // SAFETY: writes one byte from a live local to our non-blocking pipe;
    // a full pipe (EAGAIN) already holds a wake-up.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// What the thread read from the trap's atomics.
fn take_fired(st: &State) -> Option<LogEntry> {
    let f = &st.fired;
    if f.state.load(Ordering::Acquire) != READY {
        return None;
    }
    let t = st
        .plan
        .triggers
        .get(f.index.load(Ordering::Relaxed) as usize)?;
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(&f.comm[0].load(Ordering::Relaxed).to_le_bytes());
    comm[8..].copy_from_slice(&f.comm[1].load(Ordering::Relaxed).to_le_bytes());
    let n = comm.iter().position(|&b| b == 0).unwrap_or(16);
    Some(LogEntry {
        spec: t.spec.clone(),
        name: t.name.clone(),
        cpu: Some(f.cpu.load(Ordering::Relaxed)),
        pid: Some(f.pid.load(Ordering::Relaxed)),
        tid: Some(f.tid.load(Ordering::Relaxed)),
        comm: Some(String::from_utf8_lossy(&comm[..n]).into_owned()),
        unix_ns: f.unix_ns.load(Ordering::Relaxed),
        detail: f.detail.load(Ordering::Relaxed),
        ..LogEntry::default()
    })
}

fn trace_unix_ns() -> u64 {
    crate::G
        .get()
        .map(|g| g.epoch_unix_ns.wrapping_add(crate::now_ns(g)))
        .unwrap_or(0)
}

/// The trigger thread.
fn run(st: &'static State, handle: TriggerHandle, mut fifo: Option<File>, mut wake_r: File) {
    let mut buf = [0u8; 64];
    loop {
        let stopping = st.stop.load(Ordering::Acquire);
        if let Some(e) = take_fired(st) {
            snapshot(st, &handle, e, stopping);
            st.fired.state.store(IDLE, Ordering::Release);
        }
        let mut requests = 0usize;
        if let Some(f) = fifo.as_mut() {
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => requests += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        if requests > 0 {
            // Requests that arrived together share one snapshot.
            let e = LogEntry {
                spec: "sigusr1".into(),
                name: "SIGUSR1 to hvtrace".into(),
                unix_ns: trace_unix_ns(),
                coalesced: requests as u64 - 1,
                ..LogEntry::default()
            };
            snapshot(st, &handle, e, stopping);
        }
        if stopping {
            return;
        }
        let mut fds = [
            libc::pollfd {
                fd: wake_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fifo.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the two pollfd structs of the array
        // (a negative fd is ignored).
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        while matches!(wake_r.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Asks the writer for a snapshot and logs it once written. While QEMU
/// exits (`stopping`) the writer only writes it after the producers are
/// gone: the entry is then logged by `after_finish`.
fn snapshot(st: &State, handle: &TriggerHandle, mut e: LogEntry, stopping: bool) {
    let before = handle.snapshots();
    e.n = before;
    if !handle.trigger() {
        crate::note(format!(
            "triggers: the writer refused a snapshot for {}",
            e.spec
        ));
        log(st, &e);
        return;
    }
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    while !stopping && handle.snapshots() <= before && Instant::now() < deadline {
        if st.stop.load(Ordering::Acquire) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    e.coalesced += st.coalesced.swap(0, Ordering::Relaxed);
    if handle.snapshots() > before {
        e.snapshot = snapshot_dir(&st.out, before);
        log(st, &e);
    } else if let Ok(mut p) = st.pending.lock() {
        p.push(e);
    }
}

fn snapshot_dir(out: &Path, n: u64) -> Option<String> {
    let dir = out.join(format!("snapshot-{n}")).join("kernel");
    dir.join("metadata")
        .is_file()
        .then(|| dir.to_string_lossy().into_owned())
}

fn log(st: &State, e: &LogEntry) {
    let line = e.to_json_line();
    let res = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&st.plan.log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(err) = res {
        crate::note(format!("triggers: log {}: {err}", st.plan.log));
    }
}

/// At QEMU's exit, before the producers are dropped: stops the thread
/// (it asks for a snapshot of a trigger that has just fired).
pub(crate) fn before_finish() {
    let Some(st) = STATE.get() else { return };
    st.stop.store(true, Ordering::Release);
    wake(st.wake);
    let t = st.thread.lock().ok().and_then(|mut t| t.take());
    if let Some(t) = t {
        let _ = t.join();
    }
}

/// After the writer finished: logs the snapshots it wrote at the end.
pub(crate) fn after_finish() {
    let Some(st) = STATE.get() else { return };
    let pending = st
        .pending
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for mut e in pending {
        e.snapshot = snapshot_dir(&st.out, e.n);
        log(st, &e);
    }
}
