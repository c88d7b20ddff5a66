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

/// The guest's CPU count and the command's status (42) come back; each
/// line on the vCPU counts given (a stock-KVM L1 boot each: the suite's
/// budget, not the monitor, picks how many).
fn check_line(line: &str, vcpu_counts: &[u32]) {
    common::image_dir(line);
    for &vcpus in vcpu_counts {
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
}

#[test]
fn debian_6_1_boots_to_the_marker_on_the_monitor() {
    if common::hvtrace_on_kvm().is_some() {
        check_line("6.1", &[1, 4]);
    }
}

#[test]
fn debian_6_12_boots_to_the_marker_on_the_monitor() {
    if common::hvtrace_on_kvm().is_some() {
        check_line("6.12", &[4]);
    }
}
