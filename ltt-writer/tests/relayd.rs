//! Streaming to a real lttng-relayd (Debian `lttng-tools`) on loopback: the
//! relayd's copy reads, with babeltrace2, exactly as the local trace does.
//! Skipped (with a note) where `lttng-relayd` or `babeltrace2` is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ltt_writer::relayd::Endpoint;
use ltt_writer::*;

/// A relayd on three free loopback ports, its output and home in a
/// temporary folder; killed when dropped.
struct Relayd {
    child: Child,
    control: u16,
    data: u16,
    out: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl Relayd {
    fn start(dir: &Path) -> Option<Relayd> {
        let (c, d, l) = (free_port(), free_port(), free_port());
        let out = dir.join("relayd-out");
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let child = Command::new("lttng-relayd")
            .arg(format!("--control-port=tcp://127.0.0.1:{c}"))
            .arg(format!("--data-port=tcp://127.0.0.1:{d}"))
            .arg(format!("--live-port=tcp://127.0.0.1:{l}"))
            .arg(format!("--output={}", out.display()))
            .env("HOME", &home)
            .env("LTTNG_HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let r = Relayd {
            child,
            control: c,
            data: d,
            out,
        };
        let t = Instant::now();
        let up = |p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
        while !up(c) || !up(d) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "relayd did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&format!("127.0.0.1:{}:{}", self.control, self.data)).unwrap()
    }
}

impl Drop for Relayd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn bt2_lines(dir: &Path) -> Vec<String> {
    let o = Command::new("babeltrace2")
        .arg("--no-delta")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "babeltrace2 {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_trace(out: &Path, relayd: Option<RelaydConfig>, events: u64) -> TraceReport {
    write_trace_with(out, relayd, events, Policy::Lossless)
}

fn write_trace_with(
    out: &Path,
    relayd: Option<RelaydConfig>,
    events: u64,
    policy: Policy,
) -> TraceReport {
    let catalog = Catalog::kernel(&[]).unwrap();
    let mut cfg = TraceConfig::new(2, catalog);
    cfg.packet_size = 4096;
    cfg.policy = policy;
    cfg.clock_offset_ns = 1_700_000_000_000_000_000;
    cfg.relayd = relayd;
    let (w, mut ps) = TraceWriter::create(out, cfg).unwrap();
    let ctx = TaskCtx::new(42, 42, b"sh");
    for i in 0..events {
        let a = TaskRef {
            comm: b"sh",
            tid: 42,
            prio: 20,
        };
        let b = TaskRef {
            comm: b"swapper/0",
            tid: 0,
            prio: 20,
        };
        let p = &mut ps[(i % 2) as usize];
        p.sched_switch(1000 + i * 100, &ctx, a, 1, b).unwrap();
    }
    drop(ps);
    w.finish().unwrap()
}

#[test]
fn relayd_copy_reads_as_the_local_trace() {
    if !have("lttng-relayd") || !have("babeltrace2") {
        eprintln!("skipped: lttng-relayd or babeltrace2 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relayd = Relayd::start(dir.path()).unwrap();
    let mut cfg = RelaydConfig::new(relayd.endpoint(), "unit", "testhost");
    // The writer here outruns any network (4 KiB packets in a loop): a
    // queue that holds the whole run keeps this test about the copy.
    cfg.queue_packets = 1024;
    let out = dir.path().join("local");
    let r = write_trace(&out, Some(cfg), 3000);
    let rr = r.relayd.clone().expect("a relayd report");
    assert_eq!(rr.error, None, "{}", rr.summary());
    assert_eq!(rr.unsent_packets, 0);
    assert_eq!(rr.sent_packets, r.packets_written);
    // relayd writes as the stream closes: wait for the last packet.
    let copy = relayd.out.join("testhost/unit");
    let local = bt2_lines(&out);
    assert_eq!(local.len(), 3000);
    let t = Instant::now();
    loop {
        let got = std::panic::catch_unwind(|| bt2_lines(&copy)).unwrap_or_default();
        if got == local {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "relayd's copy has {} lines, the local trace {}",
            got.len(),
            local.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(copy.join("kernel/index/channel0_0.idx").exists());
}

#[test]
fn unreachable_relayd_leaves_the_local_trace_whole() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ep = Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
    assert!(ltt_writer::relayd::probe(&ep).is_err());
    let out = dir.path().join("local");
    let r = write_trace(&out, Some(RelaydConfig::new(ep, "s", "h")), 500);
    let rr = r.relayd.clone().unwrap();
    assert!(
        rr.error.as_deref().unwrap_or("").contains("connect"),
        "{rr:?}"
    );
    assert_eq!(rr.sent_packets, 0);
    assert_eq!(rr.unsent_events, 500);
    assert_eq!(r.events(), 500);
}

#[test]
fn flight_recorder_window_goes_as_a_snapshot_session() {
    if !have("lttng-relayd") || !have("babeltrace2") {
        eprintln!("skipped: lttng-relayd or babeltrace2 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relayd = Relayd::start(dir.path()).unwrap();
    let cfg = RelaydConfig::new(relayd.endpoint(), "fr", "testhost");
    let out = dir.path().join("local");
    let policy = Policy::FlightRecorder {
        bytes_per_cpu: 4 * 4096,
    };
    let r = write_trace_with(&out, Some(cfg), 3000, policy);
    let rr = r.relayd.clone().unwrap();
    assert_eq!(rr.snapshots_sent, 1, "{}", rr.summary());
    assert!(!rr.live);
    let local = bt2_lines(&out);
    assert!(
        !local.is_empty() && local.len() < 3000,
        "a window, not the whole run"
    );
    let copy = relayd.out.join("testhost/fr/end");
    let t = Instant::now();
    while std::panic::catch_unwind(|| bt2_lines(&copy)).unwrap_or_default() != local {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "relayd's snapshot differs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_relayd_that_falls_behind_loses_packets_not_the_writer() {
    if !have("lttng-relayd") || !have("babeltrace2") {
        eprintln!("skipped: lttng-relayd or babeltrace2 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relayd = Relayd::start(dir.path()).unwrap();
    let mut cfg = RelaydConfig::new(relayd.endpoint(), "slow", "testhost");
    cfg.queue_packets = 1;
    let out = dir.path().join("local");
    let r = write_trace(&out, Some(cfg), 6000);
    let rr = r.relayd.clone().unwrap();
    assert_eq!(r.events(), 6000, "the local trace is whole");
    assert_eq!(bt2_lines(&out).len(), 6000);
    assert!(rr.unsent_queue_full > 0, "{}", rr.summary());
    assert_eq!(rr.unsent_packets, rr.unsent_queue_full);
    assert_eq!(rr.sent_packets + rr.unsent_packets, r.packets_written);
    assert!(rr.summary().contains("queue full"), "{}", rr.summary());
    assert_eq!(rr.error, None);
}
