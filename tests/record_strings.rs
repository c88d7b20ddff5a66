//! Syscall string arguments in fork-heavy workloads: a freshly forked child
//! passes pointers into file-backed pages (the program's `.rodata`) that are
//! not in its page tables until the kernel faults them in during the call
//! itself. Every such path must still come out as the program wrote it
//! (hvtrace reads it again later in the syscall, see `introspect::defer`),
//! never empty, never another event's string.

mod common;
mod record_support;

use record_support::{record, Ev, Recorded};

/// Path-taking syscall entries of the trace with their path argument.
fn paths(r: &Recorded) -> Vec<(&Ev, String)> {
    r.events
        .iter()
        .filter_map(|e| {
            let arg = match e.name.as_str() {
                "syscall_entry_openat" | "syscall_entry_execve" => "filename",
                "syscall_entry_open" | "syscall_entry_stat" => "filename",
                _ => return None,
            };
            Some((e, e.text(arg)))
        })
        .collect()
}

fn no_path_lost(r: &Recorded) {
    for (e, p) in paths(r) {
        assert!(
            !p.is_empty() && p != "(unreadable)",
            "{} of tid {} ({}) has path {p:?}: {e:?}",
            e.name,
            e.tid,
            e.procname
        );
    }
}

fn opened_by(r: &Recorded, tid: i64) -> Vec<String> {
    paths(r)
        .into_iter()
        .filter(|(e, _)| e.tid == tid && e.name == "syscall_entry_openat")
        .map(|(_, p)| p)
        .filter(|p| p.starts_with("/tmp/"))
        .collect()
}

#[test]
fn deadlock_child_and_parent_open_their_lock_files_by_name() {
    let r = record(
        "6.1",
        1,
        "strings-deadlock",
        &["/bin/sh", "-c", "/bin/deadlock & sleep 4"],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let line = r
        .console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("DEADLOCK pids "))
        .unwrap_or_else(|| panic!("the workload printed its pids:\n{}", r.console));
    let pids: Vec<i64> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (parent, child) = (pids[0], pids[1]);
    no_path_lost(&r);
    // The case at hand did happen, and every such string was read later.
    assert!(
        r.console
            .contains("read later in the syscall, 0 left marked"),
        "{}",
        r.console
    );
    // The parent takes lock-a then lock-b; the child (which opens its files
    // right after fork, from pages it never touched) the opposite order.
    assert_eq!(opened_by(&r, parent), ["/tmp/lock-a", "/tmp/lock-b"]);
    assert_eq!(opened_by(&r, child), ["/tmp/lock-b", "/tmp/lock-a"]);
}

#[test]
fn forked_children_exec_the_path_their_parent_wrote_6_12() {
    let n = 20;
    let r = record(
        "6.12",
        1,
        "strings-forkexec",
        &["/bin/forkexec", &n.to_string()],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    no_path_lost(&r);
    // Each child calls execve("/bin/true") from the parent's .rodata.
    let execs: Vec<String> = paths(&r)
        .into_iter()
        .filter(|(e, _)| e.name == "syscall_entry_execve" && e.procname == "forkexec")
        .map(|(_, p)| p)
        .collect();
    let to_true = execs.iter().filter(|p| *p == "/bin/true").count();
    assert_eq!(
        to_true, n,
        "execve entries of forkexec's children: {execs:?}"
    );
}
