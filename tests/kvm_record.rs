//! `hvtrace record --backend kvm`: the shared introspect decoders on the
//! KVM monitor's debug exits.
//!
//! Everywhere `/dev/kvm` is usable (KVM-PVM included, where the real kernel
//! runs in KVM's instruction emulator and gets through its early boot
//! only): the recording arms its hardware breakpoints, verifies the kernel's
//! slide by its banner in guest memory, and leaves a trace babeltrace2
//! reads; whatever events early boot produces must name real tasks.
//!
//! On a KVM that runs guest code natively (hardware virtualization here,
//! else the stock KVM inside `scripts/stock-kvm.sh`'s L1): the end-to-end checks of the TCG
//! engine's tests (record_support::checks, record_support/sched_irq.rs) on
//! this engine, each with an `--events` subset that fits 4 hardware
//! breakpoints (what this engine falls back to where KVM does not deliver
//! software breakpoints; where it does, every entry probe is an int3 once
//! the kernel execs /init). Without either they print "skipped: ..." with
//! the reason.

mod common;
mod record_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use record_support::checks;

fn kvm_usable() -> bool {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// `hvtrace record --backend kvm ARGS` of /bin/true on `image` into a fresh
/// folder named after `name`; returns the folder and hvtrace's output.
fn record_kvm(image: &Path, name: &str, args: &[&str]) -> (PathBuf, Output) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = common::hvtrace()
        .args(["record", "--backend", "kvm"])
        .args(args)
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&dir)
        .args(["--", "/bin/true"])
        .output()
        .expect("run hvtrace record");
    (dir, out)
}

/// The engine's own report of a recording (`DIR/kvm.json`).
fn kvm_report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("kvm.json")).expect("kvm.json");
    serde_json::from_str(&text).expect("kvm.json parses")
}

/// None with hardware virtualization, else why not.
fn no_hardware_virtualization() -> Option<String> {
    if !kvm_usable() {
        return Some("no usable /dev/kvm".into());
    }
    let p = vmm::probe_native_virtualization();
    (!p.native).then_some(p.reason)
}

/// The end-to-end checks need a KVM that runs guest code natively: this
/// host's with hardware virtualization, else the stock-KVM harness's L1.
macro_rules! needs_native_kvm {
    () => {
        if common::hvtrace_on_kvm().is_none() {
            return;
        }
        let _machine = common::machine_lock(false);
    };
}

