//! The runner of `tests/faults.rs`: one `hvtrace record` per case, driven
//! from outside as a user (or a crash) would, then checked.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;

/// What to wait for before acting.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// A line of hvtrace's stderr (its own lines and the guest console).
    Stderr(&'static str),
    /// A file in the output folder.
    File(&'static str),
    /// A file in the case's fresh `HVTRACE_CACHE` (`symbols`: the folder
    /// made just before symbols are recovered).
    Cache(&'static str),
}

/// What is done to the run.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Nothing: the guest's own command is the fault.
    None,
    /// This signal to hvtrace.
    Signal(Wait, i32),
    /// This signal to hvtrace, then again as soon as it says it is stopping.
    SignalTwice(Wait, i32),
    /// This signal to hvtrace's QEMU.
    KillQemu(Wait, i32),
}

/// What must be in the output folder afterwards.
#[derive(Debug, Clone, Copy)]
pub enum Trace {
    /// No trace: nothing was booted.
    None,
    /// babeltrace2 reads `DIR/kernel` without an error.
    Readable,
    /// And it holds syscall events of this guest process.
    Command(&'static str),
    /// [`Trace::Command`] if the guest printed this line, else readable.
    CommandIfSaid(&'static str, &'static str),
}

pub struct Case {
    pub name: &'static str,
    /// Run with an empty `HVTRACE_CACHE`: the symbols are recovered anew.
    pub fresh_cache: bool,
    /// The guest command, given to `/bin/sh -c`.
    pub script: &'static str,
    pub opts: &'static [&'static str],
    pub action: Action,
    pub status: i32,
    /// Lines hvtrace's stderr must contain.
    pub says: &'static [&'static str],
    pub trace: Trace,
}

/// How long a case may take before it counts as hung.
const HUNG: Duration = Duration::from_secs(300);

