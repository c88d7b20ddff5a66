//! `--time-transparent` (QEMU engine): the guest's clock follows the
//! instructions it executes, so tracing does not lengthen what the guest
//! measures, and the trace's timestamps are the guest's own time.

mod common;
mod record_support;

/// The `elapsed_ns` /bin/syscalls measured itself (CLOCK_MONOTONIC).
fn elapsed_ns(console: &str) -> u64 {
    let line = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("COUNTS "))
        .unwrap_or_else(|| panic!("no COUNTS line:\n{console}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("COUNTS is JSON");
    v["elapsed_ns"].as_u64().expect("elapsed_ns")
}

/// `hvtrace run` of the workload, untraced; its guest-measured duration.
fn untraced(line: &str, opts: &[&str], rounds: &str) -> u64 {
    let image = common::image_dir(line);
    let out = common::hvtrace()
        .args(["run", "--backend", "qemu"])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(opts)
        .args(["--", "/bin/syscalls", rounds])
        .output()
        .expect("run hvtrace run");
    let console =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{console}");
    elapsed_ns(&console)
}

/// Traced; its guest-measured duration and the trace's span of it (first
/// clock_gettime entry to last clock_gettime exit of the workload: the two
/// reads it timed itself with lie inside).
fn traced(line: &str, opts: &[&str], rounds: &str) -> (u64, u64) {
    let opts = [&["--events", "syscalls,sched,irq"][..], opts].concat();
    let r = record_support::record_with(line, 1, "tt", &opts, &["/bin/syscalls", rounds]);
    assert_eq!(r.status, 0, "{}", r.console);
    let reads: Vec<&record_support::Ev> = r
        .events
        .iter()
        .filter(|e| e.procname == "syscalls" && e.name.ends_with("_clock_gettime"))
        .collect();
    let first = reads
        .iter()
        .find(|e| e.name.starts_with("syscall_entry_"))
        .expect("the workload's first clock_gettime");
    let last = reads
        .iter()
        .rfind(|e| e.name.starts_with("syscall_exit_"))
        .expect("its last clock_gettime");
    let _ = std::fs::remove_dir_all(&r.dir);
    (elapsed_ns(&r.console), last.ts - first.ts)
}

#[test]
fn tracing_is_invisible_to_the_guest_clock_6_1() {
    let rounds = "2000";
    let tt = ["--time-transparent"];
    let (base_tt, (traced_tt, span)) = (untraced("6.1", &tt, rounds), traced("6.1", &tt, rounds));
    let (base, (traced_normal, _)) = (untraced("6.1", &[], rounds), traced("6.1", &[], rounds));
    let ratio_tt = traced_tt as f64 / base_tt as f64;
    let ratio = traced_normal as f64 / base as f64;
    eprintln!(
        "guest-measured /bin/syscalls {rounds}: time-transparent {base_tt} ns untraced, {traced_tt} ns traced ({ratio_tt:.4}x); \
         normal {base} ns untraced, {traced_normal} ns traced ({ratio:.4}x); trace span {span} ns"
    );
    assert!(
        (ratio_tt - 1.0).abs() < 0.005,
        "traced/untraced {ratio_tt:.4}"
    );
    let off = (span as f64 - traced_tt as f64).abs() / traced_tt as f64;
    assert!(
        off < 0.01,
        "trace span {span} ns vs measured {traced_tt} ns"
    );
}

#[test]
fn time_transparent_is_refused_where_it_cannot_hold() {
    for (opts, says) in [
        (&["--backend", "kvm"][..], "needs the QEMU engine"),
        (&["--backend", "qemu", "--vcpus", "2"][..], "one vCPU"),
    ] {
        let out = common::hvtrace()
            .args([
                "record",
                "--time-transparent",
                "-o",
                "/nonexistent/hvtrace-tt",
            ])
            .args(opts)
            .args(["--", "/bin/true"])
            .output()
            .expect("run hvtrace");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert!(err.contains(says), "{opts:?}: {err}");
        assert!(!std::path::Path::new("/nonexistent/hvtrace-tt").exists());
    }
}
