//! Helpers of the `hvtrace record` end-to-end tests: run a recording on
//! the project's image and read the trace back with babeltrace2.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

pub mod checks;
pub mod probe;
pub mod sched_irq;

/// One event as babeltrace2 prints it.
#[derive(Debug, Clone)]
pub struct Ev {
    /// Timestamp in clock cycles of the trace's clock (ns: freq 1e9).
    pub ts: u64,
    pub name: String,
    pub cpu: i64,
    pub pid: i64,
    pub tid: i64,
    pub procname: String,
    pub fields: BTreeMap<String, String>,
}

impl Ev {
    pub fn int(&self, k: &str) -> i64 {
        let v = self
            .fields
            .get(k)
            .unwrap_or_else(|| panic!("{} has no {k}: {self:?}", self.name));
        parse_int(v).unwrap_or_else(|| panic!("{k} = {v} is not an integer"))
    }
    pub fn text(&self, k: &str) -> String {
        self.fields
            .get(k)
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    }
}

pub fn parse_int(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok().map(|x| x as i64)
    } else {
        v.parse::<i64>()
            .ok()
            .or_else(|| v.parse::<u64>().ok().map(|x| x as i64))
    }
}

/// Splits `a = 1, b = "x, y", c = [ ... ]` at top-level commas.
pub fn split_fields(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    let b = s.as_bytes();
    let mut push = |part: &str| {
        if let Some((k, v)) = part.split_once(" = ") {
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    };
    for i in 0..b.len() {
        match b[i] {
            b'"' if i == 0 || b[i - 1] != b'\\' => quoted = !quoted,
            b'[' | b'{' if !quoted => depth += 1,
            b']' | b'}' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&s[start..]);
    out
}

/// Top-level `{ ... }` groups of a line.
pub fn groups(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0usize);
    for i in 0..b.len() {
        match b[i] {
            b'"' if i == 0 || b[i - 1] != b'\\' => quoted = !quoted,
            b'{' if !quoted => {
                if depth == 0 {
                    start = i + 1;
                }
                depth += 1;
            }
            b'}' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    out.push(s[start..i].trim());
                }
            }
            _ => {}
        }
    }
    out
}

/// Reads a trace with babeltrace2 (which must succeed).
pub fn babeltrace(trace: &Path) -> Vec<Ev> {
    let out = Command::new("babeltrace2")
        .arg("--clock-cycles")
        .arg(trace)
        .output()
        .expect("babeltrace2 (Debian package babeltrace2) runs");
    assert!(
        out.status.success(),
        "babeltrace2 failed on {}: {}",
        trace.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut evs = Vec::new();
    for line in text.lines() {
        let Some(colon) = line.find(": {") else {
            continue;
        };
        let name = line[..colon].rsplit(' ').next().unwrap_or("").to_string();
        let g = groups(&line[colon..]);
        if g.len() < 2 {
            continue;
        }
        let (c, t) = (split_fields(g[0]), split_fields(g[1]));
        let num = |m: &BTreeMap<String, String>, k: &str| {
            m.get(k).and_then(|v| parse_int(v)).unwrap_or(-1)
        };
        let ts = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .and_then(|(t, _)| t.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp on {line}"));
        evs.push(Ev {
            ts,
            name,
            cpu: num(&c, "cpu_id"),
            pid: num(&t, "pid"),
            tid: num(&t, "tid"),
            procname: t
                .get("procname")
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default(),
            fields: g.get(2).map(|f| split_fields(f)).unwrap_or_default(),
        });
    }
    assert!(
        !evs.is_empty(),
        "babeltrace2 printed no events for {}",
        trace.display()
    );
    evs
}

/// Where two snapshots of a /proc file were taken: the indices of the
/// `read` entry and exit of process `first`, then of process `second`
/// after it (e.g. two `cat`s of /proc/interrupts). What lies between the
/// The syscall entries of one task's events (`mine`, in order) in the
/// window the workloads count: from its `openat("/dev/null")` to the
/// `close` of that fd: a name -> count table, the window itself and the fd.
pub fn counted_window<'a>(mine: &[&'a Ev]) -> (BTreeMap<String, u64>, Vec<&'a Ev>, i64) {
    let start = mine
        .iter()
        .position(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/dev/null")
        .expect("openat(/dev/null) traced");
    let devnull = mine[start + 1..]
        .iter()
        .find(|e| e.name == "syscall_exit_openat")
        .map(|e| e.int("ret"))
        .expect("its return");
    assert!(devnull >= 0, "openat(/dev/null) returned {devnull}");
    let end = mine
        .iter()
        .rposition(|e| e.name == "syscall_entry_close" && e.int("fd") == devnull)
        .expect("close(/dev/null) traced");
    let window = mine[start..=end].to_vec();
    let mut traced: BTreeMap<String, u64> = BTreeMap::new();
    for e in &window {
        if let Some(n) = e.name.strip_prefix("syscall_entry_") {
            *traced.entry(n.to_string()).or_default() += 1;
        }
    }
    (traced, window, devnull)
}

/// first exit and the second entry is outside both reads.
pub fn two_reads(events: &[Ev], first: i64, second: i64) -> [usize; 4] {
    let pos = |from: usize, tid: i64, name: &str| {
        events[from..]
            .iter()
            .position(|e| e.tid == tid && e.name == name)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("{name} of {tid}"))
    };
    let in1 = pos(0, first, "syscall_entry_read");
    let out1 = pos(in1, first, "syscall_exit_read");
    let in2 = pos(out1, second, "syscall_entry_read");
    let out2 = pos(in2, second, "syscall_exit_read");
    [in1, out1, in2, out2]
}

