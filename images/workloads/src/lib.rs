//! Shared helpers of the guest workload programs: each program does a known
//! amount of work through raw syscalls and prints one `COUNTS {json}` line
//! with what it did, counted by itself, so a trace can be held against it.

use std::collections::BTreeMap;
use std::io::Write;

/// Per-name counters printed as `COUNTS {"name":n,...}`.
#[derive(Default)]
pub struct Counts(BTreeMap<&'static str, u64>);

impl Counts {
    pub fn add(&mut self, name: &'static str, n: u64) {
        *self.0.entry(name).or_default() += n;
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Prints the marker line; the JSON has no spaces so it survives any
    /// console line discipline unchanged.
    pub fn print(&self, extra: &[(&str, String)]) {
        let mut line = String::from("COUNTS {");
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                line.push(',');
            }
            first = false;
            line.push_str(&format!("\"{k}\":{v}"));
        }
        for (k, v) in extra {
            if !first {
                line.push(',');
            }
            first = false;
            line.push_str(&format!("\"{k}\":{v}"));
        }
        line.push('}');
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Parses the single numeric argument of a workload, with a usage message.
pub fn arg_u64(usage: &str) -> u64 {
    let mut args = std::env::args().skip(1);
    match args.next().map(|a| a.parse::<u64>()) {
        Some(Ok(n)) => n,
        _ => {
            eprintln!("usage: {usage}");
            std::process::exit(2);
        }
    }
}

/// Returns -errno of the last failed libc call, for error messages.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Exits with a message when a syscall that must not fail failed.
pub fn check(ret: i64, what: &str) -> i64 {
    if ret < 0 {
        eprintln!("{what} failed: errno {}", last_errno());
        std::process::exit(1);
    }
    ret
}

/// Waits for a child and returns its exit status (128+signal when killed).
pub fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`, a valid local.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    check(r as i64, "waitpid");
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}
