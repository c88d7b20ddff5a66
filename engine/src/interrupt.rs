//! SIGINT and SIGTERM to hvtrace. Before a guest starts (image, symbols,
//! probe plan) there is nothing to stop: hvtrace exits at once with
//! 128 + the signal. From the guest's start the first signal ends the run
//! in order (QEMU gets SIGTERM so the plugin finishes the trace; the KVM
//! monitor stops its vCPUs and finishes it), the summary is printed and
//! hvtrace exits with 128 + that signal. A second signal while QEMU is
//! being stopped kills it at once (SIGKILL) instead of waiting up to
//! 10 s: the trace then ends at the last packet written.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The first signal received (0: none).
static FIRST: AtomicI32 = AtomicI32::new(0);
/// Signals received so far.
static COUNT: AtomicU32 = AtomicU32::new(0);
/// Set once a guest is about to start: from then on the run loop stops it.
static GUEST_STARTED: AtomicBool = AtomicBool::new(false);
/// Set by a second signal: stop QEMU without a grace period.
static HURRY: AtomicBool = AtomicBool::new(false);

/// The flag the run loops poll, with the handler thread installed once
/// per process (later calls return the same flag).
pub fn install() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(mut signals) => {
                let stop = Arc::clone(&flag);
                std::thread::spawn(move || {
                    for sig in signals.forever() {
                        on_signal(sig, &stop);
                    }
                });
            }
            // Only fails for forbidden signals, which these are not; the
            // default action (exit) then still leaves no child behind
            // (QEMU dies with hvtrace, see guest::run_qemu).
            Err(e) => eprintln!("hvtrace: cannot handle SIGINT/SIGTERM: {e}"),
        }
        flag
    })
    .clone()
}

fn on_signal(sig: i32, stop: &AtomicBool) {
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    let _ = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    if !GUEST_STARTED.load(Ordering::SeqCst) {
        eprintln!(
            "hvtrace: {}: stopped before the guest started (nothing was traced)",
            name(sig)
        );
        std::process::exit(128 + sig);
    }
    if n == 1 {
        eprintln!(
            "hvtrace: {}: stopping the guest and finishing the trace (send it again to stop QEMU at once)",
            name(sig)
        );
    } else {
        eprintln!(
            "hvtrace: {} again: stopping at once; the trace ends at the last packet written",
            name(sig)
        );
        HURRY.store(true, Ordering::SeqCst);
    }
}

/// Marks the start of the guest phase: signals from now on end the run in
/// order instead of exiting at once.
pub fn guest_starting() {
    GUEST_STARTED.store(true, Ordering::SeqCst);
}

/// The first signal received, if any.
pub fn received() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// True once a second signal asked to stop without a grace period.
pub fn hurry() -> bool {
    HURRY.load(Ordering::SeqCst)
}

/// `SIGINT`, `SIGTERM`.
pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
