//! Where a vCPU thread is and since when: inside KVM_RUN (its guest runs,
//! or halts there) or out of it (in the monitor: handling an exit, parked,
//! waiting for another vCPU). When a run hangs, this tells a guest that
//! stopped making progress by itself from a monitor thread that blocked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::state::VcpuState;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Written by the vCPU thread around each KVM_RUN (relaxed atomics only).
#[derive(Default)]
pub(crate) struct Activity {
    in_run: AtomicBool,
    /// When the thread last entered or left KVM_RUN, ns after [`epoch`].
    since_ns: AtomicU64,
    /// KVM_RUN calls that returned.
    returns: AtomicU64,
}

impl Activity {
    pub(crate) fn entering_run(&self) {
        self.mark(true);
    }

    pub(crate) fn left_run(&self) {
        self.returns.fetch_add(1, Ordering::Relaxed);
        self.mark(false);
    }

    fn mark(&self, in_run: bool) {
        let ns = epoch().elapsed().as_nanos() as u64;
        self.since_ns.store(ns, Ordering::Relaxed);
        self.in_run.store(in_run, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, state: VcpuState) -> VcpuActivity {
        let since = Duration::from_nanos(self.since_ns.load(Ordering::Relaxed));
        VcpuActivity {
            state,
            in_kvm_run: self.in_run.load(Ordering::Relaxed),
            for_: epoch().elapsed().saturating_sub(since),
            kvm_run_returns: self.returns.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of one vCPU thread's [`Activity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuActivity {
    pub state: VcpuState,
    /// Inside KVM_RUN (else in the monitor).
    pub in_kvm_run: bool,
    /// For how long, until the snapshot.
    pub for_: Duration,
    /// KVM_RUN calls that returned so far.
    pub kvm_run_returns: u64,
}

impl std::fmt::Display for VcpuActivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if self.in_kvm_run {
            "inside KVM_RUN"
        } else {
            "in the monitor"
        };
        write!(
            f,
            "{place} for {:.1} s ({:?}; {} exits of KVM_RUN so far)",
            self.for_.as_secs_f64(),
            self.state,
            self.kvm_run_returns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_where_and_for_how_long() {
        let a = Activity::default();
        a.entering_run();
        std::thread::sleep(Duration::from_millis(20));
        let s = a.snapshot(VcpuState::Running);
        assert!(s.in_kvm_run);
        assert!(s.for_ >= Duration::from_millis(20), "{s:?}");
        assert_eq!(s.kvm_run_returns, 0);
        a.left_run();
        let s = a.snapshot(VcpuState::Paused);
        assert!(!s.in_kvm_run);
        assert!(s.for_ < Duration::from_millis(20), "{s:?}");
        assert_eq!(s.kvm_run_returns, 1);
        assert!(s
            .to_string()
            .starts_with("in the monitor for 0.0 s (Paused; 1 exits"));
    }
}
