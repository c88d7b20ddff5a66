//! End-to-end tests of `hvtrace record` on the QEMU TCG engine with the
//! real Debian kernels (KASLR on): every trace is read back with
//! babeltrace2, the reference reader, and held against what the guest
//! itself counted (the workload's own COUNTS line, its /proc).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One event as babeltrace2 prints it.
#[derive(Debug, Clone)]
struct Ev {
    name: String,
    cpu: i64,
    pid: i64,
    tid: i64,
    procname: String,
    fields: BTreeMap<String, String>,
}

impl Ev {
    fn int(&self, k: &str) -> i64 {
        let v = self
            .fields
            .get(k)
            .unwrap_or_else(|| panic!("{} has no {k}: {self:?}", self.name));
        parse_int(v).unwrap_or_else(|| panic!("{k} = {v} is not an integer"))
    }
    fn text(&self, k: &str) -> String {
        self.fields
            .get(k)
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    }
}

fn parse_int(v: &str) -> Option<i64> {
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
fn split_fields(s: &str) -> BTreeMap<String, String> {
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
fn groups(s: &str) -> Vec<&str> {
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
fn babeltrace(trace: &Path) -> Vec<Ev> {
    let out = Command::new("babeltrace2")
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
        evs.push(Ev {
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

struct Recorded {
    status: i32,
    console: String,
    events: Vec<Ev>,
    dir: PathBuf,
}

impl Recorded {
    /// The workload's `COUNTS {...}` line as name → value.
    fn counts(&self) -> BTreeMap<String, String> {
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
fn record(line: &str, vcpus: u32, tag: &str, cmd: &[&str]) -> Recorded {
    let image = common::image_dir(line);
    let dir = std::env::temp_dir().join(format!(
        "hvtrace-{tag}-{line}-{vcpus}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let out = common::hvtrace()
        .args(["record", "--backend", "qemu", "--vcpus", &vcpus.to_string()])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&dir)
        .arg("--")
        .args(cmd)
        .output()
        .expect("run hvtrace record");
    let console =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let status = out.status.code().unwrap_or(-1);
    assert!(
        dir.join("kernel/metadata").is_file(),
        "no trace written:\n{console}"
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

/// `/bin/syscalls N`: between the workload's first counted syscall
/// (openat("/dev/null")) and its last (close of that fd), the traced syscall
/// entries of that process equal its own counts, with the right arguments
/// and return values.
fn syscalls_match(line: &str, vcpus: u32) {
    let rounds = 200;
    let r = record(
        line,
        vcpus,
        "syscalls",
        &["/bin/syscalls", &rounds.to_string()],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let pid = r
        .events
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/syscalls")
        .map(|e| e.int("tid"))
        .expect("exec of /bin/syscalls traced");
    let mine: Vec<&Ev> = r
        .events
        .iter()
        .filter(|e| e.tid == pid && e.name.starts_with("syscall_"))
        .collect();
    let start = mine
        .iter()
        .position(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/dev/null")
        .expect("openat(/dev/null) traced");
    let devnull = mine[start + 1..]
        .iter()
        .find(|e| e.name == "syscall_exit_openat")
        .map(|e| e.int("ret"))
        .expect("its return");
    assert!(devnull >= 0);
    let end = mine
        .iter()
        .rposition(|e| e.name == "syscall_entry_close" && e.int("fd") == devnull)
        .expect("close(devnull) traced");
    let window = &mine[start..=end];
    let mut traced: BTreeMap<String, u64> = BTreeMap::new();
    for e in window {
        if let Some(n) = e.name.strip_prefix("syscall_entry_") {
            *traced.entry(n.to_string()).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, u64> = counts
        .iter()
        .filter(|(k, _)| k.as_str() != "rounds")
        .map(|(k, v)| (k.clone(), v.parse().unwrap()))
        .collect();
    assert_eq!(traced, expected, "traced entries vs the workload's COUNTS");

    // Arguments and return values, against the workload's own code.
    let mut last_fd = None;
    let mut probe_opens = 0;
    for (i, e) in window.iter().enumerate() {
        let exit = window[i + 1..]
            .iter()
            .find(|x| x.name.starts_with("syscall_exit_"));
        match e.name.as_str() {
            "syscall_entry_openat" => {
                let f = e.text("filename");
                assert!(f == "/dev/null" || f == "/etc/hvtrace-probe", "openat {f}");
                probe_opens += u64::from(f == "/etc/hvtrace-probe");
                let x = exit.expect("openat returns");
                assert_eq!(x.name, "syscall_exit_openat");
                last_fd = Some(x.int("ret"));
                assert!(x.int("ret") >= 0);
            }
            "syscall_entry_read" => {
                assert_eq!(Some(e.int("fd")), last_fd);
                assert_eq!(e.int("count"), 64);
            }
            "syscall_entry_write" => {
                assert_eq!(e.int("fd"), devnull);
                assert_eq!(e.int("count"), 8);
                assert_eq!(exit.expect("write returns").int("ret"), 8);
            }
            "syscall_entry_getpid" => assert_eq!(exit.expect("getpid returns").int("ret"), e.pid),
            _ => {}
        }
    }
    assert_eq!(probe_opens, rounds);
}

#[test]
fn record_syscalls_6_1_one_vcpu() {
    syscalls_match("6.1", 1);
}

#[test]
fn record_syscalls_6_1_two_vcpus() {
    syscalls_match("6.1", 2);
}

#[test]
fn record_syscalls_6_12_one_vcpu() {
    syscalls_match("6.12", 1);
}

#[test]
fn record_syscalls_6_12_two_vcpus() {
    syscalls_match("6.12", 2);
}

/// `/bin/forkexec 20`: 20 forks, 20 execs of /bin/true, 20 exits, with the
/// pids the workload itself printed.
fn forkexec_match(line: &str, vcpus: u32) {
    let r = record(line, vcpus, "forkexec", &["/bin/forkexec", "20"]);
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let pids: BTreeSet<i64> = counts["pids"]
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 20);
    let parent = r
        .events
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/forkexec")
        .map(|e| e.int("tid"))
        .expect("exec of /bin/forkexec");
    let forked: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_fork" && e.int("parent_pid") == parent)
        .map(|e| e.int("child_pid"))
        .collect();
    let execs: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/true")
        .map(|e| e.int("tid"))
        .collect();
    let exits: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_exit" && pids.contains(&e.int("tid")))
        .map(|e| e.int("tid"))
        .collect();
    assert_eq!(forked, pids, "forks of {parent}");
    assert_eq!(execs, pids, "execs of /bin/true");
    assert_eq!(exits, pids, "exits");
    let n_exec = r
        .events
        .iter()
        .filter(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/true")
        .count();
    assert_eq!(n_exec, 20);
}

#[test]
fn record_forkexec_6_1() {
    forkexec_match("6.1", 1);
}

#[test]
fn record_forkexec_6_12_two_vcpus() {
    forkexec_match("6.12", 2);
}

/// The statedump at the start of the traced command lists the processes
/// the guest's /proc shows: every dumped pid is in the command's listing of
/// /proc, and every listed pid was dumped or forked after the dump.
#[test]
fn record_statedump_matches_proc() {
    let r = record(
        "6.1",
        1,
        "statedump",
        &[
            "/bin/sh",
            "-c",
            "echo PROC $(ls /proc | grep -E '^[0-9]+$')",
        ],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let listed: BTreeSet<i64> = r
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("PROC "))
        .expect("PROC line")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let first = r
        .events
        .iter()
        .position(|e| e.name == "lttng_statedump_process_state")
        .expect("statedump");
    let dumped: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "lttng_statedump_process_state")
        .map(|e| e.int("pid"))
        .filter(|&p| p != 0)
        .collect();
    let later: BTreeSet<i64> = r.events[first..]
        .iter()
        .filter(|e| e.name == "sched_process_fork")
        .map(|e| e.int("child_pid"))
        .collect();
    assert!(
        dumped.len() > 10,
        "kernel threads and init at least: {dumped:?}"
    );
    for p in &dumped {
        assert!(
            listed.contains(p),
            "dumped pid {p} not in the guest's /proc {listed:?}"
        );
    }
    for p in &listed {
        assert!(
            dumped.contains(p) || later.contains(p),
            "/proc pid {p} neither dumped nor forked later"
        );
    }
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// `/bin/pingpong 500` under busybox `time -v` (which reports the wait4
/// rusage of the pair: voluntary + involuntary context switches): the
/// traced switches away from the two processes equal that count, and every
/// switch names real tasks of the guest.
#[test]
fn record_pingpong_6_1() {
    pingpong_switches_match_rusage("6.1", 1);
}

#[test]
fn record_pingpong_6_12_two_vcpus() {
    pingpong_switches_match_rusage("6.12", 2);
}

fn pingpong_switches_match_rusage(line: &str, vcpus: u32) {
    let r = record(
        line,
        vcpus,
        "pingpong",
        &["/bin/busybox", "time", "-v", "/bin/pingpong", "500"],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let parent: i64 = counts["parent"].parse().unwrap();
    let child: i64 = counts["child"].parse().unwrap();
    let rusage = |what: &str| -> i64 {
        r.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(what))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{what}` in the console:\n{}", r.console))
    };
    let expected = rusage("Voluntary context switches:") + rusage("Involuntary context switches:");
    let switches: Vec<&Ev> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_switch")
        .collect();
    let traced = switches
        .iter()
        .filter(|e| [parent, child].contains(&e.int("prev_tid")))
        .count() as i64;
    assert!(
        expected >= 500,
        "500 round trips block at least once each: {expected}"
    );
    assert_eq!(
        traced, expected,
        "sched_switch from {parent}/{child} vs rusage"
    );
    // every task named by a switch is one the trace knows: dumped, forked,
    // or an idle task (tid 0)
    let mut known: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "lttng_statedump_process_state")
        .map(|e| e.int("tid"))
        .collect();
    known.extend(
        r.events
            .iter()
            .filter(|e| e.name == "sched_process_fork")
            .map(|e| e.int("child_tid")),
    );
    let first_dump = r
        .events
        .iter()
        .position(|e| e.name == "lttng_statedump_process_state")
        .expect("statedump");
    for e in &switches {
        if e.int("prev_tid") == parent || e.int("prev_tid") == child {
            assert!(["pingpong", "time", "busybox", "init"].contains(&e.text("prev_comm").as_str()));
        }
    }
    for e in r.events[first_dump..]
        .iter()
        .filter(|e| e.name == "sched_switch")
    {
        for k in ["prev_tid", "next_tid"] {
            let t = e.int(k);
            assert!(t == 0 || known.contains(&t), "{k} {t} unknown: {e:?}");
        }
    }
}

/// Interrupts: per device irq, the traced `irq_handler_entry` events (and
/// for the local timer, LOC, `x86_irq_vectors_local_timer_entry`) between
/// two reads of /proc/interrupts equal the growth of its counters.
#[test]
fn record_irqs_6_1() {
    irqs_match_proc_interrupts("6.1");
}

#[test]
fn record_irqs_6_12() {
    irqs_match_proc_interrupts("6.12");
}

fn irqs_match_proc_interrupts(line: &str) {
    // dd reads the whole file in one read(), which generates the snapshot
    // (busybox cat would use sendfile, interleaving output and generation).
    let dd = "dd if=/proc/interrupts bs=65536 count=1 2>/dev/null";
    let script = format!("{dd}; i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); done; {dd}");
    let r = record(line, 1, "irq", &["/bin/sh", "-c", &script]);
    assert_eq!(r.status, 0, "{}", r.console);
    // the two snapshots, from the console
    let mut snaps: Vec<BTreeMap<i64, i64>> = Vec::new();
    for l in r.console.lines() {
        let l = l.trim();
        if l.starts_with("CPU0") {
            snaps.push(BTreeMap::new());
            continue;
        }
        let Some((irq, rest)) = l.split_once(':') else {
            continue;
        };
        // the local APIC timer as irq -1
        let irq = if irq.trim() == "LOC" { "-1" } else { irq };
        let (Ok(irq), Some(s)) = (irq.trim().parse::<i64>(), snaps.last_mut()) else {
            continue;
        };
        let per_cpu: i64 = rest
            .split_whitespace()
            .map_while(|w| w.parse::<i64>().ok())
            .sum();
        s.insert(irq, per_cpu);
    }
    assert_eq!(
        snaps.len(),
        2,
        "two /proc/interrupts listings:\n{}",
        r.console
    );
    // the window: from the first dd's read of /proc/interrupts returning
    // to the second dd's read of it starting
    let cats: Vec<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/proc/interrupts")
        .map(|e| e.tid)
        .collect();
    assert_eq!(cats.len(), 2, "two opens of /proc/interrupts");
    assert_ne!(cats[0], cats[1]);
    // Each snapshot is taken somewhere inside its read(): interrupts during
    // the two reads may fall on either side of it. Outside the reads the
    // count must be exact.
    let pos = |from: usize, tid: i64, name: &str| {
        r.events[from..]
            .iter()
            .position(|e| e.tid == tid && e.name == name)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("{name} of {tid}"))
    };
    let read1_in = pos(0, cats[0], "syscall_entry_read");
    let read1_out = pos(read1_in, cats[0], "syscall_exit_read");
    let read2_in = pos(read1_out, cats[1], "syscall_entry_read");
    let read2_out = pos(read2_in, cats[1], "syscall_exit_read");
    let count = |evs: &[Ev]| {
        let mut m: BTreeMap<i64, i64> = BTreeMap::new();
        for e in evs {
            if e.name == "irq_handler_entry" {
                *m.entry(e.int("irq")).or_default() += 1;
            }
            if e.name == "x86_irq_vectors_local_timer_entry" {
                *m.entry(-1).or_default() += 1;
            }
        }
        m
    };
    let inner = count(&r.events[read1_out..read2_in]);
    let outer = count(&r.events[read1_in..read2_out]);
    let get = |m: &BTreeMap<i64, i64>, irq: &i64| m.get(irq).copied().unwrap_or(0);
    let mut grew = 0;
    for (irq, after) in &snaps[1] {
        let g = after - snaps[0].get(irq).copied().unwrap_or(0);
        let (lo, hi) = (get(&inner, irq), get(&outer, irq));
        assert!(
            lo <= g && g <= hi,
            "irq {irq}: /proc/interrupts grew {g}; traced {lo} between the reads, {hi} including them"
        );
        grew += g;
    }
    assert!(grew > 0, "the console output raised interrupts");
    let loc = snaps[1][&-1] - snaps[0][&-1];
    assert!(loc > 0, "the local timer ticked in the window");
    for irq in outer.keys() {
        assert!(
            snaps[1].contains_key(irq),
            "traced irq {irq} not in /proc/interrupts"
        );
    }
}

/// `--mode sample`: samples come at no more than the asked rate, name the
/// workload among the tasks they hit, and carry kernel and user addresses.
#[test]
fn record_sample_mode() {
    let image = common::image_dir("6.1");
    let dir = std::env::temp_dir().join(format!("hvtrace-sample-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = std::time::Instant::now();
    let out = common::hvtrace()
        .args([
            "record",
            "--backend",
            "qemu",
            "--mode",
            "sample",
            "--freq",
            "500",
        ])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&dir)
        .args(["--", "/bin/syscalls", "3000"])
        .output()
        .expect("run hvtrace record");
    let wall = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evs = babeltrace(&dir.join("kernel"));
    let samples: Vec<&Ev> = evs.iter().filter(|e| e.name == "hvtrace_sample").collect();
    assert!(samples.len() > 100, "{} samples", samples.len());
    assert!(
        samples.len() as f64 <= 500.0 * wall * 1.05,
        "{} samples in {wall:.1} s at 500 Hz",
        samples.len()
    );
    let pid = evs
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/syscalls")
        .map(|e| e.int("tid"))
        .expect("exec traced");
    let mine = samples
        .iter()
        .filter(|e| e.tid == pid && e.procname == "syscalls")
        .count();
    assert!(mine > 0, "no sample hit the workload");
    assert!(samples
        .iter()
        .any(|e| e.int("kernel") == 1 && (e.int("ip") as u64) >= 0xffff_8000_0000_0000));
    assert!(samples
        .iter()
        .any(|e| e.int("kernel") == 0 && (e.int("ip") as u64) < 0x8000_0000_0000));
    assert!(
        !evs.iter().any(|e| e.name.starts_with("syscall_")),
        "sample mode does not trap syscalls"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
