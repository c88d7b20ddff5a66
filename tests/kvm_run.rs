//! `hvtrace run --backend kvm` boots the real Debian kernels to the `/init`
//! marker line and returns the guest command's status. This needs hardware
//! virtualization: where /dev/kvm emulates guest code (KVM-PVM) a full boot
//! takes far too long, and the test says so and skips.

mod common;

fn hardware_kvm() -> bool {
    let p = vmm::probe_native_virtualization();
    if !p.native {
        println!("skipped: no hardware virtualization ({})", p.reason);
    }
    p.native
}

fn run_kvm(line: &str, vcpus: u32, script: &str) -> std::process::Output {
    common::hvtrace()
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
    if hardware_kvm() {
        check_line("6.1");
    }
}

#[test]
fn debian_6_12_boots_to_the_marker_on_the_monitor() {
    if hardware_kvm() {
        check_line("6.12");
    }
}
