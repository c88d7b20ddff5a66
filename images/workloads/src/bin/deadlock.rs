//! `deadlock`: two processes take two `flock`s in opposite order and block
//! forever: the classic lock-order inversion, for "why is it stuck?".

use workloads::check;

fn open_lock(path: &std::ffi::CStr) -> i32 {
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600) };
    check(fd as i64, "open lock file") as i32
}

fn take(first: &std::ffi::CStr, second: &std::ffi::CStr, ready: i32, go: i32) {
    let a = open_lock(first);
    let b = open_lock(second);
    // SAFETY: flock and pipe calls on our own descriptors and a local byte.
    unsafe {
        check(libc::flock(a, libc::LOCK_EX) as i64, "flock first");
        // Both hold their first lock before either asks for its second.
        let byte = [1u8];
        libc::write(ready, byte.as_ptr().cast(), 1);
        let mut got = [0u8];
        libc::read(go, got.as_mut_ptr().cast(), 1);
        libc::flock(b, libc::LOCK_EX);
    }
}

fn main() {
    let mut p2c = [0i32; 2];
    let mut c2p = [0i32; 2];
    // SAFETY: pipe writes two descriptors into each array.
    unsafe {
        check(libc::pipe(p2c.as_mut_ptr()) as i64, "pipe");
        check(libc::pipe(c2p.as_mut_ptr()) as i64, "pipe");
    }
    // SAFETY: single-threaded program.
    let pid = unsafe { libc::fork() };
    check(pid as i64, "fork");
    if pid == 0 {
        take(c"/tmp/lock-b", c"/tmp/lock-a", c2p[1], p2c[0]);
        // SAFETY: unreachable in practice; leave without atexit handlers.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: getpid has no arguments.
    let me = unsafe { libc::getpid() };
    println!("DEADLOCK pids {me} {pid}");
    let mut byte = [0u8];
    // SAFETY: wait for the child to hold lock-b, then release it to go on.
    unsafe {
        let a = open_lock(c"/tmp/lock-a");
        check(libc::flock(a, libc::LOCK_EX) as i64, "flock a");
        libc::read(c2p[0], byte.as_mut_ptr().cast(), 1);
        libc::write(p2c[1], byte.as_ptr().cast(), 1);
        let b = open_lock(c"/tmp/lock-b");
        libc::flock(b, libc::LOCK_EX);
    }
    println!("COUNTS {{\"unreachable\":1}}");
}
