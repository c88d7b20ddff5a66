//! `--time-transparent` (QEMU engine): the guest's clock follows the
//! instructions it executes, so tracing does not lengthen what the guest
//! measures, and the trace's timestamps are the guest's own time. The KVM
//! engine cannot hide its exits, and says how much time the guest saw go.

mod common;
mod record_support;

/// The `elapsed_ns` /bin/syscalls measured itself (CLOCK_MONOTONIC), of
/// each run in `console`, in order.
fn elapsed_all(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COUNTS "))
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("COUNTS is JSON");
            v["elapsed_ns"].as_u64().expect("elapsed_ns")
        })
        .collect()
}

fn elapsed_ns(console: &str) -> u64 {
    *elapsed_all(console)
        .first()
        .unwrap_or_else(|| panic!("no COUNTS line:\n{console}"))
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

/// On the KVM monitor (the stock-KVM harness here) every probe hit is an
/// exit the guest's clock sees. The summary's estimate of that time, from
/// the command's exec on (handling time plus one round trip per exit),
/// must account for most of what the workload measured: its traced
/// duration less its untraced one (`--baseline` runs it first), and never
/// for much more. Here, under QEMU's emulated SVM, it accounts for 72-86 %:
/// the guest's own execution also slows after each exit (its time inside
/// KVM_RUN less the round trips grows by tens of microseconds per exit),
/// which no timer on the exit path can see, so the bound is 50 %, not the
/// 80 % a hardware KVM should reach.
#[test]
fn kvm_summary_gives_the_tracer_time_the_guest_saw() {
    let Some((mut hvtrace, _machine)) = common::hvtrace_on_kvm_locked() else {
        return;
    };
    common::image_dir("6.1");
    let dir = std::env::temp_dir().join(format!("hvtrace-tt-kvm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Enough rounds that the workload, not the boot, holds most exits.
    let out = hvtrace
        .args(["record", "--backend", "kvm", "--baseline", "-o"])
        .arg(&dir)
        .args(["--", "/bin/syscalls", "1000"])
        .output()
        .expect("run hvtrace");
    let console =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{console}");
    assert!(console.contains("not time-transparent (KVM)"), "{console}");
    let [untraced, traced] = elapsed_all(&console)[..] else {
        panic!("expected the baseline's and the traced run's COUNTS:\n{console}");
    };
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("kvm.json")).expect("kvm.json"))
            .expect("kvm.json is JSON");
    let t = &report["tracer_time"];
    let estimate = t["command"]["guest_visible_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no command share in {t}"));
    assert!(
        t["exit_round_trip_ns"].as_f64().is_some_and(|ns| ns > 0.0),
        "{t}"
    );
    let seen = traced.saturating_sub(untraced);
    let ratio = estimate as f64 / seen as f64;
    eprintln!(
        "guest-measured: untraced {untraced} ns, traced {traced} ns, difference {seen} ns; \
         the monitor's estimate {estimate} ns ({ratio:.3}x); whole run {} ns",
        t["guest_visible_ns"]
    );
    assert!((0.5..1.2).contains(&ratio), "estimate/measured {ratio:.3}");
    let _ = std::fs::remove_dir_all(&dir);
}
