//! `pingpong N`: parent and child pass one byte back and forth over two pipes
//! N times; every round trip is two blocking reads, hence two context
//! switches at least.

use workloads::{arg_u64, check, wait_child, Counts};

fn main() {
    let rounds = arg_u64("pingpong N");
    let mut ping = [0i32; 2];
    let mut pong = [0i32; 2];
    // SAFETY: pipe writes two descriptors into each array.
    check(unsafe { libc::pipe(ping.as_mut_ptr()) } as i64, "pipe");
    // SAFETY: as above.
    check(unsafe { libc::pipe(pong.as_mut_ptr()) } as i64, "pipe");
    // SAFETY: single-threaded program; the child only uses async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    check(pid as i64, "fork");
    let mut byte = [0u8; 1];
    if pid == 0 {
        for _ in 0..rounds {
            // SAFETY: one-byte reads/writes on our pipe ends into a local.
            unsafe {
                if libc::read(ping[0], byte.as_mut_ptr().cast(), 1) != 1 {
                    libc::_exit(1);
                }
                libc::write(pong[1], byte.as_ptr().cast(), 1);
            }
        }
        // SAFETY: terminate the child without running the parent's atexit.
        unsafe { libc::_exit(0) };
    }
    let mut counts = Counts::default();
    for i in 0..rounds {
        byte[0] = i as u8;
        // SAFETY: one-byte reads/writes on our pipe ends into a local.
        unsafe {
            check(
                libc::write(ping[1], byte.as_ptr().cast(), 1) as i64,
                "write",
            );
            check(
                libc::read(pong[0], byte.as_mut_ptr().cast(), 1) as i64,
                "read",
            );
        }
        counts.add("round_trips", 1);
    }
    let status = wait_child(pid);
    // SAFETY: getpid has no arguments.
    let me = unsafe { libc::getpid() };
    counts.print(&[
        ("parent", me.to_string()),
        ("child", pid.to_string()),
        ("child_status", status.to_string()),
    ]);
    std::process::exit(status);
}
