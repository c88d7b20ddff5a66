//! Flight-recorder triggers (`hvtrace record --trigger`) as both engines run
//! them: the conditions checked on the trap path, the `hvtrace_trigger`
//! marker, and the trigger thread that asks ltt-writer for a snapshot and
//! logs it. The engine finds the sites (execution callbacks, software
//! traps) and calls in here when one is hit.
//!
//! Trap path: a trigger that holds writes its marker event, closes its
//! vCPU's partial packet (so the triggering event is in the snapshot even if
//! this vCPU stays silent), notes who fired in atomics and wakes the thread
//! through a pipe: no allocation, no lock, no text. The thread asks the
//! writer for the snapshot ([`ltt_writer::TriggerHandle`]), waits for it
//! and appends a line to the log. It also reads snapshot requests (a byte
//! each, from hvtrace's SIGUSR1) from the plan's request FIFO.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use introspect::ctx::{read_u64, VcpuContext};
use introspect::pt_regs;
use introspect::triggers::{Condition, LogEntry, TriggerPlan};
use introspect::Task;
use ltt_writer::catalog::CatalogError;
use ltt_writer::{Catalog, FieldDecl, FieldType, Producer, TaskCtx, TriggerHandle, Value};

/// The marker event written where a trigger fires.
pub const MARKER: &str = "hvtrace_trigger";

/// How long the trigger thread waits for the writer to write a snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);
/// How often the thread wakes up without a request (stop checks).
const POLL_MS: i32 = 50;

const IDLE: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// Declares the marker event; returns its id.
pub fn declare_marker(catalog: &mut Catalog) -> Result<u32, CatalogError> {
    catalog.add_event(
        MARKER,
        vec![
            FieldDecl::new("trigger", FieldType::Str),
            FieldDecl::new("detail", FieldType::int(64, true)),
        ],
    )
}

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

/// Where and when a trigger fired: the vCPU, the trace time and the same
/// instant in Unix time.
#[derive(Debug, Clone, Copy)]
pub struct FiredAt {
    pub cpu: u32,
    pub ts: u64,
    pub unix_ns: u64,
}

/// The engine's side of the runtime: its trace clock and its notes.
pub struct Host {
    /// The trace clock now, in Unix nanoseconds (SIGUSR1 entries).
    pub now_unix_ns: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Where the runtime's own problems are reported.
    pub note: Box<dyn Fn(String) + Send + Sync>,
}

/// The triggers of one recording, shared by every vCPU and the thread.
pub struct Triggers {
    plan: TriggerPlan,
    marker: Option<u32>,
    /// (compat, nr, ret, trigger index) of the syscall triggers.
    syscalls: Vec<(bool, u32, i64, u32)>,
    fired: Fired,
    /// Hits while a snapshot was pending (they share it).
    coalesced: AtomicU64,
    /// Write end of the wake-up pipe (non-blocking; closed on drop).
    wake: RawFd,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Snapshots requested and not yet confirmed when the thread stopped.
    pending: Mutex<Vec<LogEntry>>,
    out: PathBuf,
    host: Host,
}

impl Drop for Triggers {
    fn drop(&mut self) {
        // SAFETY: `wake` is the write end pipe2 opened for this value alone.
        unsafe { libc::close(self.wake) };
    }
}

