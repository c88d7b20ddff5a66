//! `scripts/stock-kvm.sh`: a command run inside an L1 guest (QEMU TCG with
//! `-cpu max`, nested SVM) whose stock kvm_amd gives it a `/dev/kvm`; its
//! exit status, stdout, stderr and written files come back; bad usage is
//! refused with status 125; a crash of L1 itself is said and retried
//! once; no QEMU is left running.

mod common;

use std::process::Command;

fn script() -> Command {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stock-kvm.sh"))
}

/// A temporary folder of this test's own: the harness puts its run folder
/// (named on L1's QEMU command line) under `$TMPDIR`.
fn own_tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hvtrace-stockkvm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn qemu_10() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.split("version ")
                .nth(1)?
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .is_some_and(|v| v >= 10);
    if !ok {
        println!("skipped: no QEMU >= 10 (scripts/install-deps.sh installs it)");
    }
    ok
}

/// QEMU processes whose command line names this run's folder.
fn qemus_of(tag: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("qemu-system") && c.contains(tag)
        })
        .count()
}

#[test]
fn a_command_runs_on_a_stock_kvm_and_brings_back_status_output_and_files() {
    if !qemu_10() {
        return;
    }
    let _machine = common::machine_lock(false);
    // Under its $TMPDIR, which L1 may write.
    let tmp = own_tmpdir("run");
    let file = tmp.join("written-in-l1");
    let cmd = format!(
        "test -c /dev/kvm || exit 3; grep -qw svm /proc/cpuinfo || exit 4; \
         grep -q '^kvm_amd ' /proc/modules || exit 5; \
         echo to-stdout; echo to-stderr >&2; echo data > {}; exit 7",
        file.display()
    );
    let out = script()
        .env("TMPDIR", &tmp)
        .args(["--", "sh", "-c", &cmd])
        .output()
        .expect("run stock-kvm.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("to-stdout"), "{stdout}");
    assert!(stderr.contains("to-stderr"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data\n");
    assert_eq!(qemus_of(&tmp.to_string_lossy()), 0, "no QEMU left behind");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// L1's own kernel crashing (here on purpose, through sysrq) is the
/// harness failing: it says so, runs the command again once in a fresh
/// L1, and ends with status 125 when that one crashes too.
#[test]
fn a_crash_of_l1_itself_is_said_and_retried_once() {
    if !qemu_10() {
        return;
    }
    let _machine = common::machine_lock(false);
    let tmp = own_tmpdir("crash");
    let out = script()
        .env("TMPDIR", &tmp)
        .args([
            "--",
            "sh",
            "-c",
            "echo started; echo c > /proc/sysrq-trigger",
        ])
        .output()
        .expect("run stock-kvm.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(
        stdout.matches("started").count(),
        2,
        "two L1s ran it:\n{stdout}"
    );
    assert!(stderr.contains("L1's own kernel crashed"), "{stderr}");
    assert_eq!(
        stderr.matches("running the command again, once").count(),
        1,
        "{stderr}"
    );
    assert_eq!(qemus_of(&tmp.to_string_lossy()), 0, "no QEMU left behind");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bad_usage_is_refused_with_status_125() {
    for (args, says) in [
        (&["--smp", "0", "--", "true"][..], "--smp must be >= 1"),
        (&["--bogus", "--", "true"][..], "unknown option '--bogus'"),
        (&[][..], "no command given after --"),
        (
            &["--rw", "/nonexistent-hvtrace", "--", "true"][..],
            "no such folder",
        ),
    ] {
        let out = script().args(args).output().expect("run stock-kvm.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
