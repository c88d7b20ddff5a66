//! The trace clock's origin: a monotonic instant and the Unix time of that
//! same instant, which the metadata's clock `offset` carries so that readers
//! (and hvtrace's own `latency`) can place events in wall-clock time.
//!
//! The two clocks cannot be read at once. A thread preempted between the
//! two reads would shift every event of the trace by the time it lost
//! against wall time (on a loaded host, or in a nested guest, that is
//! milliseconds), so the Unix time is read between two monotonic reads,
//! several times, and the tightest bracket wins.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Brackets tried; the tightest is kept.
const TRIES: u32 = 16;
/// A bracket this tight is good enough to stop early.
const TIGHT: Duration = Duration::from_micros(2);

/// A trace clock origin: `unix_ns` is Unix time at `instant`, within
/// `uncertainty` either way.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    pub instant: Instant,
    pub unix_ns: u64,
    pub uncertainty: Duration,
}

impl Epoch {
    /// Reads both clocks as close together as this host allows.
    pub fn now() -> Epoch {
        let mut best: Option<Epoch> = None;
        for _ in 0..TRIES {
            let before = Instant::now();
            let unix = SystemTime::now();
            let after = Instant::now();
            let width = after - before;
            if best.is_some_and(|b| b.uncertainty <= width / 2) {
                continue;
            }
            best = Some(Epoch {
                instant: before + width / 2,
                unix_ns: unix
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                uncertainty: width / 2,
            });
            if width <= TIGHT {
                break;
            }
        }
        // TRIES > 0: the first try always fills `best`.
        best.unwrap_or_else(|| Epoch {
            instant: Instant::now(),
            unix_ns: 0,
            uncertainty: Duration::ZERO,
        })
    }

    /// Nanoseconds of the trace clock at `t` (0 before the origin).
    pub fn since(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.instant).as_nanos() as u64
    }

    /// The trace clock now.
    pub fn elapsed_ns(&self) -> u64 {
        self.since(Instant::now())
    }
}

/// CPU time consumed by the calling thread: unlike wall time, it does not
/// count the time the thread waited for a core on a shared machine.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call; CLOCK_THREAD_CPUTIME_ID is supported by Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_maps_the_trace_clock_onto_wall_time() {
        let e = Epoch::now();
        std::thread::sleep(Duration::from_millis(20));
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mapped = e.unix_ns + e.elapsed_ns();
        // Both read after the sleep: they agree to within the bracket and
        // the time between the two reads (generous for a loaded host).
        let skew = wall.abs_diff(mapped);
        assert!(
            skew < e.uncertainty.as_nanos() as u64 + 5_000_000,
            "skew {skew} ns"
        );
        assert!(e.elapsed_ns() >= 20_000_000);
        assert_eq!(e.since(e.instant - Duration::from_secs(1)), 0);
    }
}