impl Triggers {
    /// Starts the trigger thread for `plan` (the marker declared as
    /// `marker`) on the writer of `handle`, writing snapshots under `out`.
    pub fn start(
        plan: TriggerPlan,
        marker: Option<u32>,
        handle: TriggerHandle,
        out: &Path,
        host: Host,
    ) -> Result<Arc<Self>, String> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err("cannot create the wake-up pipe".into());
        }
        // SAFETY: fds[0] is the read end pipe2 just opened, owned from here on.
        let wake_r = unsafe { File::from_raw_fd(fds[0]) };
        let fifo = if plan.request_fifo.is_empty() {
            None
        } else {
            // Read and write: opening does not wait for a writer, and the
            // FIFO never reports end-of-file when hvtrace closes its end.
            match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&plan.request_fifo)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    (host.note)(format!("triggers: request FIFO {}: {e}", plan.request_fifo));
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
        let st = Arc::new(Triggers {
            plan,
            marker,
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
            out: out.to_path_buf(),
            host,
        });
        let for_thread = Arc::clone(&st);
        let t = std::thread::Builder::new()
            .name("hvtrace-triggers".into())
            .spawn(move || run(&for_thread, handle, fifo, wake_r))
            .map_err(|e| format!("cannot start the trigger thread: {e}"))?;
        if let Ok(mut slot) = st.thread.lock() {
            *slot = Some(t);
        }
        Ok(st)
    }

    /// The plan's triggers.
    pub fn plan(&self) -> &TriggerPlan {
        &self.plan
    }

    /// At a syscall's return (of the compat table if `compat`), its
    /// `pt_regs` at `regs`: the trigger that fires and the value returned,
    /// read by `ret()` only for a watched syscall.
    pub fn syscall_fires<C: VcpuContext + ?Sized>(
        &self,
        ctx: &C,
        compat: bool,
        regs: u64,
        ret: impl FnOnce() -> Option<u64>,
    ) -> Option<(u32, i64)> {
        let nr = read_u64(ctx, regs.wrapping_add(pt_regs::ORIG_AX)).ok()? as u32;
        let mine = |s: &&(bool, u32, i64, u32)| s.0 == compat && s.1 == nr;
        if !self.syscalls.iter().any(|s| mine(&s)) {
            return None;
        }
        let ret = ret()? as i64;
        let s = self.syscalls.iter().filter(mine).find(|s| s.2 == ret)?;
        Some((s.3, ret))
    }

    /// The detail trigger `index` fires with at the entry of its function
    /// (`rdi`: the first argument), or None when its condition does not
    /// hold (`signal-exit`: `do_exit(code)` without a signal).
    pub fn entry_fires(&self, index: u32, rdi: u64) -> Option<i64> {
        match self.plan.triggers.get(index as usize)?.cond {
            // do_exit(long code): a signal in the low 7 bits.
            Condition::SignalExit { .. } => {
                let code = rdi as i64;
                (code & 0x7f != 0).then_some(code)
            }
            Condition::Enter { .. } => Some(0),
            _ => None,
        }
    }

    /// The trap path of trigger `index` that holds, with `task` running
    /// `at`: marker, packet, atomics, wake-up. The engine writes what its
    /// vCPU holds back before calling this.
    pub fn fire(
        &self,
        index: u32,
        mut producer: Option<&mut Producer>,
        task: &Task,
        at: FiredAt,
        detail: i64,
    ) {
        let FiredAt { cpu, ts, unix_ns } = at;
        let Some(t) = self.plan.triggers.get(index as usize) else {
            return;
        };
        if let (Some(p), Some(id)) = (producer.as_deref_mut(), self.marker) {
            let ctx = TaskCtx::new(task.pid, task.tid, &task.comm);
            let _ = p.emit(
                id,
                ts,
                &ctx,
                &[Value::Str(t.name.as_bytes()), Value::I(detail)],
            );
        }
        let f = &self.fired;
        if f.state
            .compare_exchange(IDLE, WRITING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Close this vCPU's packet now: it holds the event that fired.
        if let Some(p) = producer {
            let _ = p.flush();
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&task.comm[..8]);
        f.comm[0].store(u64::from_le_bytes(c), Ordering::Relaxed);
        c.copy_from_slice(&task.comm[8..]);
        f.comm[1].store(u64::from_le_bytes(c), Ordering::Relaxed);
        f.index.store(index, Ordering::Relaxed);
        f.cpu.store(cpu, Ordering::Relaxed);
        f.pid.store(task.pid, Ordering::Relaxed);
        f.tid.store(task.tid, Ordering::Relaxed);
        f.unix_ns.store(unix_ns, Ordering::Relaxed);
        f.detail.store(detail, Ordering::Relaxed);
        f.state.store(READY, Ordering::Release);
        wake(self.wake);
    }

    /// Before the producers are dropped: stops the thread (it asks for a
    /// snapshot of a trigger that has just fired).
    pub fn before_finish(&self) {
        self.stop.store(true, Ordering::Release);
        wake(self.wake);
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// After the writer finished: logs the snapshots it wrote at the end.
    pub fn after_finish(&self) {
        let pending = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        for mut e in pending {
            e.snapshot = snapshot_dir(&self.out, e.n);
            self.log(&e);
        }
    }

    /// What the thread read from the trap's atomics.
    fn take_fired(&self) -> Option<LogEntry> {
        let f = &self.fired;
        if f.state.load(Ordering::Acquire) != READY {
            return None;
        }
        let t = self
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

    /// Asks the writer for a snapshot and logs it once written. While the
    /// run ends (`stopping`) the writer only writes it after the producers
    /// are gone: the entry is then logged by `after_finish`.
    fn snapshot(&self, handle: &TriggerHandle, mut e: LogEntry, stopping: bool) {
        let before = handle.snapshots();
        e.n = before;
        if !handle.trigger() {
            (self.host.note)(format!(
                "triggers: the writer refused a snapshot for {}",
                e.spec
            ));
            self.log(&e);
            return;
        }
        let deadline = Instant::now() + SNAPSHOT_WAIT;
        while !stopping && handle.snapshots() <= before && Instant::now() < deadline {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        e.coalesced += self.coalesced.swap(0, Ordering::Relaxed);
        if handle.snapshots() > before {
            e.snapshot = snapshot_dir(&self.out, before);
            self.log(&e);
        } else if let Ok(mut p) = self.pending.lock() {
            p.push(e);
        }
    }

    fn log(&self, e: &LogEntry) {
        let line = e.to_json_line();
        let res = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.plan.log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(err) = res {
            (self.host.note)(format!("triggers: log {}: {err}", self.plan.log));
        }
    }
}

fn wake(fd: RawFd) {
    let b = 1u8;
    // A full pipe (EAGAIN) already holds a wake-up: the result is ignored.
    // SAFETY: writes one byte from a live local to our non-blocking pipe.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

fn snapshot_dir(out: &Path, n: u64) -> Option<String> {
    let dir = out.join(format!("snapshot-{n}")).join("kernel");
    dir.join("metadata")
        .is_file()
        .then(|| dir.to_string_lossy().into_owned())
}

/// The trigger thread.
fn run(st: &Triggers, handle: TriggerHandle, mut fifo: Option<File>, mut wake_r: File) {
    let mut buf = [0u8; 64];
    loop {
        let stopping = st.stop.load(Ordering::Acquire);
        if let Some(e) = st.take_fired() {
            st.snapshot(&handle, e, stopping);
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
                unix_ns: (st.host.now_unix_ns)(),
                coalesced: requests as u64 - 1,
                ..LogEntry::default()
            };
            st.snapshot(&handle, e, stopping);
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
        // A negative fd (no FIFO) is ignored by poll.
        // SAFETY: poll reads and writes the two pollfd structs of the array.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        while matches!(wake_r.read(&mut buf), Ok(n) if n > 0) {}
    }
}
