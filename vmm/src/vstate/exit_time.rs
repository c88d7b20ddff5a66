//! What the tracer costs a vCPU in time the guest can see.
//!
//! While a vCPU is out of KVM_RUN its guest does not run, but its clocks
//! (TSC, kvmclock) go on: every exit the tracer causes (a debug exit, a
//! port-I/O trap, a kick, a write to a watched page) is time the guest
//! sees pass without having run. The vCPU thread adds up the part it can
//! measure, from KVM_RUN's return to the next KVM_RUN; the part inside
//! the host kernel (the exit and the entry themselves) is the exit count
//! times one exit round trip. That round trip is measured in the run
//! itself where it can be: a KVM_RUN that single-steps the guest runs one
//! instruction, so its duration is a round trip under the run's own load
//! and state. Without single-steps, `bench::pio_round_trip` prices it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Single-step runs kept per vCPU (the newest; enough for a median).
const STEP_SAMPLES: usize = 1024;

/// Per-vCPU sums, written by the vCPU thread (atomics only: no lock and no
/// allocation on the exit path), read from anywhere.
pub(crate) struct ExitTime {
    exits: AtomicU64,
    handling_ns: AtomicU64,
    in_run_ns: AtomicU64,
    /// Durations of single-step KVM_RUNs, ns: a ring of STEP_SAMPLES
    /// (0: empty), and how many were ever written.
    steps: [AtomicU64; STEP_SAMPLES],
    steps_written: AtomicU64,
}

impl Default for ExitTime {
    fn default() -> Self {
        ExitTime {
            exits: AtomicU64::new(0),
            handling_ns: AtomicU64::new(0),
            in_run_ns: AtomicU64::new(0),
            steps: std::array::from_fn(|_| AtomicU64::new(0)),
            steps_written: AtomicU64::new(0),
        }
    }
}

/// A snapshot of [`ExitTime`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TracerTime {
    /// Exits of KVM_RUN the tracer caused.
    pub exits: u64,
    /// Time out of KVM_RUN handling them (and kicks that found the vCPU
    /// outside KVM_RUN), in ns.
    pub handling_ns: u64,
    /// Median duration of a KVM_RUN that single-stepped one guest
    /// instruction (an exit round trip measured in the run), if any.
    pub step_run_ns: Option<u64>,
    /// How many such runs that median is over (the newest ones).
    pub step_runs: u64,
    /// Time inside KVM_RUN, whatever ended it, in ns: the guest's own
    /// execution plus the round trips.
    pub in_run_ns: u64,
}

impl TracerTime {
    /// The time the guest could see: the handling plus one round trip
    /// through the host kernel per exit.
    pub fn guest_visible_ns(&self, round_trip_ns: f64) -> u64 {
        self.handling_ns + (self.exits as f64 * round_trip_ns) as u64
    }
}

impl ExitTime {
    pub(crate) fn add(&self, since: Instant, exited: bool) {
        let ns = since.elapsed().as_nanos() as u64;
        self.handling_ns.fetch_add(ns, Ordering::Relaxed);
        if exited {
            self.exits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A KVM_RUN entered at `entered` has returned.
    pub(crate) fn in_run(&self, entered: Instant) {
        let ns = entered.elapsed().as_nanos() as u64;
        self.in_run_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A KVM_RUN that single-stepped the guest took `d`.
    pub(crate) fn step_run(&self, d: Duration) {
        let n = self.steps_written.fetch_add(1, Ordering::Relaxed);
        let ns = (d.as_nanos() as u64).max(1);
        self.steps[n as usize % STEP_SAMPLES].store(ns, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TracerTime {
        let (step_run_ns, step_runs) = {
            let mut v: Vec<u64> = self
                .steps
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .filter(|&ns| ns > 0)
                .collect();
            v.sort_unstable();
            (v.get(v.len() / 2).copied(), v.len() as u64)
        };
        TracerTime {
            exits: self.exits.load(Ordering::Relaxed),
            handling_ns: self.handling_ns.load(Ordering::Relaxed),
            step_run_ns,
            step_runs,
            in_run_ns: self.in_run_ns.load(Ordering::Relaxed),
        }
    }
}
