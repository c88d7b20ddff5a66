//! End-to-end tests of `hvtrace record` on the QEMU TCG engine with the
//! real Debian kernels (KASLR on): every trace is read back with
//! babeltrace2, the reference reader, and held against what the guest
//! itself counted (the workload's own COUNTS line, its /proc).

mod common;
mod record_support;

use std::collections::{BTreeMap, BTreeSet};

use record_support::{record, Ev};

/// `/bin/syscalls N`: between the workload's first counted syscall
/// (openat("/dev/null")) and its last (close of that fd), the traced syscall
/// entries of that process equal its own counts, with the right arguments
/// and return values.
fn syscalls_match(line: &str, vcpus: u32) {
    let rounds = 200;
    let r = record(
        line,
        vcpus,
        "syscalls",
        &["/bin/syscalls", &rounds.to_string()],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let pid = r
        .events
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/syscalls")
        .map(|e| e.int("tid"))
        .expect("exec of /bin/syscalls traced");
    let mine: Vec<&Ev> = r
        .events
        .iter()
        .filter(|e| e.tid == pid && e.name.starts_with("syscall_"))
        .collect();
    let start = mine
        .iter()
        .position(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/dev/null")
        .expect("openat(/dev/null) traced");
    let devnull = mine[start + 1..]
        .iter()
        .find(|e| e.name == "syscall_exit_openat")
        .map(|e| e.int("ret"))
        .expect("its return");
    assert!(devnull >= 0);
    let end = mine
        .iter()
        .rposition(|e| e.name == "syscall_entry_close" && e.int("fd") == devnull)
        .expect("close(devnull) traced");
    let window = &mine[start..=end];
    let mut traced: BTreeMap<String, u64> = BTreeMap::new();
    for e in window {
        if let Some(n) = e.name.strip_prefix("syscall_entry_") {
            *traced.entry(n.to_string()).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, u64> = counts
        .iter()
        .filter(|(k, _)| k.as_str() != "rounds")
        .map(|(k, v)| (k.clone(), v.parse().unwrap()))
        .collect();
    assert_eq!(traced, expected, "traced entries vs the workload's COUNTS");

    // Arguments and return values, against the workload's own code.
    let mut last_fd = None;
    let mut probe_opens = 0;
    for (i, e) in window.iter().enumerate() {
        let exit = window[i + 1..]
            .iter()
            .find(|x| x.name.starts_with("syscall_exit_"));
        match e.name.as_str() {
            "syscall_entry_openat" => {
                let f = e.text("filename");
                assert!(f == "/dev/null" || f == "/etc/hvtrace-probe", "openat {f}");
                probe_opens += u64::from(f == "/etc/hvtrace-probe");
                let x = exit.expect("openat returns");
                assert_eq!(x.name, "syscall_exit_openat");
                last_fd = Some(x.int("ret"));
                assert!(x.int("ret") >= 0);
            }
            "syscall_entry_read" => {
                assert_eq!(Some(e.int("fd")), last_fd);
                assert_eq!(e.int("count"), 64);
            }
            "syscall_entry_write" => {
                assert_eq!(e.int("fd"), devnull);
                assert_eq!(e.int("count"), 8);
                assert_eq!(exit.expect("write returns").int("ret"), 8);
            }
            "syscall_entry_getpid" => assert_eq!(exit.expect("getpid returns").int("ret"), e.pid),
            _ => {}
        }
    }
    assert_eq!(probe_opens, rounds);
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

/// `/bin/forkexec 20`: 20 forks, 20 execs of /bin/true, 20 exits, with the
/// pids the workload itself printed.
fn forkexec_match(line: &str, vcpus: u32) {
    let r = record(line, vcpus, "forkexec", &["/bin/forkexec", "20"]);
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let pids: BTreeSet<i64> = counts["pids"]
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 20);
    let parent = r
        .events
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/forkexec")
        .map(|e| e.int("tid"))
        .expect("exec of /bin/forkexec");
    let forked: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_fork" && e.int("parent_pid") == parent)
        .map(|e| e.int("child_pid"))
        .collect();
    let execs: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/true")
        .map(|e| e.int("tid"))
        .collect();
    let exits: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_exit" && pids.contains(&e.int("tid")))
        .map(|e| e.int("tid"))
        .collect();
    assert_eq!(forked, pids, "forks of {parent}");
    assert_eq!(execs, pids, "execs of /bin/true");
    assert_eq!(exits, pids, "exits");
    let n_exec = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/true")
        .count();
    assert_eq!(n_exec, 20);
}

#[test]
fn record_forkexec_6_1() {
    forkexec_match("6.1", 1);
}

#[test]
fn record_forkexec_6_12_two_vcpus() {
    forkexec_match("6.12", 2);
}

/// The statedump at the start of the traced command lists the processes
/// the guest's /proc shows: every dumped pid is in the command's listing of
/// /proc, and every listed pid was dumped or forked after the dump.
#[test]
fn record_statedump_matches_proc() {
    let r = record(
        "6.1",
        1,
        "statedump",
        &[
            "/bin/sh",
            "-c",
            "echo PROC $(ls /proc | grep -E '^[0-9]+$')",
        ],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let listed: BTreeSet<i64> = r
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("PROC "))
        .expect("PROC line")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let first = r
        .events
        .iter()
        .position(|e| e.name == "lttng_statedump_process_state")
        .expect("statedump");
    let dumped: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "lttng_statedump_process_state")
        .map(|e| e.int("pid"))
        .filter(|&p| p != 0)
        .collect();
    let later: BTreeSet<i64> = r.events[first..]
        .iter()
        .filter(|e| e.name == "sched_process_fork")
        .map(|e| e.int("child_pid"))
        .collect();
    assert!(
        dumped.len() > 10,
        "kernel threads and init at least: {dumped:?}"
    );
    for p in &dumped {
        assert!(
            listed.contains(p),
            "dumped pid {p} not in the guest's /proc {listed:?}"
        );
    }
    for p in &listed {
        assert!(
            dumped.contains(p) || later.contains(p),
            "/proc pid {p} neither dumped nor forked later"
        );
    }
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// A run that times out still leaves a complete trace that babeltrace2
/// reads, says so, and fails.
#[test]
fn record_timeout_leaves_a_readable_trace() {
    let image = common::image_dir("6.1");
    let dir = std::env::temp_dir().join(format!("hvtrace-timeout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = common::hvtrace()
        .args(["record", "--backend", "qemu", "--timeout", "12"])
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
