//! The vCPU thread's state machine (running, paused, stopped), its kick
//! (a real-time signal whose handler sets `immediate_exit`), and the handle
//! other threads use to drive it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, Once, OnceLock};
use std::time::Duration;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::activity::{Activity, VcpuActivity};
use super::exit_time::{ExitTime, TracerTime};
pub use super::state::VcpuState;
use super::swbp::SwBreakpoints;
use crate::breakpoints::{DebugError, DebugState, HwBreakpoint, RegCache};
use crate::devices::lock;

/// Offset from SIGRTMIN of the kick signal.
pub const KICK_SIGNAL_OFFSET: i32 = 0;

/// What the controller wants the vCPU to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Run,
    Pause,
    Stop,
}

/// A vCPU as a handler sees it, valid on the vCPU's own thread while the
/// guest is stopped in an exit (or parked).
pub struct VcpuCtx<'a> {
    pub(crate) index: u32,
    pub(crate) fd: &'a VcpuFd,
    pub(crate) mem: &'a GuestMemoryMmap,
    pub(crate) dbg: &'a mut DebugState,
    pub(crate) cache: &'a mut RegCache,
    pub(crate) sw: &'a SwBreakpoints,
    /// Every vCPU of the VM (empty where pausing the others makes no sense).
    pub(crate) vcpus: &'a [Arc<Shared>],
}

