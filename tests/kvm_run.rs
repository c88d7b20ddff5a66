//! `hvtrace run --backend kvm` boots the real Debian kernels to the `/init`
//! marker line and returns the guest command's status. This needs a KVM
//! that runs guest code natively: hardware virtualization here, or else the
//! stock KVM of `scripts/stock-kvm.sh`'s L1 guest (where /dev/kvm emulates
//! guest code, as KVM-PVM does, a full boot takes far too long).

mod common;

fn run_kvm(line: &str, vcpus: u32, script: &str) -> std::process::Output {
    common::hvtrace_on_kvm()
        .expect("checked by the caller")
        .args(["run", "--backend", "kvm", "--kernel-line", line])
        .args(["--vcpus", &vcpus.to_string(), "--timeout", "120"])
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .expect("run hvtrace")
}

fn check_line(line: &str) {
    common::image_dir(line);
    for vcpus in [1, 4] {
        let out = run_kvm(line, vcpus, "grep -c ^processor /proc/cpuinfo; exit 42");
        let console = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(42),
            "{line}, {vcpus} vCPUs:\n{console}"
        );
        assert!(
            console.contains(&format!("\n{vcpus}\r\n"))
                || console.contains(&format!("\n{vcpus}\n")),
            "guest saw {vcpus} CPUs:\n{console}"
        );
    }
    let out = run_kvm(line, 1, "exit 0");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn debian_6_1_boots_to_the_marker_on_the_monitor() {
    if common::hvtrace_on_kvm().is_some() {
        check_line("6.1");
    }
}

#[test]
fn debian_6_12_boots_to_the_marker_on_the_monitor() {
    if common::hvtrace_on_kvm().is_some() {
        check_line("6.12");
    }
}
