//! End-to-end tests of `hvtrace report` on real traces of the default image
//! (QEMU TCG engine): the answers are held against what the workloads did.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hvtrace-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn record(name: &str, cmd: &[&str]) -> (PathBuf, Output) {
    common::image_dir("6.1");
    let dir = scratch(name);
    let out = common::hvtrace()
        .args(["record", "--backend", "qemu", "-o"])
        .arg(&dir)
        .arg("--")
        .args(cmd)
        .output()
        .expect("run hvtrace record");
    assert!(
        dir.join("kernel/metadata").is_file(),
        "no trace:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, out)
}

fn report_json(dir: &std::path::Path) -> serde_json::Value {
    let out = common::hvtrace()
        .arg("report")
        .arg(dir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report --json prints JSON")
}

/// A trace in which two processes deadlock on two flocks; the shell that
/// started them ends after a few seconds, so the run itself finishes.
fn deadlock_trace() -> &'static (PathBuf, Output) {
    static T: OnceLock<(PathBuf, Output)> = OnceLock::new();
    T.get_or_init(|| record("deadlock", &["/bin/sh", "-c", "/bin/deadlock & sleep 4"]))
}

fn deadlock_pids(out: &Output) -> (i64, i64) {
    let console = String::from_utf8_lossy(&out.stderr);
    let line = console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("DEADLOCK pids "))
        .unwrap_or_else(|| panic!("the workload printed its pids:\n{console}"));
    let mut it = line.split_whitespace().map(|p| p.parse::<i64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn report_names_the_deadlocked_processes_their_flocks_and_the_cycle() {
    let (dir, out) = deadlock_trace();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (parent, child) = deadlock_pids(out);
    let r = report_json(dir);

    let waits = r["locks"]["waits"].as_array().unwrap();
    let waiting: Vec<i64> = waits.iter().map(|w| w["tid"].as_i64().unwrap()).collect();
    assert!(
        waiting.contains(&parent) && waiting.contains(&child),
        "{waits:?}"
    );
    for w in waits {
        assert!(w["call"].as_str().unwrap().starts_with("flock("), "{w}");
        assert_eq!(w["comm"], "deadlock");
    }
    let file_of = |tid: i64| {
        waits.iter().find(|w| w["tid"] == tid).unwrap()["file"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The parent takes lock-a then lock-b; the child the opposite order.
    assert_eq!(file_of(parent), "/tmp/lock-b");
    assert_eq!(file_of(child), "/tmp/lock-a");
    let holder_of =
        |tid: i64| waits.iter().find(|w| w["tid"] == tid).unwrap()["holder_tid"].as_i64();
    assert_eq!(holder_of(parent), Some(child));
    assert_eq!(holder_of(child), Some(parent));
    let mut cycle: Vec<i64> = r["locks"]["cycles"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    cycle.sort();
    let mut expect = vec![parent, child];
    expect.sort();
    assert_eq!(cycle, expect);

    // Both are still blocked in flock when the trace ends.
    let tasks = r["tasks"].as_array().unwrap();
    for pid in [parent, child] {
        let t = tasks.iter().find(|t| t["tid"] == pid).unwrap();
        assert_eq!(t["blocked_at_end"]["name"], "flock", "{t}");
        assert!(
            t["blocked_ns"]["flock"].as_u64().unwrap() > 1_000_000_000,
            "blocked > 1 s: {t}"
        );
    }

    // The terminal form says it in words.
    let text = common::hvtrace().arg("report").arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DEADLOCK:"), "{text}");
    assert!(
        text.contains(&format!("tid {parent} (deadlock) waits in flock(")),
        "{text}"
    );
}

#[test]
fn syscall_table_counts_match_the_workload() {
    let (dir, out) = record("syscalls", &["/bin/syscalls", "200"]);
    assert_eq!(out.status.code(), Some(0));
    let r = report_json(&dir);
    let sys = &r["syscalls"];
    // Only the workload makes these calls in this guest (clock_gettime
    // elsewhere goes through the vDSO, without a syscall): one per round,
    // and two more clock_gettime that time its work (its `elapsed_ns`).
    for (name, n) in [("getpid", 200), ("nanosleep", 200), ("clock_gettime", 202)] {
        assert_eq!(sys[name]["count"], n, "{name}: {}", sys[name]);
    }
    for (name, s) in sys.as_object().unwrap() {
        let (p50, p99, max) = (
            s["p50_ns"].as_u64().unwrap(),
            s["p99_ns"].as_u64().unwrap(),
            s["max_ns"].as_u64().unwrap(),
        );
        assert!(p50 <= p99 && p99 <= max, "{name}: {s}");
        assert!(s["total_ns"].as_u64().unwrap() >= max, "{name}: {s}");
    }
    let irqs = r["irqs"].as_object().unwrap();
    assert!(
        irqs.keys().any(|k| k.ends_with(" timer")),
        "the local timer/PIT is listed: {irqs:?}"
    );
    let task = r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["comm"] == "syscalls")
        .unwrap();
    assert!(task["syscall_ns"]["getpid"].as_u64().unwrap() > 0, "{task}");
    assert!(task["user_ns"].as_u64().unwrap() > 0, "{task}");
}

#[test]
fn html_report_loads_in_chromium_and_draws_the_lanes() {
    let (dir, _) = deadlock_trace();
    let page = dir.join("report.html");
    let out = common::hvtrace()
        .arg("report")
        .arg(dir)
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched (the SVG namespace is a name, not a fetch).
    assert!(
        !html.contains("src=\"http")
            && !html.contains("href=\"http")
            && !html.contains("<script src")
    );

    let profile = scratch("chromium-profile");
    let chromium = |extra: &[&str]| {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("chromium is installed by scripts/install-deps.sh")
    };
    let dom = chromium(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(r#"data-status="ok""#),
        "the page's script ran without errors"
    );
    assert_eq!(
        dom.matches(r#"class="lane""#).count(),
        1,
        "one lane per vCPU"
    );
    assert!(
        dom.matches(r#"class="run""#).count() > 10,
        "running slices drawn"
    );
    assert!(
        dom.matches(r#"class="syscall""#).count() > 10,
        "syscall spans drawn"
    );
    assert!(
        dom.contains("deadlock (pid "),
        "the legend names the processes"
    );
    let shot = dir.join("report.png");
    chromium(&[
        "--window-size=1400,900",
        &format!("--screenshot={}", shot.display()),
    ]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[1..4], b"PNG");
    // 1400 px wide, as asked (IHDR width, big-endian at offset 16).
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1400);
}
