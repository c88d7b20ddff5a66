//! End-to-end tests of `hvtrace record` on the QEMU TCG engine with the
//! real Debian kernels (KASLR on): every trace is read back with
//! babeltrace2, the reference reader, and held against what the guest
//! itself counted (the workload's own COUNTS line, its /proc).

mod common;
mod record_support;

use record_support::checks;

fn syscalls_match(line: &str, vcpus: u32) {
    let r = checks::syscalls_match("qemu", &[], line, vcpus);
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn record_syscalls_6_1_one_vcpu() {
    syscalls_match("6.1", 1);
}

#[test]
fn record_syscalls_6_1_two_vcpus() {
    syscalls_match("6.1", 2);
}

#[test]
fn record_syscalls_6_12_one_vcpu() {
    syscalls_match("6.12", 1);
}

#[test]
fn record_syscalls_6_12_two_vcpus() {
    syscalls_match("6.12", 2);
}

fn forkexec_match(line: &str, vcpus: u32) {
    checks::forkexec_match("qemu", &[], line, vcpus);
}

#[test]
fn record_forkexec_6_1() {
    forkexec_match("6.1", 1);
}

#[test]
fn record_forkexec_6_12_two_vcpus() {
    forkexec_match("6.12", 2);
}

/// The statedump lists the processes the guest's /proc shows.
#[test]
fn record_statedump_matches_proc() {
    checks::statedump_matches_proc("qemu", &[]);
}

/// A run that times out still leaves a complete trace that babeltrace2
/// reads, says so, and fails.
#[test]
fn record_timeout_leaves_a_readable_trace() {
    let image = common::image_dir("6.1");
    let dir = std::env::temp_dir().join(format!("hvtrace-timeout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = common::hvtrace()
        .args(["record", "--backend", "qemu", "--timeout", "25"])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&dir)
        .args(["--", "/bin/syscalls", "100000000"])
        .output()
        .expect("run hvtrace record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a timed-out run fails");
    assert!(stderr.contains("ended early"), "{stderr}");
    let evs = record_support::babeltrace(&dir.join("kernel"));
    assert!(evs
        .iter()
        .any(|e| e.name == "syscall_entry_getpid" && e.procname == "syscalls"));
    let _ = std::fs::remove_dir_all(&dir);
}
