//! Issue 16, "nothing lost, nothing hung": signals to hvtrace in every
//! phase, QEMU killed under it, guests that panic, hang or reboot. Each
//! case asserts the exit status the README documents, the message, that
//! babeltrace2 reads the trace (with events up to the fault where the
//! guest was traced) and that no QEMU of this run is left. On the QEMU
//! engine with the real 6.1 image.

mod common;
mod fault_support;

use fault_support::{Action, Case, Trace, Wait};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// A guest command that makes syscalls until stopped, printing
/// `FAULT-TRACING` after each round (so some are in the trace by then).
const BUSY: &str = "while :; do /bin/syscalls 200 > /dev/null; echo FAULT-TRACING; done";

#[test]
fn signals_to_hvtrace_stop_every_phase_cleanly() {
    let cases = [
        Case {
            name: "SIGINT while recovering symbols",
            // No symbol cache: the recovery takes seconds.
            fresh_cache: true,
            script: BUSY,
            opts: &[],
            action: Action::Signal(Wait::Cache("symbols"), SIGINT),
            status: 128 + SIGINT,
            says: &["SIGINT: stopped before the guest started"],
            trace: Trace::None,
        },
        Case {
            name: "SIGINT while booting",
            fresh_cache: false,
            script: BUSY,
            opts: &[],
            // The plugin has started the trace: QEMU runs, the kernel is
            // not up yet.
            action: Action::Signal(Wait::File("kernel/metadata"), SIGINT),
            status: 128 + SIGINT,
            says: &["interrupted by SIGINT; the guest was stopped"],
            trace: Trace::Readable,
        },
        Case {
            name: "SIGINT while tracing",
            fresh_cache: false,
            script: BUSY,
            opts: &[],
            action: Action::Signal(Wait::Stderr("FAULT-TRACING"), SIGINT),
            status: 128 + SIGINT,
            says: &[
                "interrupted by SIGINT; the guest was stopped",
                "the run ended early (Interrupted)",
            ],
            trace: Trace::Command("syscalls"),
        },
        Case {
            name: "a second SIGINT while the trace is finished",
            fresh_cache: false,
            script: BUSY,
            opts: &[],
            action: Action::SignalTwice(Wait::Stderr("FAULT-TRACING"), SIGINT),
            status: 128 + SIGINT,
            says: &[
                "SIGINT again: stopping at once",
                "interrupted by SIGINT; the guest was stopped",
            ],
            trace: Trace::Readable,
        },
        Case {
            name: "SIGTERM while tracing",
            fresh_cache: false,
            script: BUSY,
            opts: &[],
            action: Action::Signal(Wait::Stderr("FAULT-TRACING"), SIGTERM),
            status: 128 + SIGTERM,
            says: &["interrupted by SIGTERM; the guest was stopped"],
            trace: Trace::Command("syscalls"),
        },
    ];
    fault_support::run_all(&cases);
}

#[test]
fn qemu_and_guest_faults_end_with_a_readable_trace() {
    let cases = [
        Case {
            name: "QEMU killed (SIGKILL) while tracing",
            fresh_cache: false,
            script: BUSY,
            opts: &[],
            action: Action::KillQemu(Wait::Stderr("FAULT-TRACING"), SIGKILL),
            status: 125,
            says: &[
                "QEMU ended by itself: signal: 9",
                "the guest stopped without reporting the command's exit status",
            ],
            trace: Trace::Readable,
        },
        Case {
            name: "the guest kernel panics",
            fresh_cache: false,
            script:
                "echo FAULT-TRACING; /bin/syscalls 100 > /dev/null; echo c > /proc/sysrq-trigger",
            opts: &[],
            action: Action::None,
            status: 125,
            says: &["the guest kernel panicked: Kernel panic - not syncing"],
            trace: Trace::Command("syscalls"),
        },
        Case {
            name: "the guest hangs",
            fresh_cache: false,
            script: "/bin/syscalls 100 > /dev/null; echo FAULT-TRACED; exec sleep 100000",
            opts: &["--timeout", "40"],
            action: Action::None,
            status: 125,
            says: &["timed out after 40 s; the guest was stopped"],
            // A loaded machine may not reach the command in 40 s: its
            // syscalls are asked for when the guest said they were made.
            trace: Trace::CommandIfSaid("syscalls", "FAULT-TRACED"),
        },
        Case {
            name: "the guest reboots",
            fresh_cache: false,
            // QEMU runs with -no-reboot: a reboot ends it, no boot loop.
            script: "echo FAULT-TRACING; /bin/syscalls 100 > /dev/null; reboot -f",
            opts: &[],
            action: Action::None,
            status: 125,
            says: &[
                "the guest rebooted (QEMU runs with -no-reboot, so that ends the run) without reporting the command's exit status",
            ],
            trace: Trace::Command("syscalls"),
        },
    ];
    fault_support::run_all(&cases);
}