/// Work for a vCPU's own thread, run on its [`VcpuCtx`] (handles' `run_on`).
pub(crate) type Request = Box<dyn FnOnce(&mut VcpuCtx<'_>) + Send>;

pub(crate) struct Control {
    pub(crate) want: Want,
    pub(crate) requests: VecDeque<Request>,
}

/// State shared between a vCPU thread and its handles.
pub(crate) struct Shared {
    pub(crate) index: u32,
    pub(crate) control: Mutex<Control>,
    pub(crate) cond: Condvar,
    pub(crate) state: AtomicU8,
    /// Set whenever `control` changed: the thread's fast-path check.
    pub(crate) ctl_pending: AtomicBool,
    pub(crate) kick_pending: AtomicBool,
    /// Guest-visible time of the exits the tracer caused.
    pub(crate) tracer_time: ExitTime,
    /// Inside or out of KVM_RUN, since when (for a hung run's report).
    pub(crate) activity: Activity,
    thread: OnceLock<libc::pthread_t>,
}

impl Shared {
    pub(crate) fn new(index: u32) -> Arc<Self> {
        Arc::new(Shared {
            index,
            control: Mutex::new(Control {
                want: Want::Run,
                requests: VecDeque::new(),
            }),
            cond: Condvar::new(),
            state: AtomicU8::new(VcpuState::Created as u8),
            ctl_pending: AtomicBool::new(false),
            kick_pending: AtomicBool::new(false),
            tracer_time: Default::default(),
            activity: Default::default(),
            thread: OnceLock::new(),
        })
    }

    pub(crate) fn state(&self) -> VcpuState {
        VcpuState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, s: VcpuState) {
        let _g = lock(&self.control);
        self.state.store(s as u8, Ordering::Release);
        self.cond.notify_all();
    }

    /// Called on the vCPU thread before its loop.
    pub(crate) fn register_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let _ = self.thread.set(unsafe { libc::pthread_self() });
    }

    /// Interrupts KVM_RUN (or makes the next one return at once).
    pub(crate) fn signal(&self) {
        if let Some(t) = self.thread.get() {
            if self.state() != VcpuState::Stopped {
                // SAFETY: `t` is the id of our vCPU thread, which has not
                // left its loop (and a stale id only yields ESRCH); the
                // signal's handler was installed by `install_kick_handler`.
                unsafe {
                    libc::pthread_kill(*t, vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET);
                }
            }
        }
    }

    pub(crate) fn change(&self, f: impl FnOnce(&mut Control)) {
        let mut c = lock(&self.control);
        f(&mut c);
        self.ctl_pending.store(true, Ordering::Release);
        self.cond.notify_all();
        drop(c);
        self.signal();
    }
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` is this thread's mapped kvm_run, set by
        // `set_thread_kvm_run` and valid while the VcpuFd lives on this
        // thread; a one-byte volatile store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

/// Installs the process-wide kick signal handler once.
pub(crate) fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = vmm_sys_util::signal::register_signal_handler(
            vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET,
            kick_handler,
        );
    });
    res
}

/// Records this thread's kvm_run for the kick handler (null to forget it).
pub(crate) fn set_thread_kvm_run(p: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(p));
}

/// A handle on one vCPU thread, usable from any thread.
#[derive(Clone)]
pub struct VcpuHandle {
    pub(crate) shared: Arc<Shared>,
}

impl VcpuHandle {
    /// This vCPU's index.
    pub fn index(&self) -> u32 {
        self.shared.index
    }

    /// Current state.
    pub fn state(&self) -> VcpuState {
        self.shared.state()
    }

    /// Kicks the vCPU: it leaves KVM_RUN and its handler gets
    /// `DebugEvent::Kick` on the vCPU thread.
    pub fn kick(&self) {
        self.shared.kick_pending.store(true, Ordering::Release);
        self.shared.signal();
    }

    /// The time the tracer kept this vCPU out of its guest so far.
    pub fn tracer_time(&self) -> TracerTime {
        self.shared.tracer_time.snapshot()
    }

    /// Where the vCPU thread is (inside KVM_RUN or in the monitor) and
    /// since when: for saying where a run that timed out stood.
    pub fn activity(&self) -> VcpuActivity {
        self.shared.activity.snapshot(self.shared.state())
    }

    /// Asks the vCPU to park and waits (up to `timeout`) until it has.
    pub fn pause(&self, timeout: Duration) -> bool {
        self.shared.change(|c| {
            if c.want == Want::Run {
                c.want = Want::Pause
            }
        });
        self.wait_state(
            |s| s == VcpuState::Paused || s == VcpuState::Stopped,
            timeout,
        )
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&self) {
        self.shared.change(|c| {
            if c.want == Want::Pause {
                c.want = Want::Run
            }
        });
    }

    /// Asks the vCPU thread to stop (does not wait).
    pub fn stop(&self) {
        self.shared.change(|c| c.want = Want::Stop);
    }

    /// Waits until the state satisfies `pred`; false on timeout.
    pub fn wait_state(&self, pred: impl Fn(VcpuState) -> bool, timeout: Duration) -> bool {
        let g = lock(&self.shared.control);
        let (_g, r) = self
            .shared
            .cond
            .wait_timeout_while(g, timeout, |_| !pred(self.shared.state()))
            .unwrap_or_else(|e| e.into_inner());
        !r.timed_out()
    }

    /// Runs `f` on the vCPU thread at its next exit (at once if it is
    /// paused, after a kick if it runs) and returns its result.
    pub fn run_on<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut VcpuCtx<'_>) -> R + Send + 'static,
    ) -> Result<R, DebugError> {
        self.request(f)?
            .recv()
            .map_err(|_| DebugError::VcpuGone(self.shared.index))
    }

    /// [`Self::run_on`], giving up after `timeout` (a vCPU thread that is
    /// stuck: the request then runs at its next exit, if any, unseen).
    pub fn run_on_within<R: Send + 'static>(
        &self,
        timeout: std::time::Duration,
        f: impl FnOnce(&mut VcpuCtx<'_>) -> R + Send + 'static,
    ) -> Result<R, DebugError> {
        self.request(f)?.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => DebugError::VcpuBusy(self.shared.index, timeout),
            mpsc::RecvTimeoutError::Disconnected => DebugError::VcpuGone(self.shared.index),
        })
    }

    /// Queues `f` for the vCPU thread and kicks it; the receiver of its
    /// result.
    fn request<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut VcpuCtx<'_>) -> R + Send + 'static,
    ) -> Result<mpsc::Receiver<R>, DebugError> {
        let (tx, rx) = mpsc::channel();
        {
            let mut c = lock(&self.shared.control);
            if self.shared.state() == VcpuState::Stopped {
                return Err(DebugError::VcpuGone(self.shared.index));
            }
            c.requests.push_back(Box::new(move |ctx| {
                let _ = tx.send(f(ctx));
            }));
            self.shared.ctl_pending.store(true, Ordering::Release);
            self.shared.cond.notify_all();
        }
        self.shared.signal();
        Ok(rx)
    }

    /// General registers (see [`Self::run_on`]).
    pub fn regs(&self) -> Result<kvm_bindings::kvm_regs, DebugError> {
        self.run_on(|c| c.regs())?
    }

    /// Special registers.
    pub fn sregs(&self) -> Result<kvm_bindings::kvm_sregs, DebugError> {
        self.run_on(|c| c.sregs())?
    }

    /// Sets general registers.
    pub fn set_regs(&self, regs: kvm_bindings::kvm_regs) -> Result<(), DebugError> {
        self.run_on(move |c| c.set_regs(&regs))
    }

    /// Sets hardware breakpoint `slot`.
    pub fn set_hw_breakpoint(
        &self,
        slot: usize,
        bp: Option<HwBreakpoint>,
    ) -> Result<(), DebugError> {
        self.run_on(move |c| c.set_hw_breakpoint(slot, bp))?
    }
}
