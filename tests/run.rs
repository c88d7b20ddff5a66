//! End-to-end tests of `hvtrace run` on the real Debian kernels under QEMU.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

fn run_guest(args: &[&str]) -> Output {
    common::hvtrace()
        .args(["run", "--backend", "qemu"])
        .args(args)
        .output()
        .expect("run hvtrace")
}

fn console(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON object of the guest program's `COUNTS` line.
fn counts(out: &Output) -> serde_json::Value {
    let text = console(out);
    let line = text
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("COUNTS "))
        .unwrap_or_else(|| panic!("no COUNTS line in:\n{text}"));
    serde_json::from_str(line).expect("COUNTS is JSON")
}

#[test]
fn syscalls_workload_runs_and_reports_its_counts() {
    common::image_dir("6.1");
    let out = run_guest(&["--", "/bin/syscalls", "1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", console(&out));
    let c = counts(&out);
    assert_eq!(c["getpid"], 1000);
    assert_eq!(c["openat"], 1001);
    assert_eq!(c["close"], 1001);
    assert_eq!(c["rounds"], 1000);
}

#[test]
fn exit_status_of_the_guest_command_is_returned() {
    common::image_dir("6.1");
    assert_eq!(run_guest(&["--", "/bin/false"]).status.code(), Some(1));
    let out = run_guest(&["--", "/bin/sh", "-c", "exit 42"]);
    assert_eq!(out.status.code(), Some(42), "{}", console(&out));
    // A command killed by a signal reports 128 + the signal, like a shell.
    let out = run_guest(&["--", "/bin/sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", console(&out));
}

#[test]
fn arguments_reach_the_guest_intact() {
    common::image_dir("6.1");
    let script = r#"for i in 1 2; do echo "$i"; done > /dev/null; printf '<%s>' "$0" "$1" 'a  b' "\$HOME;>x" '"q"'"#;
    let out = run_guest(&["--", "/bin/sh", "-c", script, "zero", "one two"]);
    assert_eq!(out.status.code(), Some(0), "{}", console(&out));
    assert!(
        console(&out).contains(r#"<zero><one two><a  b><$HOME;>x><"q">"#),
        "{}",
        console(&out)
    );
}

#[test]
fn timeout_stops_a_stuck_guest_and_leaves_no_qemu() {
    common::image_dir("6.1");
    // A unique marker in the command makes this run's QEMU findable by pgrep.
    let tag = format!("deadlock-test-{}", std::process::id());
    let script = format!("/bin/deadlock; : {tag}");
    let started = Instant::now();
    let out = run_guest(&["--timeout", "5", "--", "/bin/sh", "-c", &script]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(125), "{}", console(&out));
    assert!(
        console(&out).contains("timed out after 5 s"),
        "{}",
        console(&out)
    );
    // 5 s of guest time plus a bounded stop (SIGTERM, then SIGKILL after 10 s).
    assert!(took < Duration::from_secs(5 + 10 + 5), "took {took:?}");
    let hex: String = tag.bytes().map(|b| format!("{b:02x}")).collect();
    let left = std::process::Command::new("pgrep")
        .args(["-f", &hex])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "QEMU left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn guest_panic_is_reported_as_an_error() {
    common::image_dir("6.1");
    // Without an initramfs init the kernel looks for a root file system,
    // finds none, and panics.
    let out = run_guest(&["--append", "rdinit=/nonexistent", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", console(&out));
    assert!(
        console(&out).contains("the guest kernel panicked"),
        "{}",
        console(&out)
    );
}

#[test]
fn both_kernel_lines_boot() {
    for (line, prefix) in [("6.1", "6.1.0-"), ("6.12", "6.12.")] {
        common::image_dir(line);
        let out = run_guest(&[
            "--kernel-line",
            line,
            "--",
            "/bin/sh",
            "-c",
            "echo release=$(uname -r)",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", console(&out));
        let text = console(&out);
        let release = text
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix("release="))
            .unwrap_or_else(|| panic!("no release line:\n{text}"));
        assert!(release.starts_with(prefix), "line {line} booted {release}");
    }
}

#[test]
fn capture_port_carries_bulk_output_out_of_the_guest() {
    common::image_dir("6.1");
    let dir = std::env::temp_dir().join(format!("hvtrace-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out");
    let out = run_guest(&[
        "--capture",
        file.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "seq 1 20000 > /dev/ttyS1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", console(&out));
    let text = std::fs::read_to_string(&file).unwrap().replace('\r', "");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert_eq!(lines[19999], "20000");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let out = run_guest(&[
        "--kernel",
        "/nonexistent/vmlinuz",
        "--initrd",
        "/etc/hostname",
        "--",
        "/bin/true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        console(&out).contains("/nonexistent/vmlinuz does not exist"),
        "{}",
        console(&out)
    );
}

/// Kernels and initramfs that cannot boot are refused before anything
/// starts, with the message `record` gives, on both engines: not handed to
/// QEMU (which said "linux kernel too old to load a ram disk") or booted
/// into a hang.
#[test]
fn bad_kernels_and_initramfs_are_refused_up_front() {
    let image = common::image_dir("6.1");
    let (kernel, initrd) = (image.join("vmlinuz"), image.join("initrd.img"));
    let dir = std::env::temp_dir().join(format!("hvtrace-run-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(&kernel).unwrap();
    let n = good.len();
    let mut middle = good.clone();
    for b in &mut middle[n / 2..n / 2 + 4096] {
        *b ^= 0x5a;
    }
    let random: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let files = [
        ("empty", Vec::new()),
        ("ls", std::fs::read("/bin/ls").unwrap()),
        ("random", random),
        ("truncated", good[..n * 2 / 3].to_vec()),
        ("corrupt-middle", middle),
    ];
    let cases = files.iter().map(|(name, bytes)| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        (p, initrd.clone(), "recovering symbols of")
    });
    let bad_initrd = (
        kernel.clone(),
        std::path::PathBuf::from("/bin/ls"),
        "is not an initramfs",
    );
    for (k, i, says) in cases.chain([bad_initrd]) {
        for backend in ["qemu", "kvm"] {
            let t = std::time::Instant::now();
            let out = common::hvtrace()
                .args(["run", "--backend", backend, "--kernel"])
                .arg(&k)
                .arg("--initrd")
                .arg(&i)
                .args(["--", "/bin/true"])
                .output()
                .unwrap();
            let text = console(&out);
            assert_eq!(
                out.status.code(),
                Some(125),
                "{k:?} {i:?} {backend}: {text}"
            );
            assert!(text.contains(says), "{k:?} {i:?} {backend}: {text}");
            // One message, not repeated by the error's own sources.
            let last = text.lines().last().unwrap_or_default();
            let parts: Vec<&str> = last.split(": ").collect();
            let unique: std::collections::BTreeSet<&&str> = parts.iter().collect();
            assert_eq!(unique.len(), parts.len(), "repeated: {last}");
            // Refused, not booted: well under a guest's boot time.
            assert!(t.elapsed() < std::time::Duration::from_secs(20), "{k:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_command_is_a_usage_error() {
    let out = common::hvtrace()
        .args(["run", "--backend", "qemu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(console(&out).contains("CMD"), "{}", console(&out));
}
