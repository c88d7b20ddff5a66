//! `hvtrace record --probe`: user-defined probes on the QEMU TCG engine with
//! the real Debian kernels, read back with babeltrace2 and held against the
//! workload's own counts; bad specs are refused before anything boots.

mod common;
mod record_support;

use record_support::probe::probe_matches_openat;

#[test]
fn probe_on_do_sys_openat2_6_1() {
    probe_matches_openat("qemu", "6.1");
}

#[test]
fn probe_on_do_sys_openat2_6_12() {
    probe_matches_openat("qemu", "6.12");
}

/// Runs `hvtrace record` with `probe` and expects a refusal naming `what`.
fn refused(image: &std::path::Path, probe: &str, what: &str) {
    let dir = std::env::temp_dir().join(format!("hvtrace-probe-bad-{}", std::process::id()));
    let out = common::hvtrace()
        .args(["record", "--backend", "qemu", "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&dir)
        .args(["--probe", probe, "--", "/bin/true"])
        .output()
        .expect("run hvtrace record");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{probe}: {err}");
    assert!(
        err.contains("--probe") && err.contains(what),
        "{probe}: the error names {what:?}: {err}"
    );
    assert!(
        !err.contains("HVTRACE-EXIT") && !dir.join("kernel/metadata").exists(),
        "nothing booted for {probe}: {err}"
    );
}

#[test]
fn bad_probe_specs_are_refused_with_a_clear_error() {
    let image = common::image_dir("6.1");
    let refused = |probe: &str, what: &str| refused(&image, probe, what);
    refused("myopen", "NAME=SYMBOL");
    refused("myopen=do_sys_openat2 x=%r99", "unknown register `%r99`");
    refused("myopen=do_sys_openat2 x=arg1:u12", "unknown type `u12`");
    refused("myopen=do_sys_openat2 x=+8(arg2", "expected `)`");
    refused(
        "sched_switch=do_sys_openat2",
        "taken by one of hvtrace's own events",
    );
    refused("myopen=do_sys_openat2 valid=arg1", "`valid` is reserved");
    refused(
        "myopen=no_such_function_hvtrace",
        "unknown kernel symbol `no_such_function_hvtrace`",
    );
}
