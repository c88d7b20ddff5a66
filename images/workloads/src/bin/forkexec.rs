//! `forkexec N`: forks and execs `/bin/true` N times, reaping each child.

use workloads::{arg_u64, check, wait_child, Counts};

fn main() {
    let n = arg_u64("forkexec N");
    let mut counts = Counts::default();
    let mut pids = Vec::with_capacity(n as usize);
    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    for _ in 0..n {
        // SAFETY: single-threaded; the child only calls execve and _exit.
        let pid = unsafe { libc::fork() };
        check(pid as i64, "fork");
        if pid == 0 {
            // SAFETY: argv and envp are NULL-terminated arrays of C strings.
            unsafe {
                libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        counts.add("forks", 1);
        counts.add("execs", 1);
        if wait_child(pid) != 0 {
            eprintln!("child {pid} failed");
            std::process::exit(1);
        }
        counts.add("exits", 1);
        pids.push(pid.to_string());
    }
    counts.print(&[("pids", format!("[{}]", pids.join(",")))]);
}
