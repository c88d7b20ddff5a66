//! `hvtrace record --relayd` on the QEMU engine against a real lttng-relayd
//! (Debian `lttng-tools`) on loopback ports: a live viewer (babeltrace2
//! lttng-live) sees events while the guest still runs, and relayd's copy
//! reads, event for event, as the local trace; a relayd killed mid-run
//! neither stops nor fails the guest, and the summary says what was not
//! sent. On the KVM monitor (in the stock-KVM harness's L1, which reaches
//! this host's loopback through QEMU's user-mode network), relayd's copy
//! equals the local trace too.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A relayd on free loopback ports, with its output folder and home in a
/// temporary folder (it never reads or writes the user's); killed when
/// dropped, whatever happened.
struct Relayd {
    child: Child,
    ports: [u16; 3],
    out: PathBuf,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

impl Relayd {
    fn start(dir: &Path) -> Relayd {
        let ports = [free_port(), free_port(), free_port()];
        let out = dir.join("relayd-out");
        let home = dir.join("relayd-home");
        std::fs::create_dir_all(&home).unwrap();
        let url = |p: u16| format!("tcp://127.0.0.1:{p}");
        let child = Command::new("lttng-relayd")
            .args([
                "-C",
                &url(ports[0]),
                "-D",
                &url(ports[1]),
                "-L",
                &url(ports[2]),
            ])
            .arg("-o")
            .arg(&out)
            .env("HOME", &home)
            .env("LTTNG_HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lttng-relayd (Debian lttng-tools, installed by scripts/install-deps.sh)");
        let r = Relayd { child, ports, out };
        let t = Instant::now();
        while !ports
            .iter()
            .all(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok())
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "relayd did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn address(&self) -> String {
        self.address_via("127.0.0.1")
    }

    /// Its control and data ports at `host`, an address of this host's
    /// loopback.
    fn address_via(&self, host: &str) -> String {
        format!("{host}:{}:{}", self.ports[0], self.ports[1])
    }

    fn live_url(&self) -> String {
        format!("net://127.0.0.1:{}", self.ports[2])
    }

