//! `hvtrace record --probe` end to end, on either engine: a user probe on
//! `do_sys_openat2` held against the workload's own counts and the traced
//! syscalls around it.

use super::{record_on, Ev};

/// One openat of /dev/null, then one of /etc/hvtrace-probe per round: each
/// hits the probe once, between its syscall entry and exit.
/// `do_sys_openat2(int dfd, const char __user *filename, struct open_how *how)`
/// has this signature on both kernel lines (6.1 and 6.12).
pub const PROBE: &str = "myopen=do_sys_openat2 dfd=arg1:s32 path=+0(arg2):string who=$comm";
/// A second probe at the same address whose first two fields read an
/// unmapped address: they come out marked (bits 0 and 1 of `valid` clear).
pub const UNMAPPED: &str =
    r"nullread=do_sys_openat2 p=+0(\0x10):string n=+0(\0x10):u32 dfd=arg1:s32";

pub fn probe_matches_openat(backend: &str, line: &str) {
    let rounds = 20;
    let r = record_on(
        backend,
        line,
        1,
        "probe",
        &["--probe", PROBE, "--probe", UNMAPPED],
        &["/bin/syscalls", &rounds.to_string()],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    // The workload's own count: one openat of /dev/null, the rest of
    // /etc/hvtrace-probe.
    let counted: usize = r.counts()["openat"].parse().unwrap();
    assert_eq!(counted, rounds + 1);
    let pid = r
        .events
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/syscalls")
        .map(|e| e.int("tid"))
        .expect("exec of /bin/syscalls traced");
    let mine: Vec<&Ev> = r.events.iter().filter(|e| e.tid == pid).collect();
    let probes: Vec<&&Ev> = mine
        .iter()
        .filter(|e| e.name == "myopen" && e.text("path") == "/etc/hvtrace-probe")
        .collect();
    assert_eq!(
        probes.len(),
        counted - 1,
        "myopen events of /etc/hvtrace-probe vs the workload's count"
    );
    for e in &probes {
        assert_eq!(e.int("dfd"), -100, "AT_FDCWD: {e:?}");
        assert_eq!(e.text("who"), "syscalls", "{e:?}");
        assert_eq!(e.int("valid"), 0b111, "every field read: {e:?}");
        assert_eq!(e.procname, "syscalls");
    }
    // Each openat of the process hits the probe once, right after its entry
    // event and before its exit, with the same path.
    for (i, e) in mine.iter().enumerate() {
        if e.name != "syscall_entry_openat" {
            continue;
        }
        let next = mine[i + 1..]
            .iter()
            .find(|x| x.name == "myopen" || x.name.starts_with("syscall_"))
            .expect("something follows an openat entry");
        assert_eq!(next.name, "myopen", "after {e:?}");
        assert_eq!(next.text("path"), e.text("filename"));
        assert_eq!(next.int("dfd"), e.int("dfd"));
    }
    let all = r.events.iter().filter(|e| e.name == "myopen").count();
    let entries = r
        .events
        .iter()
        .filter(|e| e.name == "syscall_entry_openat")
        .count();
    // open, creat and openat2 go through it too.
    assert!(
        all >= entries,
        "every openat of the guest goes through do_sys_openat2"
    );
    let marked: Vec<&Ev> = r.events.iter().filter(|e| e.name == "nullread").collect();
    assert_eq!(
        marked.len(),
        all,
        "both probes at one address fire together"
    );
    for e in marked {
        assert_eq!(e.int("valid"), 0b100, "{e:?}");
        assert_eq!(e.text("p"), "(unreadable)");
        assert_eq!(e.int("n"), 0);
    }
    assert!(
        r.console.contains("probes: "),
        "the summary counts the probe events:\n{}",
        r.console
    );
}
