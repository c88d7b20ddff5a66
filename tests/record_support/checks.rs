//! The checks of `hvtrace record`'s end-to-end tests, run on either engine
//! (`backend` is `--backend`'s value; `opts` are extra options such as an
//! `--events` subset that fits an engine's probe budget).

use std::collections::{BTreeMap, BTreeSet};

use super::{record_on, Ev, Recorded};

/// `/bin/syscalls N`: between the workload's first counted syscall
/// (openat("/dev/null")) and its last (close of that fd), the traced syscall
/// entries of that process equal its own counts, with the right arguments
/// and return values. Returns the recording, for an engine's own checks.
pub fn syscalls_match(backend: &str, opts: &[&str], line: &str, vcpus: u32) -> Recorded {
    let rounds = 200;
    let r = record_on(
        backend,
        line,
        vcpus,
        "syscalls",
        opts,
        &["/bin/syscalls", &rounds.to_string()],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    // From its exec, or (proc events not traced) its comm on its syscalls.
    let pid = r
        .events
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/syscalls")
        .or_else(|| {
            r.events
                .iter()
                .find(|e| e.name.starts_with("syscall_entry_") && e.procname == "syscalls")
        })
        .map(|e| e.tid)
        .expect("exec of /bin/syscalls or its syscalls traced");
    let mine: Vec<&Ev> = r
        .events
        .iter()
        .filter(|e| e.tid == pid && e.name.starts_with("syscall_"))
        .collect();
    let (traced, window, devnull) = super::counted_window(&mine);
    let expected: BTreeMap<String, u64> = counts
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "rounds" | "elapsed_ns"))
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
    r
}

/// `/bin/forkexec 20`: 20 forks, 20 execs of /bin/true, 20 exits, with the
/// pids the workload itself printed.
pub fn forkexec_match(backend: &str, opts: &[&str], line: &str, vcpus: u32) {
    let r = record_on(
        backend,
        line,
        vcpus,
        "forkexec",
        opts,
        &["/bin/forkexec", "20"],
    );
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
    // sched_wakeup_new (at its tracepoint's site: the TCG engine; the KVM
    // engine leaves static-branch sites alone): once per child, after its
    // fork
    if backend == "qemu" {
        let mut fork_at = BTreeMap::new();
        for (i, e) in r.events.iter().enumerate() {
            match e.name.as_str() {
                "sched_process_fork" if pids.contains(&e.int("child_tid")) => {
                    fork_at.insert(e.int("child_tid"), i);
                }
                "sched_wakeup_new" if pids.contains(&e.int("tid")) => {
                    let t = e.int("tid");
                    let forked = fork_at.remove(&t);
                    assert!(
                        forked.is_some(),
                        "sched_wakeup_new of {t} without its fork (or twice)"
                    );
                }
                _ => {}
            }
        }
        assert!(
            fork_at.is_empty(),
            "forks without sched_wakeup_new: {fork_at:?}"
        );
    }
}

/// The statedump at the start of the traced command lists the processes
/// the guest's /proc shows: every dumped pid is in the command's listing of
/// /proc, and every listed pid was dumped or forked after the dump.
pub fn statedump_matches_proc(backend: &str, opts: &[&str]) {
    let r = record_on(
        backend,
        "6.1",
        1,
        "statedump",
        opts,
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