    /// Whether a live viewer can list session `host/session` now.
    fn lists(&self, host: &str, session: &str) -> bool {
        let o = Command::new("babeltrace2")
            .args(["--input-format=lttng-live", &self.live_url()])
            .output()
            .expect("babeltrace2");
        String::from_utf8_lossy(&o.stdout).contains(&format!("/host/{host}/{session} "))
    }
}

impl Drop for Relayd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child process when dropped (a failed assertion included).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hvtrace record` of a shell loop printing `tick` `n` times a second
/// apart (a run of several seconds with few events), streamed to `relayd`.
fn record(dir: &Path, relayd: &Relayd, session: &str, n: u32) -> Reaped {
    let image = common::image_dir("6.1");
    let list: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let script = format!("for i in {}; do sleep 1; echo tick; done", list.join(" "));
    let child = common::hvtrace()
        .args(["record", "--backend", "qemu", "--force"])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(dir.join(session))
        .args(["--relayd", &relayd.address(), "--relayd-hostname", "hvtest"])
        .args(["--", "/bin/sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hvtrace record");
    Reaped(child)
}

/// Waits for hvtrace; returns its exit status and stderr.
fn finish(mut hv: Reaped) -> (i32, String) {
    let mut err = String::new();
    if let Some(mut e) = hv.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let status = hv.0.wait().expect("wait hvtrace");
    (status.code().unwrap_or(-1), err)
}

fn bt2_lines(dir: &Path) -> Vec<String> {
    let o = Command::new("babeltrace2")
        .arg("--no-delta")
        .arg(dir)
        .output()
        .expect("babeltrace2");
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

/// The shell's `echo tick` writes.
fn ticks(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| {
            l.contains("syscall_entry_write:")
                && l.contains("procname = \"sh\"")
                && l.contains("count = 5 }")
        })
        .count()
}

fn wait_listed(relayd: &Relayd, hv: &mut Reaped, session: &str) {
    let t = Instant::now();
    while !relayd.lists("hvtest", session) {
        assert!(
            hv.0.try_wait().expect("poll hvtrace").is_none(),
            "hvtrace ended before relayd listed the session"
        );
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the session never showed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn live_viewer_follows_and_relayd_copy_equals_local_trace() {
    let dir = tempfile::tempdir().unwrap();
    let relayd = Relayd::start(dir.path());
    let mut hv = record(dir.path(), &relayd, "live", 6);
    wait_listed(&relayd, &mut hv, "live");
    let mut viewer = Reaped(
        Command::new("babeltrace2")
            .args(["--no-delta", "--input-format=lttng-live"])
            .arg(format!("{}/host/hvtest/live", relayd.live_url()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("babeltrace2 lttng-live"),
    );
    let lines = Arc::new(Mutex::new(Vec::new()));
    let hv_done = Arc::new(AtomicBool::new(false));
    let live_while_running = Arc::new(AtomicBool::new(false));
    let reader = {
        let (lines, done, live) = (lines.clone(), hv_done.clone(), live_while_running.clone());
        let out = viewer.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if !done.load(Ordering::SeqCst) {
                    live.store(true, Ordering::SeqCst);
                }
                lines.lock().unwrap().push(l);
            }
        })
    };
    while hv.0.try_wait().expect("poll hvtrace").is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    hv_done.store(true, Ordering::SeqCst);
    let (status, stderr) = finish(hv);
    assert_eq!(status, 0, "{stderr}");
    assert!(
        live_while_running.load(Ordering::SeqCst),
        "the live viewer got no event while hvtrace ran"
    );
    // The viewer ends when relayd says the session hung up.
    let t = Instant::now();
    while viewer.0.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the live viewer never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap();
    assert!(stderr.contains("relayd: sent "), "{stderr}");
    assert!(!stderr.contains("not sent"), "{stderr}");
    let local = bt2_lines(&dir.path().join("live/kernel"));
    assert_eq!(ticks(&local), 6, "the local trace holds the six echoes");
    let copy = bt2_lines(&relayd.out.join("hvtest/live"));
    assert_eq!(copy.len(), local.len(), "relayd's copy and the local trace");
    assert!(copy == local, "relayd's copy differs from the local trace");
    let live = lines.lock().unwrap().clone();
    assert!(
        live == local,
        "the live view ({} lines) differs from the local trace ({})",
        live.len(),
        local.len()
    );
}

#[test]
fn relayd_killed_mid_run_costs_the_guest_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relayd = Relayd::start(dir.path());
    let mut hv = record(dir.path(), &relayd, "killed", 8);
    wait_listed(&relayd, &mut hv, "killed");
    // Let some packets go (one a second), then kill relayd.
    std::thread::sleep(Duration::from_secs(3));
    relayd.child.kill().unwrap();
    let _ = relayd.child.wait();
    let (status, stderr) = finish(hv);
    assert_eq!(status, 0, "{stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.contains("relayd: sent "))
        .unwrap_or_else(|| panic!("no relayd summary:\n{stderr}"));
    assert!(
        summary.contains("not sent: ") && summary.contains("connection ended at"),
        "{summary}"
    );
    let local = bt2_lines(&dir.path().join("killed/kernel"));
    assert_eq!(
        ticks(&local),
        8,
        "the local trace holds every echo:\n{stderr}"
    );
    let copy = relayd.out.join("hvtest/killed");
    if copy.join("kernel/metadata").exists() {
        let got = bt2_lines(&copy);
        assert!(got.len() < local.len(), "relayd's copy cannot be whole");
        assert!(got.iter().all(|l| local.contains(l)));
    }
}

#[test]
fn unreachable_relayd_is_refused_before_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let image = common::image_dir("6.1");
    let o = common::hvtrace()
        .args(["record", "--backend", "qemu", "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&out)
        .args(["--relayd", &format!("127.0.0.1:{}", free_port())])
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("no lttng-relayd answers"), "{stderr}");
    assert!(!out.exists(), "no output folder for a refused record");
}

#[test]
fn an_output_url_says_to_use_relayd() {
    let image = common::image_dir("6.1");
    let o = common::hvtrace()
        .args(["record", "--backend", "qemu", "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(["-o", "net://127.0.0.1", "--", "/bin/true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("--relayd 127.0.0.1"), "{stderr}");
    assert!(!Path::new("net:").exists());
}

/// The KVM monitor streams through the same writer: relayd's copy of a
/// record made in the stock-KVM harness's L1 (or on a native KVM) reads,
/// event for event, as the local trace.
#[test]
fn kvm_record_streamed_to_relayd_equals_local_trace() {
    let Some((mut hv, host)) = common::hvtrace_on_kvm_with_host_loopback() else {
        return;
    };
    let _machine = common::machine_lock(false);
    // in the temporary folder, which the harness's L1 may write
    let tmp = tempfile::tempdir().unwrap();
    let relayd = Relayd::start(tmp.path());
    let image = common::image_dir("6.1");
    let local = tmp.path().join("kvmrun");
    let out = hv
        .args(["record", "--backend", "kvm"])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&local)
        .args(["--relayd", &relayd.address_via(host)])
        .args(["--relayd-hostname", "hvtest", "--", "/bin/syscalls", "50"])
        .output()
        .expect("run hvtrace record on KVM");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("relayd: sent "), "{err}");
    assert!(!err.contains("not sent"), "{err}");
    let mine = bt2_lines(&local.join("kernel"));
    let theirs = bt2_lines(&relayd.out.join("hvtest/kvmrun/kernel"));
    assert!(
        mine.iter().any(|l| l.contains("syscall_entry_getpid:")),
        "the workload's syscalls are in the trace"
    );
    assert_eq!(mine.len(), theirs.len(), "events: local vs relayd's copy");
    assert!(mine == theirs, "relayd's copy differs from the local trace");
}
