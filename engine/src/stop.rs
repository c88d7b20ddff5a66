//! A `--disk` boot without command that ends at the first trigger's
//! snapshot, on either engine.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::guest::GuestEnd;

/// Ends a run at the first trigger's snapshot (or at the user's
/// interrupt): one flag for the console loop, set from either.
pub struct StopOnSnapshot {
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StopOnSnapshot {
    /// For a disk boot without a command (`disk_without_command`), with
    /// triggers armed.
    pub fn wanted(
        disk_without_command: bool,
        triggers: Option<&crate::triggers::Armed>,
        interrupt: &Arc<AtomicBool>,
    ) -> Option<Self> {
        let t = triggers?;
        disk_without_command.then(|| Self::start(interrupt, t.snapshots()))
    }

    pub fn start(interrupt: &Arc<AtomicBool>, snapshots: Arc<AtomicUsize>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, fired, done, interrupt) = (
                Arc::clone(&stop),
                Arc::clone(&fired),
                Arc::clone(&done),
                Arc::clone(interrupt),
            );
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    if snapshots.load(Ordering::Acquire) > 0 {
                        fired.store(true, Ordering::Release);
                        stop.store(true, Ordering::Release);
                    }
                    if interrupt.load(Ordering::Acquire) {
                        stop.store(true, Ordering::Release);
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        };
        StopOnSnapshot {
            stop,
            fired,
            interrupt: Arc::clone(interrupt),
            done,
            thread: Some(thread),
        }
    }

    /// The flag the console loop watches.
    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// How the run ended, with a stop for the snapshot said as such.
    pub fn finish(mut self, end: GuestEnd) -> GuestEnd {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let by_trigger =
            self.fired.load(Ordering::Acquire) && !self.interrupt.load(Ordering::Acquire);
        match end {
            GuestEnd::Interrupted if by_trigger => {
                eprintln!("hvtrace: record: stopped the guest at the first trigger's snapshot");
                GuestEnd::Triggered
            }
            other => other,
        }
    }
}