pub struct Recorded {
    pub status: i32,
    pub console: String,
    pub events: Vec<Ev>,
    pub dir: PathBuf,
}

impl Recorded {
    /// The workload's `COUNTS {...}` line as name → value.
    pub fn counts(&self) -> BTreeMap<String, String> {
        let line = self
            .console
            .lines()
            .find_map(|l| l.trim().strip_prefix("COUNTS "))
            .unwrap_or_else(|| panic!("no COUNTS line in the console:\n{}", self.console));
        let inner = line.trim().trim_start_matches('{').trim_end_matches('}');
        let mut m = BTreeMap::new();
        let (mut depth, mut start) = (0, 0);
        let b = inner.as_bytes();
        for i in 0..=b.len() {
            if i == b.len() || (b[i] == b',' && depth == 0) {
                if let Some((k, v)) = inner[start..i].split_once(':') {
                    m.insert(k.trim_matches('"').to_string(), v.to_string());
                }
                start = i + 1;
            } else if b[i] == b'[' {
                depth += 1;
            } else if b[i] == b']' {
                depth -= 1;
            }
        }
        m
    }
}

/// Runs `hvtrace record` on the project's image of `line` with `vcpus`.
pub fn record(line: &str, vcpus: u32, tag: &str, cmd: &[&str]) -> Recorded {
    record_with(line, vcpus, tag, &[], cmd)
}

/// [`record`] with extra options of `hvtrace record` (e.g. `--append`).
pub fn record_with(line: &str, vcpus: u32, tag: &str, opts: &[&str], cmd: &[&str]) -> Recorded {
    record_on("qemu", line, vcpus, tag, opts, cmd)
}

/// [`record_with`] on the engine `backend` (`qemu` or `kvm`).
pub fn record_on(
    backend: &str,
    line: &str,
    vcpus: u32,
    tag: &str,
    opts: &[&str],
    cmd: &[&str],
) -> Recorded {
    let image = common::image_dir(line);
    let dir = std::env::temp_dir().join(format!(
        "hvtrace-{tag}-{backend}-{line}-{vcpus}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    // The KVM engine on a KVM that runs guest code natively (here, or in
    // the stock-KVM harness's L1: callers check that one exists).
    let mut hvtrace = if backend == "kvm" {
        common::hvtrace_on_kvm().expect("a native or stock KVM")
    } else {
        common::hvtrace()
    };
    let started = std::time::Instant::now();
    hvtrace
        .args([
            "record",
            "--backend",
            backend,
            "--force",
            "--vcpus",
            &vcpus.to_string(),
        ])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&dir)
        .args(opts)
        .arg("--")
        .args(cmd);
    let run = |c: &mut std::process::Command| {
        let out = c.output().expect("run hvtrace record");
        let console = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out, console)
    };
    let (mut out, mut console) = run(&mut hvtrace);
    // Issue 16: in the stock-KVM harness (KVM nested in QEMU's TCG), an L2
    // vCPU's saved state sometimes comes back holding the L1 hypervisor's
    // RIP and RSP (in kvm_amd, likely after VMRUN; an L1 stack) under the exit
    // load of tracing: the guest then triple-faults or spins in a page
    // fault on an unmapped RIP, which the timeout reports. Not hvtrace's
    // doing; said and retried once, and the retry must pass in full.
    let broken = |c: &str| {
        c.contains("the VM ended: TripleFault") || c.contains("the guest's state is broken")
    };
    if backend == "kvm" && vcpus > 1 && broken(&console) {
        eprintln!(
            "record_on: the nested guest broke (known intermittent, issue 16); retrying once:\n{}",
            console
                .lines()
                .filter(|l| broken(l))
                .collect::<Vec<_>>()
                .join("\n")
        );
        (out, console) = run(&mut hvtrace);
    }
    let status = out.status.code().unwrap_or(-1);
    assert!(
        dir.join("kernel/metadata").is_file(),
        "no trace written (exit status {:?} after {:.0} s):\n{console}",
        out.status,
        started.elapsed().as_secs_f64()
    );
    let events = babeltrace(&dir.join("kernel"));
    let seen: BTreeSet<i64> = events.iter().map(|e| e.cpu).collect();
    assert!(
        seen.iter().all(|&c| c >= 0 && c < i64::from(vcpus)),
        "cpu ids {seen:?}"
    );
    Recorded {
        status,
        console,
        events,
        dir,
    }
}
