//! End-to-end tests of 32-bit (compat) syscall tracing on the QEMU TCG
//! engine with the real Debian kernels: `/bin/compat32` (a static i386
//! program of the image) makes its syscalls through `int $0x80` and the
//! 32-bit vDSO (`sysenter`/`syscall`), which never reach `do_syscall_64`. The trace, read back with babeltrace2, is held
//! against what the program itself says it did (its COUNTS line), the
//! kernel's own answers (getpid's value is the task's tgid the tracer reads
//! from the task struct; open of a missing file is -ENOENT), and the i386
//! ABI's numbers.

mod common;
mod record_support;

use record_support::{record_with, Ev};

fn count(events: &[Ev], tid: i64, name: &str) -> usize {
    events
        .iter()
        .filter(|e| e.tid == tid && e.name == name)
        .count()
}

fn compat_matches(line: &str, vcpus: u32) {
    // user probes at the two entry paths' own functions tell them apart
    let probes = [
        "--probe",
        "fast32=do_fast_syscall_32",
        "--probe",
        "int80=do_int80_emulation",
    ];
    let r = record_with(line, vcpus, "compat", &probes, &["/bin/compat32"]);
    assert_eq!(r.status, 0, "{line}: console:\n{}", r.console);
    let counts = r.counts();
    let n = |k: &str| -> usize { counts[k].parse().unwrap() };
    let getpids = n("getpid");
    // both compat entries: `int $0x80`, and the vDSO's sysenter/syscall
    // (do_fast_syscall_32, the other caller of ia32_sys_call)
    assert_eq!(n("int80") + n("vsyscall"), getpids, "{counts:?}");
    assert!(n("int80") > 0 && n("vsyscall") > 0, "{counts:?}");
    let ev = &r.events;
    // the program: the task that exec'd /bin/compat32
    let exec = ev
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/compat32")
        .unwrap_or_else(|| panic!("{line}: no exec of /bin/compat32"));
    let (tid, pid) = (exec.tid, exec.pid);
    let exec_at = ev.iter().position(|e| std::ptr::eq(e, exec)).unwrap();

    // the program took both paths as often as it says (open, write and
    // exit go through int $0x80 too)
    assert_eq!(count(ev, tid, "fast32"), n("vsyscall"), "{line}");
    assert_eq!(count(ev, tid, "int80"), n("int80") + 3, "{line}");

    // every getpid it made: an entry and an exit each, returning its pid
    assert_eq!(count(ev, tid, "compat_syscall_entry_getpid"), getpids);
    assert_eq!(count(ev, tid, "compat_syscall_exit_getpid"), getpids);
    for e in ev
        .iter()
        .filter(|e| e.tid == tid && e.name == "compat_syscall_exit_getpid")
    {
        assert_eq!(e.int("ret"), pid, "{line}: {e:?}");
        assert_eq!(e.procname, "compat32", "{line}: {e:?}");
    }
    // open: the path as a string, -ENOENT back
    let opens: Vec<&Ev> = ev
        .iter()
        .filter(|e| e.tid == tid && e.name == "compat_syscall_entry_open")
        .collect();
    assert_eq!(opens.len(), 1, "{line}");
    assert_eq!(opens[0].text("filename"), "/compat32-missing");
    assert_eq!(opens[0].int("flags"), 0);
    let open_exits: Vec<i64> = ev
        .iter()
        .filter(|e| e.tid == tid && e.name == "compat_syscall_exit_open")
        .map(|e| e.int("ret"))
        .collect();
    assert_eq!(open_exits, [-2], "{line}");
    // write(1, line, len): the length of what reached the console
    let write = ev
        .iter()
        .find(|e| e.tid == tid && e.name == "compat_syscall_entry_write")
        .unwrap_or_else(|| panic!("{line}: no compat write"));
    let printed = r
        .console
        .lines()
        .find(|l| l.trim_start().starts_with("COUNTS "))
        .unwrap();
    assert_eq!(write.int("fd"), 1);
    assert_eq!(write.int("count"), printed.trim().len() as i64 + 1);
    assert_eq!(count(ev, tid, "compat_syscall_entry_exit"), 1, "{line}");
    // the 64-bit execve that started it returns into 32-bit code: its
    // exit is a compat one (as lttng-modules reports it), with 0
    let exec_exit = ev[exec_at..]
        .iter()
        .find(|e| e.tid == tid && e.name.contains("syscall_exit"))
        .unwrap();
    assert_eq!(exec_exit.name, "compat_syscall_exit_execve", "{line}");
    assert_eq!(exec_exit.int("ret"), 0);

    // no compat event belongs to a 64-bit process: every one is the
    // program's, after its exec, and it made no native syscall after it
    let compat: Vec<(usize, &Ev)> = ev
        .iter()
        .enumerate()
        .filter(|(_, e)| e.name.starts_with("compat_syscall_"))
        .collect();
    assert_eq!(compat.len(), 2 * getpids + 2 + 2 + 1 + 1, "{line}");
    for (i, e) in &compat {
        assert_eq!(e.tid, tid, "{line}: a compat event of another task: {e:?}");
        assert!(
            *i > exec_at,
            "{line}: a compat event before the exec: {e:?}"
        );
    }
    assert!(
        !ev[exec_at..]
            .iter()
            .any(|e| e.tid == tid && e.name.starts_with("syscall_entry_")),
        "{line}: a native syscall of the i386 program"
    );
    // and the 64-bit processes' own syscalls are still there
    assert!(ev.iter().any(|e| e.name.starts_with("syscall_entry_")));
}

#[test]
fn record_compat_syscalls_6_1_two_vcpus() {
    compat_matches("6.1", 2);
}

#[test]
fn record_compat_syscalls_6_12() {
    compat_matches("6.12", 1);
}