/// The early boot of the real 6.1 kernel on the monitor, traced for a
/// bounded time: hardware breakpoints armed on every vCPU, the slide
/// verified as 0 (ELF boot: no decompressor, no KASLR), a trace that
/// babeltrace2 reads, and any sched_switch naming real kernel tasks.
#[test]
fn kvm_record_early_boot_6_1() {
    if !kvm_usable() {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    let _machine = common::machine_lock(true);
    let native = no_hardware_virtualization().is_none();
    let image = common::image_dir("6.1");
    // Natively the whole run takes seconds; emulated, 45 s of early boot.
    let timeout = if native { "120" } else { "45" };
    let (dir, out) = record_kvm(
        &image,
        "hvtrace-kvm-early",
        &[
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--timeout",
            timeout,
            "--events",
            "sched,irq",
            "--append",
            "earlyprintk=serial loglevel=7",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if native {
        assert!(out.status.success(), "{stderr}");
    } else {
        assert!(stderr.contains("ended early (TimedOut)"), "{stderr}");
    }
    // The console shows the kernel ran on our monitor (earlyprintk: it
    // found the MP table the monitor wrote at 0x9fc00).
    assert!(
        stderr.contains("found SMP MP-table at [mem 0x0009fc00-"),
        "{stderr}"
    );

    let report = kvm_report(&dir);
    assert_eq!(report["slide"], 0, "slide verified by the banner: {report}");
    let cpus = report["cpus"].as_array().expect("cpus");
    assert_eq!(cpus.len(), 2, "{report}");
    // The mechanism is said, with the reason.
    // Software traps on every KVM: int3 where #BP exits are delivered,
    // else the port-I/O trap.
    let sw = &report["software_breakpoints"];
    let delivered = vmm::probe_sw_breakpoints().unwrap_or(false);
    assert_eq!(sw["used"], true, "{report}");
    let trap = if delivered { "int3" } else { "out %al,$0xe9" };
    assert_eq!(sw["trap"], trap, "{report}");
    if !delivered {
        assert!(
            sw["reason"]
                .as_str()
                .unwrap()
                .starts_with("KVM does not deliver int3 here"),
            "{report}"
        );
    }
    if !native {
        assert_eq!(sw["armed"], false, "an emulated boot never reaches /init");
    }
    if sw["armed"] == true {
        // The kernel reached /init: int3s on the entries, the hardware
        // slots on return sites only, every byte back at the end.
        let probes = report["probes"].as_array().unwrap();
        for kind in ["SchedSwitch", "IrqEntry"] {
            assert!(
                probes.iter().any(|p| p["kind"] == kind
                    && p["mechanism"].as_str().unwrap().starts_with("software")),
                "{kind} on an int3: {report}"
            );
        }
        assert_eq!(sw["removed_at_end"], sw["bytes_restored"], "{report}");
    } else {
        early_hardware_breakpoints(&report);
    }

    // babeltrace2 reads the trace (it may hold no event yet when emulated).
    let bt = Command::new("babeltrace2")
        .arg(dir.join("kernel"))
        .output()
        .expect("babeltrace2 runs");
    assert!(
        bt.status.success(),
        "babeltrace2: {}",
        String::from_utf8_lossy(&bt.stderr)
    );
    let n_events = report["ctf"]["events"].as_u64().unwrap();
    let text = String::from_utf8_lossy(&bt.stdout);
    assert_eq!(text.lines().count() as u64, n_events, "{text}");
    let evs = if n_events > 0 {
        record_support::babeltrace(&dir.join("kernel"))
    } else {
        Vec::new()
    };
    let switches = real_tasks_in_switches(&evs);
    println!(
        "early boot on the KVM engine ({}): {n_events} events, {} sched_switch, {} irq entries",
        if native { "native" } else { "emulated" },
        switches.len(),
        evs.iter().filter(|e| e.name == "irq_handler_entry").count()
    );
    if native {
        assert!(
            switches
                .iter()
                .any(|s| s.int("next_tid") == 2 && s.text("next_comm") == "kthreadd"),
            "a switch to kthreadd"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hardware breakpoints of a run before its software traps are in:
/// the most important probes, and the fourth slot on `begin_new_exec`,
/// where the traps go in (it names no probe of its own). What does not fit
/// is not reported yet: the traps will cover it.
fn early_hardware_breakpoints(report: &serde_json::Value) {
    let cpus = report["cpus"].as_array().expect("cpus");
    for c in cpus {
        let bps: Vec<&str> = c["breakpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap())
            .collect();
        assert_eq!(
            bps.len(),
            3,
            "3 probes and the trigger on each vCPU: {report}"
        );
        assert!(bps[0].starts_with("SchedSwitch@"), "{bps:?}");
        assert!(bps[1].starts_with("IrqEntry@"), "{bps:?}");
    }
    let notes = report["notes"].to_string();
    assert!(!notes.contains("no probe slot left"), "{notes}");
}

/// `--mode sample` on the monitor: every vCPU is kicked at --freq and its
/// state read. In the first seconds of an emulated boot only the boot CPU
/// runs, as the idle task (pid 0, before rest_init forks anything), in the
/// kernel; the second vCPU, not started by the kernel yet, gives nothing.
#[test]
fn kvm_record_sample_early_boot_6_1() {
    if !kvm_usable() {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    let _machine = common::machine_lock(true);
    if no_hardware_virtualization().is_none() {
        println!("skipped: checks an emulated early boot (this host runs the guest natively)");
        return;
    }
    let image = common::image_dir("6.1");
    let (dir, out) = record_kvm(
        &image,
        "hvtrace-kvm-sample",
        &[
            "--vcpus",
            "2",
            "--memory",
            "128",
            "--timeout",
            "20",
            "--mode",
            "sample",
            "--freq",
            "200",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ended early (TimedOut)"), "{stderr}");
    let evs = record_support::babeltrace(&dir.join("kernel"));
    let samples: Vec<_> = evs.iter().filter(|e| e.name == "hvtrace_sample").collect();
    assert!(samples.len() > 100, "{} samples\n{stderr}", samples.len());
    for s in &samples {
        assert_eq!(s.cpu, 0, "{s:?}");
        assert_eq!((s.pid, s.tid), (0, 0), "{s:?}");
        assert!(s.procname.starts_with("swapper"), "{s:?}");
        assert_eq!(s.int("kernel"), 1, "{s:?}");
        assert!(s.int("ip") as u64 >= 0xffff_ffff_8100_0000, "{s:?}");
    }
    println!("{} samples of the boot CPU in 20 s", samples.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--events syscalls` fits two hardware breakpoints: `do_syscall_64`'s
/// entry and the return site of its call in `entry_SYSCALL_64`, found in
/// the kernel text the monitor loaded (both kernel lines).
#[test]
fn kvm_record_arms_syscall_exit_at_its_return_site() {
    if !kvm_usable() {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    let _machine = common::machine_lock(true);
    for line in ["6.1", "6.12"] {
        let image = common::image_dir(line);
        let k = guest_symbols::KernelImage::open(image.join("vmlinuz")).expect("symbols");
        let entry = k.symbols.addr("entry_SYSCALL_64").unwrap();
        let callee = k.symbols.addr("do_syscall_64").unwrap();
        let (dir, out) = record_kvm(
            &image,
            &format!("hvtrace-kvm-sysexit-{line}"),
            &["--memory", "128", "--timeout", "3", "--events", "syscalls"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let report = kvm_report(&dir);
        let bps: Vec<String> = report["cpus"][0]["breakpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect();
        assert_eq!(bps.len(), 2, "{bps:?}\n{stderr}");
        assert_eq!(bps[0], format!("SyscallEntry@{callee:#x}"));
        let site = u64::from_str_radix(bps[1].strip_prefix("SyscallExit@0x").unwrap(), 16).unwrap();
        assert!(
            site > entry + 5 && site < entry + 0x400,
            "{line}: return site {site:#x} in entry_SYSCALL_64 ({entry:#x})"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Every sched_switch names real tasks: readable tids and comms, the idle
/// task as swapper, pid 2 as kthreadd (or, before kthreadd renames itself
/// on its first run, still the swapper comm it was forked with).
fn real_tasks_in_switches(evs: &[record_support::Ev]) -> Vec<&record_support::Ev> {
    let switches: Vec<_> = evs.iter().filter(|e| e.name == "sched_switch").collect();
    for s in &switches {
        for (tid, comm) in [("prev_tid", "prev_comm"), ("next_tid", "next_comm")] {
            let (t, c) = (s.int(tid), s.text(comm));
            assert!(t >= 0 && !c.is_empty() && c != "?", "{s:?}");
            if t == 0 {
                assert!(c.starts_with("swapper"), "{s:?}");
            }
            if t == 2 {
                assert!(c == "kthreadd" || c.starts_with("swapper"), "{s:?}");
            }
        }
    }
    switches
}

/// Emulated (KVM-PVM) the scheduler's first switches come ~5 minutes into
/// the boot: run explicitly (`cargo test --test kvm_record -- --ignored`).
/// The first tasks of the real 6.1 kernel as the monitor traces them:
/// init (pid 1) and kthreadd (pid 2) forked by the idle task, switches to
/// kthreadd, and kthreadd's own comm once it runs.
#[test]
#[ignore = "about 7 minutes where the kernel runs in KVM's emulator"]
fn kvm_record_first_tasks_6_1() {
    if !kvm_usable() {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    let native = no_hardware_virtualization().is_none();
    let image = common::image_dir("6.1");
    let (dir, out) = record_kvm(
        &image,
        "hvtrace-kvm-first",
        &[
            "--memory",
            "128",
            "--timeout",
            "420",
            "--events",
            "sched,proc",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if native {
        assert!(out.status.success(), "{stderr}");
    }
    let evs = record_support::babeltrace(&dir.join("kernel"));
    let forks: Vec<(i64, i64)> = evs
        .iter()
        .filter(|e| e.name == "sched_process_fork")
        .map(|e| (e.int("parent_pid"), e.int("child_pid")))
        .collect();
    assert_eq!(forks.get(..2), Some(&[(0, 1), (0, 2)][..]), "{forks:?}");
    let switches = real_tasks_in_switches(&evs);
    assert!(
        switches.iter().any(|s| s.int("next_tid") == 2),
        "a switch to kthreadd"
    );
    assert!(
        switches
            .iter()
            .any(|s| s.int("prev_tid") == 2 && s.text("prev_comm") == "kthreadd"),
        "kthreadd named once it ran"
    );
    println!(
        "first tasks on the KVM engine: {} events, {} forks, {} switches",
        evs.len(),
        forks.len(),
        switches.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kvm_record_syscalls_6_1_one_vcpu() {
    needs_native_kvm!();
    // Every class at once: the syscalls exact, and the rest of the system
    // around them, in a randomized kernel.
    let r = checks::syscalls_match("kvm", &[], "6.1", 1);
    for name in [
        "sched_switch",
        "x86_irq_vectors_local_timer_entry",
        "irq_softirq_entry",
        "sched_process_exec",
    ] {
        assert!(
            r.events.iter().any(|e| e.name == name),
            "no {name} in the trace"
        );
    }
    let slide = kvm_report(&r.dir)["slide"].as_i64().expect("slide") as u64;
    assert!(slide != 0 && slide % 0x20_0000 == 0, "slide {slide:#x}");
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn kvm_record_syscalls_6_12_two_vcpus() {
    needs_native_kvm!();
    let r = checks::syscalls_match("kvm", &["--events", "syscalls"], "6.12", 2);
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn kvm_record_forkexec_6_12_two_vcpus() {
    needs_native_kvm!();
    checks::forkexec_match("kvm", &["--events", "proc"], "6.12", 2);
}

#[test]
fn kvm_record_statedump_matches_proc() {
    needs_native_kvm!();
    checks::statedump_matches_proc("kvm", &["--events", "proc"]);
}

/// Context switches of `/bin/pingpong 500` against the pair's rusage
/// (sched_switch and the statedump; `sched,proc` fits 4 hardware
/// breakpoints where software ones are not delivered). The engine's
/// checks alternate kernel lines: each line runs on QEMU in full.
#[test]
fn kvm_record_pingpong_6_12_two_vcpus() {
    needs_native_kvm!();
    record_support::sched_irq::pingpong_switches_match_rusage(
        "kvm",
        &["--events", "sched,proc"],
        "6.12",
        2,
    );
}

/// Interrupts against the growth of /proc/interrupts (`syscalls,irq`:
/// syscall entry, irq entry, timer entry and the syscall exit's return
/// site fit 4 hardware breakpoints).
#[test]
fn kvm_record_irqs_6_1() {
    needs_native_kvm!();
    record_support::sched_irq::irqs_match_proc_interrupts(
        "kvm",
        &["--events", "syscalls,irq"],
        "6.1",
        1,
    );
}

/// Parity without a probe budget: one `record --backend kvm` with every
/// event class covers each of them once the traps are in (int3 where KVM
/// delivers #BP, else the port-I/O trap, as in the stock-KVM harness),
/// every trap after the function's ftrace NOP / the tracepoint's static
/// branch and never on it, kvm.json naming each probe's mechanism, and
/// every byte back at the end.
#[test]
fn kvm_record_covers_every_class_6_1() {
    needs_native_kvm!();
    // The guest prints where its own kernel text is, then runs the workload.
    let r = record_support::record_on(
        "kvm",
        "6.1",
        1,
        "kvm-parity",
        &[],
        &[
            "/bin/sh",
            "-c",
            "grep -w _text /proc/kallsyms; exec /bin/forkexec 3",
        ],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let report = kvm_report(&r.dir);
    // KASLR as on a real boot: the bzImage's decompressor chose the slide,
    // and the slide found by introspection is the guest's own.
    let slide = report["slide"].as_i64().expect("slide in kvm.json") as u64;
    assert!(slide != 0 && slide % 0x20_0000 == 0, "slide {slide:#x}");
    let k = guest_symbols::KernelImage::open(common::image_dir("6.1").join("vmlinuz"))
        .expect("symbols");
    let text = k.symbols.addr("_text").expect("_text") + slide;
    assert!(
        r.console.contains(&format!("{text:016x} T _text")),
        "the guest's /proc/kallsyms puts _text at {text:#x}:\n{}",
        r.console
    );
    let sw = &report["software_breakpoints"];
    assert_eq!(sw["armed"], true, "{report}");
    assert_eq!(sw["removed_at_end"], sw["bytes_restored"], "{report}");
    let notes = report["notes"].to_string();
    assert!(!notes.contains("not covered"), "{notes}");
    let probes = report["probes"].as_array().unwrap();
    for p in probes {
        let m = p["mechanism"].as_str().unwrap();
        assert!(
            m.starts_with("software, ") || m.starts_with("hardware") || m.starts_with("no trap ("),
            "{p}"
        );
        // Function-entry traps go after the ftrace NOP (Debian's 6.1
        // functions begin with it; do_syscall_64 and __switch_to have none).
        let kind = p["kind"].as_str().unwrap();
        if m.starts_with("software, ")
            && ["IrqEntry", "ProcessFork", "ProcessExec", "ProcessExit"].contains(&kind)
        {
            assert!(m.contains("+0x5 ("), "{p}");
        }
    }
    for kind in [
        "SyscallEntry",
        "SchedSwitch",
        "IrqEntry",
        "ProcessFork",
        "ProcessExec",
        "ProcessExit",
        "TimerEntry",
        "IrqExit",
        "SoftirqEntry",
        "SoftirqExit",
        "SoftirqRaise",
        "SchedWakeup",
        "SchedWakeupNew",
    ] {
        assert!(
            probes
                .iter()
                .any(|p| p["kind"].as_str().unwrap().starts_with(kind)),
            "{kind}: {report}"
        );
    }
    // Traced after the traps went in (the workload runs after /init's exec).
    let after_exec: Vec<&str> = r
        .events
        .iter()
        .skip_while(|e| e.name != "sched_process_exec")
        .map(|e| e.name.as_str())
        .collect();
    for name in [
        "syscall_entry_read",
        "syscall_exit_read",
        "sched_switch",
        "sched_waking",
        "sched_wakeup",
        "sched_wakeup_new",
        "sched_process_fork",
        "sched_process_exec",
        "sched_process_exit",
        "x86_irq_vectors_local_timer_entry",
        "x86_irq_vectors_local_timer_exit",
        "irq_softirq_entry",
        "irq_softirq_exit",
        "irq_softirq_raise",
    ] {
        assert!(after_exec.contains(&name), "no {name} after the first exec");
    }
    // Timer interrupts pair up exactly once traced from their entry.
    let n = |name: &str| after_exec.iter().filter(|&&e| e == name).count() as i64;
    let (te, tx) = (
        n("x86_irq_vectors_local_timer_entry"),
        n("x86_irq_vectors_local_timer_exit"),
    );
    assert!((te - tx).abs() <= 1, "timer {te} entries, {tx} exits");
    println!(
        "{} probes; trap {}; {} hits, {} emulated, {} single-stepped; {} events",
        probes.len(),
        sw["trap"],
        sw["hits"],
        sw["emulated"],
        sw["single_stepped"],
        r.events.len()
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// `--probe` on this engine: a user probe on `do_sys_openat2` (a software
/// trap after its ftrace NOP, shared by two probes) against the workload's
/// own openat count and the syscalls around each hit.
#[test]
fn kvm_record_probe_on_do_sys_openat2_6_1() {
    needs_native_kvm!();
    record_support::probe::probe_matches_openat("kvm", "6.1");
}

/// Softirqs against the growth of /proc/softirqs, on this engine's traps
/// at the softirq tracepoints' static-branch sites.
#[test]
fn kvm_record_softirqs_6_1() {
    needs_native_kvm!();
    record_support::sched_irq::softirqs_match_proc_softirqs(
        "kvm",
        &["--events", "syscalls,irq"],
        "6.1",
        1,
    );
}
