//! `syscalls N`: N rounds of a fixed mix of syscalls, each issued with the
//! `syscall` instruction (no vDSO), counted per kernel syscall name.
//! `elapsed_ns` is the guest's own CLOCK_MONOTONIC span of the work, read by
//! one clock_gettime just before its first counted syscall and one just
//! after its last (those two are not in the counts).

use workloads::{arg_u64, check, Counts};

const PATH: &[u8] = b"/etc/hvtrace-probe\0";

fn main() {
    let rounds = arg_u64("syscalls N");
    let mut counts = Counts::default();
    let started = monotonic_ns();
    // SAFETY: the path is a NUL-terminated constant.
    let devnull = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/dev/null".as_ptr(),
            libc::O_WRONLY,
        )
    };
    check(devnull, "open /dev/null");
    counts.add("openat", 1);
    let mut buf = [0u8; 64];
    for _ in 0..rounds {
        // SAFETY: no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) };
        counts.add("getpid", 1);

        // SAFETY: PATH is NUL-terminated.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                PATH.as_ptr(),
                libc::O_RDONLY,
            )
        };
        check(fd, "openat /etc/hvtrace-probe");
        counts.add("openat", 1);
        // SAFETY: buf is a local array of buf.len() bytes.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
        check(n, "read");
        counts.add("read", 1);
        // SAFETY: fd is ours.
        unsafe { libc::syscall(libc::SYS_close, fd) };
        counts.add("close", 1);

        // SAFETY: writes 8 bytes of buf.
        let w = unsafe { libc::syscall(libc::SYS_write, devnull, buf.as_ptr(), 8usize) };
        check(w, "write /dev/null");
        counts.add("write", 1);

        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: zero is a valid timespec; no remainder requested.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &zero,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        counts.add("nanosleep", 1);

        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid, writable timespec.
        unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
        counts.add("clock_gettime", 1);
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::syscall(libc::SYS_close, devnull) };
    counts.add("close", 1);
    let elapsed = monotonic_ns().saturating_sub(started);
    counts.print(&[
        ("rounds", rounds.to_string()),
        ("elapsed_ns", elapsed.to_string()),
    ]);
}

/// CLOCK_MONOTONIC through the syscall itself (no vDSO), so that the read
/// is an event of the trace, not a guess about where it happened.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
