//! The guest's `/init`: mounts the pseudo file systems, runs the command that
//! hvtrace passed in `hvtrace.cmd=` (hex of the NUL-separated argv, so any
//! byte survives the kernel's command-line parser), prints
//! `HVTRACE-EXIT <status>` on the console and powers the machine off.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

fn mount(src: &str, target: &str, fstype: &str) {
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src, target, fstype) = (c(src), c(target), c(fstype));
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    unsafe {
        libc::mkdir(target.as_ptr(), 0o755);
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        );
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The command to run: from `hvtrace.cmd=` on the kernel command line, else a shell.
fn command_from_cmdline() -> Vec<CString> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let encoded = cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("hvtrace.cmd="));
    let argv: Option<Vec<CString>> = encoded.and_then(decode_hex).and_then(|bytes| {
        bytes
            .split(|&b| b == 0)
            .map(|a| CString::new(a).ok())
            .collect()
    });
    match argv {
        Some(v) if !v.is_empty() => v,
        _ => vec![CString::new("/bin/sh").expect("literal")],
    }
}

fn power_off(status: i32) -> ! {
    println!("\nHVTRACE-EXIT {status}");
    let _ = std::io::stdout().flush();
    // The marker's line end must leave the tty before the kernel's own
    // power-off lines, which bypass the tty: seen lost once, the marker
    // glued to "reboot: ..." and the host never saw the status.
    // On a non-tty it fails harmlessly.
    // SAFETY: tcdrain takes a descriptor and nothing else.
    unsafe { libc::tcdrain(libc::STDOUT_FILENO) };
    // SAFETY: sync and reboot take no pointers; as PID 1 we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; PID 1 must not exit (that panics).
    loop {
        // SAFETY: pause has no arguments.
        unsafe { libc::pause() };
    }
}

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    std::env::set_var("PATH", "/bin:/sbin:/usr/bin:/usr/sbin");
    std::env::set_var("HOME", "/root");

    let argv = command_from_cmdline();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());

    // SAFETY: this process is single-threaded; the child only calls execvp and _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        eprintln!("init: fork failed");
        power_off(126);
    }
    if child == 0 {
        // SAFETY: ptrs is a NULL-terminated array of C strings kept alive by argv.
        unsafe {
            libc::setsid();
            libc::execvp(ptrs[0], ptrs.as_ptr());
        }
        eprintln!(
            "init: cannot execute {}: {}",
            OsStr::from_bytes(argv[0].as_bytes()).to_string_lossy(),
            std::io::Error::last_os_error()
        );
        // SAFETY: leave the child without running destructors of the parent's state.
        unsafe { libc::_exit(127) };
    }
    // As PID 1 we also inherit orphans: reap them all until our child ends.
    loop {
        let mut status = 0;
        // SAFETY: status is a valid local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            power_off(code);
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            power_off(126);
        }
    }
}