/// Runs every case (one after the other: the machine is shared) and fails
/// with all failures listed.
pub fn run_all(cases: &[Case]) {
    let image = common::image_dir("6.1");
    let mut failed = Vec::new();
    for case in cases {
        let t = Instant::now();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case, &image)));
        match res {
            Ok(summary) => println!(
                "ok: {} ({:.1} s): {summary}",
                case.name,
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("FAILED: {}: {msg}", case.name);
                failed.push(case.name);
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Pids of live processes whose command line holds `tag` in the hex
/// encoding hvtrace gives the guest command (this run's QEMU only).
fn processes_with(tag: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &hex(tag)])
        .output()
        .expect("pgrep (procps) runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The children of `pid` (all its threads').
fn children(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return kids;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            kids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    kids
}

fn kill(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Where a run writes: its output folder and its own cache, if any.
struct Dirs<'a> {
    out: &'a Path,
    cache: Option<&'a Path>,
}

fn wait_for(what: Wait, stderr: &Mutex<String>, dirs: &Dirs, child: &mut Child) {
    let t = Instant::now();
    loop {
        let seen = match what {
            Wait::Stderr(s) => stderr.lock().unwrap().contains(s),
            Wait::File(f) => dirs.out.join(f).exists(),
            Wait::Cache(f) => dirs.cache.expect("a fresh cache").join(f).exists(),
        };
        if seen {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "hvtrace ended ({st}) before {what:?}:\n{}",
                stderr.lock().unwrap()
            );
        }
        assert!(t.elapsed() < HUNG, "{what:?} never came");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One case; returns a line of figures for the log.
fn run_case(case: &Case, image: &Path) -> String {
    // Unique across the tables of this process, which run side by side:
    // an index of its own table would give two cases one output folder.
    static CASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("fault-{}-{n}", std::process::id());
    let dir = std::env::temp_dir().join(format!("hvtrace-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let cache: Option<PathBuf> = case.fresh_cache.then(|| {
        let c = std::env::temp_dir().join(format!("hvtrace-{tag}-cache"));
        let _ = std::fs::remove_dir_all(&c);
        c
    });
    let script = format!("{}; : {tag}", case.script);
    let mut cmd = common::hvtrace();
    cmd.args(["record", "--backend", "qemu", "--force", "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(case.opts)
        .arg("-o")
        .arg(&dir)
        .args(["--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(c) = &cache {
        cmd.env("HVTRACE_CACHE", c);
    }
    let mut child = cmd.spawn().expect("start hvtrace");
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let err = child.stderr.take().unwrap();
        let stderr = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    let mut qemus = Vec::new();
    let dirs = Dirs {
        out: &dir,
        cache: cache.as_deref(),
    };
    match case.action {
        Action::None => {}
        Action::Signal(w, sig) => {
            wait_for(w, &stderr, &dirs, &mut child);
            qemus = children(child.id());
            kill(child.id(), sig);
        }
        Action::SignalTwice(w, sig) => {
            wait_for(w, &stderr, &dirs, &mut child);
            qemus = children(child.id());
            kill(child.id(), sig);
            wait_for(
                Wait::Stderr("stopping the guest and finishing the trace"),
                &stderr,
                &dirs,
                &mut child,
            );
            kill(child.id(), sig);
        }
        Action::KillQemu(w, sig) => {
            wait_for(w, &stderr, &dirs, &mut child);
            // Killed "while tracing": once the trace exists (on a loaded
            // CI machine the guest's line once came before it).
            wait_for(Wait::File("kernel/metadata"), &stderr, &dirs, &mut child);
            qemus = children(child.id());
            assert_eq!(qemus.len(), 1, "QEMU is hvtrace's one child: {qemus:?}");
            kill(qemus[0], sig);
        }
    }
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > HUNG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hung: hvtrace still runs after {HUNG:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let err = stderr.lock().unwrap().clone();
    let tail: String = {
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    assert_eq!(
        status.code(),
        Some(case.status),
        "status; stderr ends:\n{tail}"
    );
    for s in case.says {
        assert!(err.contains(s), "no {s:?} in stderr:\n{tail}");
    }
    // Nothing left: neither the QEMU seen running nor any with this tag.
    for pid in &qemus {
        let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&hex(&tag)));
        assert!(!alive, "QEMU {pid} is left running");
    }
    let left = processes_with(&tag);
    assert!(left.is_empty(), "processes left: {left:?}");
    let expect = match case.trace {
        Trace::CommandIfSaid(comm, line) if err.contains(line) => Trace::Command(comm),
        Trace::CommandIfSaid(..) => {
            println!("{}: the guest never said it made its syscalls", case.name);
            Trace::Readable
        }
        t => t,
    };
    let summary = check_trace(expect, &dir.join("kernel"));
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(c) = cache {
        let _ = std::fs::remove_dir_all(c);
    }
    format!("exit {status}; {summary}")
}

/// Reads the trace as `expect` says; returns what was read.
fn check_trace(expect: Trace, trace: &Path) -> String {
    if let Trace::None = expect {
        assert!(
            !trace.join("metadata").exists(),
            "a trace was started: {}",
            trace.display()
        );
        return "no trace".into();
    }
    assert!(
        trace.join("metadata").is_file(),
        "no trace in {}",
        trace.display()
    );
    let out = Command::new("babeltrace2")
        .arg(trace)
        .output()
        .expect("babeltrace2 (Debian package babeltrace2) runs");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && errors.trim().is_empty(),
        "babeltrace2 on {}: {:?}\n{errors}",
        trace.display(),
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let events = text.lines().count();
    let mut summary = format!("babeltrace2 read {events} events");
    if let Trace::Command(comm) = expect {
        let procname = format!("procname = \"{comm}\"");
        let own = text
            .lines()
            .filter(|l| l.contains("syscall_entry_") && l.contains(&procname))
            .count();
        assert!(own > 0, "no syscall of {comm} in the {events} events read");
        summary.push_str(&format!(", {own} syscall entries of {comm}"));
    }
    summary
}
