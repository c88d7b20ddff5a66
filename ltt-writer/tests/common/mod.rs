//! Helpers shared by the integration tests: run the real babeltrace2 (CLI
//! and Python bindings) on a trace and collect what it reads.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;

pub const BABELTRACE2: &str = "/usr/bin/babeltrace2";
/// The system Python has `bt2`; a pyenv `python3` on PATH may not.
pub const PYTHON: &str = "/usr/bin/python3";

fn require(tool: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: install babeltrace2 and python3-bt2 (scripts/install-deps.sh)"
    );
}

/// What babeltrace2's Python bindings read from a trace.
pub struct Bt2Read {
    pub records: Vec<Json>,
    pub stderr: String,
}

impl Bt2Read {
    pub fn events(&self) -> Vec<&Json> {
        self.records.iter().filter(|r| r["t"] == "event").collect()
    }
    pub fn events_of_cpu(&self, cpu: u64) -> Vec<&Json> {
        self.events()
            .into_iter()
            .filter(|e| e["cpu"] == cpu)
            .collect()
    }
    pub fn discarded(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| r["t"] == "discarded")
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    }
    pub fn of_type(&self, t: &str) -> Vec<&Json> {
        self.records.iter().filter(|r| r["t"] == t).collect()
    }
}

/// Read `trace` with `bt2.TraceCollectionMessageIterator`; panics if the
/// reader fails.
pub fn bt2_read(trace: &Path) -> Bt2Read {
    require(PYTHON);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bt2_dump.py");
    let out = Command::new(PYTHON)
        .arg(script)
        .arg(trace)
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "bt2 failed on {}: {stderr}",
        trace.display()
    );
    let records = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    Bt2Read { records, stderr }
}

/// Run the `babeltrace2` CLI on `trace`: (status ok, stdout lines, stderr).
pub fn babeltrace_cli(trace: &Path) -> (bool, Vec<String>, String) {
    require(BABELTRACE2);
    let out = Command::new(BABELTRACE2)
        .arg(trace)
        .output()
        .expect("run babeltrace2");
    let stdout = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (
        out.status.success(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Assert the CLI reads the trace with no warning or error and prints
/// `n` events.
pub fn assert_cli_clean(trace: &Path, n: usize) {
    let (ok, lines, stderr) = babeltrace_cli(trace);
    assert!(ok, "babeltrace2 failed: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "babeltrace2 printed on stderr: {stderr}"
    );
    assert_eq!(
        lines.len(),
        n,
        "babeltrace2 printed {} events, expected {n}",
        lines.len()
    );
}

/// A fresh temporary folder.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ltt-writer-test")
        .tempdir()
        .expect("tempdir")
}

/// A stream file that is a FIFO, read by a thread when told to: a writer
/// that cannot write (a slow disk) on demand.
pub struct SlowStream {
    pub go: std::sync::mpsc::Sender<Duration>,
    pub reader: std::thread::JoinHandle<Vec<u8>>,
}

pub fn fifo_stream(trace: &Path, cpu: u32) -> SlowStream {
    let kdir = trace.join("kernel");
    std::fs::create_dir_all(&kdir).unwrap();
    let path = kdir.join(format!("channel0_{cpu}"));
    let st = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    let (go, rx) = std::sync::mpsc::channel::<Duration>();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&path).unwrap();
        let pause = rx.recv().unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            std::thread::sleep(pause);
        }
        out
    });
    SlowStream { go, reader }
}
