//! The lossless promise under load: an 8-vCPU guest runs `/bin/storm`, one
//! thread pinned to each vCPU making `getppid` calls and 1 ns `nanosleep`s
//! (a timer interrupt each) all at once. Traced in lossless mode, the
//! trace must hold every one of them, on the vCPU the thread was pinned to,
//! and say that nothing was discarded; on both engines (the KVM monitor
//! with the vCPUs its nested harness can run here). In discard mode with
//! buffers too small for the storm, what the trace holds plus what hvtrace
//! says it dropped, event by event and vCPU by vCPU, is what each thread
//! counted itself.

mod common;
mod record_support;

use std::path::Path;
use std::process::Command;

use record_support::{record_on, Recorded};

const VCPUS: u32 = 8;

/// The events each stream's packet contexts say were discarded
/// (`events_discarded`, a running total), as babeltrace2 reads them: the
/// sum of its discarded-events messages, by the stream file's cpu.
fn packet_discards(trace: &Path) -> Vec<u64> {
    const SCRIPT: &str = r#"
import json, sys
import bt2
total = {}
for m in bt2.TraceCollectionMessageIterator(sys.argv[1]):
    if type(m) is bt2._DiscardedEventsMessageConst:
        cpu = int(m.stream.name.rsplit("_", 1)[1])
        total[cpu] = total.get(cpu, 0) + m.count
print(json.dumps(total))
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .arg(trace)
        .output()
        .expect("python3 with bt2 (Debian package python3-bt2) runs");
    assert!(
        out.status.success(),
        "bt2 failed on {}: {}",
        trace.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let by_cpu: std::collections::BTreeMap<String, u64> =
        serde_json::from_slice(&out.stdout).expect("a JSON object");
    let n = by_cpu.keys().filter_map(|k| k.parse::<usize>().ok()).max();
    (0..n.map_or(0, |n| n + 1))
        .map(|c| by_cpu.get(&c.to_string()).copied().unwrap_or(0))
        .collect()
}

/// Checks the trace against the storm's own counts on `vcpus` vCPUs: each
/// thread's `getppid` and `nanosleep` entries and exits, in the trace on
/// its own vCPU's stream, plus the ones the engine's report
/// (`report_file`) says that vCPU dropped, equal the thread's count; and
/// that drop count is the packet contexts' `events_discarded`. Lossless:
/// nothing dropped. Returns (events in the trace, events discarded,
/// tracer ns per event).
fn check_storm(r: &Recorded, vcpus: u32, report_file: &str, lossless: bool) -> (usize, u64, f64) {
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let n = |k: &str| -> i64 {
        counts
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {counts:?}"))
    };
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(r.dir.join(report_file)).expect("the engine's report"),
    )
    .expect("JSON report");
    let discarded = report["ctf"]["discarded"].as_u64().expect("ctf.discarded");
    let discards = &report["ctf"]["discards"];
    assert_eq!(discards["total"], discarded, "ctf.discards.total");
    assert_eq!(n("cpus"), i64::from(vcpus));
    for cpu in 0..i64::from(vcpus) {
        let tid = n(&format!("cpu{cpu}_tid"));
        let dropped = &discards["cpus"][cpu as usize];
        assert_eq!(dropped["cpu"], cpu, "ctf.discards.cpus[{cpu}]");
        for call in ["getppid", "nanosleep"] {
            let want = n(&format!("cpu{cpu}_{call}"));
            for side in ["entry", "exit"] {
                let name = format!("syscall_{side}_{call}");
                let mine: Vec<_> = r
                    .events
                    .iter()
                    .filter(|e| e.tid == tid && e.name == name)
                    .collect();
                let lost = dropped["by_event"][&name].as_i64().unwrap_or(0);
                assert_eq!(
                    mine.len() as i64 + lost,
                    want,
                    "vCPU {cpu} (tid {tid}): {name}: {} in the trace + {lost} dropped vs the thread's own count",
                    mine.len()
                );
                // Pinned: every one on its own vCPU's stream.
                assert!(
                    mine.iter().all(|e| e.cpu == cpu),
                    "{name} of tid {tid} off vCPU {cpu}"
                );
            }
        }
    }
    let in_packets = packet_discards(&r.dir.join("kernel"));
    assert_eq!(
        in_packets.iter().sum::<u64>(),
        discarded,
        "events_discarded of the packet contexts, per stream {in_packets:?}"
    );
    for cpu in 0..vcpus as usize {
        let n = in_packets.get(cpu).copied().unwrap_or(0);
        assert_eq!(discards["cpus"][cpu]["total"], n, "vCPU {cpu}");
    }
    if lossless {
        assert_eq!(discarded, 0, "lossless mode discarded events");
    } else {
        assert!(discarded > 0, "the buffers were meant to be too small");
    }
    let cpus = report["cpus"].as_array().expect("cpus");
    let events: u64 = cpus.iter().filter_map(|c| c["events"].as_u64()).sum();
    let busy: u64 = cpus.iter().filter_map(|c| c["busy_ns"].as_u64()).sum();
    (
        r.events.len(),
        discarded,
        busy as f64 / events.max(1) as f64,
    )
}

#[test]
fn storm_on_8_vcpus_loses_nothing_on_the_qemu_engine() {
    let r = record_on(
        "qemu",
        "6.1",
        VCPUS,
        "storm",
        &["--events", "syscalls,sched,irq"],
        &["/bin/storm", "5000"],
    );
    let (events, lost, per_event) = check_storm(&r, VCPUS, "plugin.json", true);
    eprintln!(
        "qemu engine, 8 vCPUs, storm 5000: {events} events, {lost} lost, {:.2} us of tracer time per event",
        per_event / 1e3
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// Discard mode with two 4 KiB sub-buffers per vCPU, far too little for
/// the storm: events are dropped, and hvtrace says exactly which.
#[test]
fn storm_in_discard_mode_reports_exactly_what_it_dropped() {
    let r = record_on(
        "qemu",
        "6.1",
        VCPUS,
        "storm-discard",
        &[
            "--events",
            "syscalls,sched,irq",
            "--buffer",
            "discard",
            "--subbuf-size",
            "4k",
            "--num-subbuf",
            "2",
        ],
        &["/bin/storm", "5000"],
    );
    let (events, lost, per_event) = check_storm(&r, VCPUS, "plugin.json", false);
    assert!(
        r.console.contains(&format!(
            "hvtrace: record: {lost} events dropped (buffers full), by event: "
        )),
        "the summary names what was dropped:\n{}",
        r.console
    );
    eprintln!(
        "qemu engine, 8 vCPUs, storm 5000, discard mode, 2 x 4 KiB per vCPU: {events} events in the trace, {lost} dropped, {:.2} us of tracer time per event",
        per_event / 1e3
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// The same on hvtrace's own monitor, in the stock-KVM harness here, with
/// as many vCPUs as the harness's L1 has (2). Ignored: in that harness (a
/// KVM nested in QEMU 10's TCG) an L2 vCPU's saved state intermittently
/// comes back holding the L1 hypervisor's own RIP and RSP (an address in
/// L1's kvm_amd, likely after VMRUN, and an L1 kernel stack): the L2
/// guest then spins on a page fault at an unmapped RIP or triple-faults. Run it with
/// `cargo test --release --test storm -- --ignored`.
///
/// 2026-12-06 (issue 16): a per-vCPU trail of exits (a throwaway
/// diagnostic) and the timeout's report of each vCPU's RIP: in all five
/// 2-vCPU runs with the single-step fallback the guest broke (three with
/// an L2 vCPU at L1's RIP, e.g. both vCPUs of one run at
/// 0xffffffffc035b20c; two where L1's own kernel crashed first), and once
/// in two runs with no single step at all (all event classes). With the
/// wider step-over emulator (`vmm/src/arch/emulate.rs`: every trap site of
/// 6.1 and 6.12 emulated, no single step, no pause) the storm with
/// `--events syscalls,sched,irq` passed (storm 200: 31 417 events, 0 lost,
/// 26 s of guest run), as it did with those sites left untrapped. With 4 vCPUs (L1 of 4 on the 2 host cores) CPU 3
/// stalled 7 s into boot, before any trap went in, and L1's own kernel
/// crashed ("corrupted stack end detected inside scheduler" in KVM_RUN);
/// 8 vCPUs did not get through boot in earlier sessions.
#[test]
#[ignore = "the nested harness intermittently breaks the L2 guest's saved state (QEMU TCG nested SVM; issue 16)"]
fn storm_loses_nothing_on_the_kvm_monitor() {
    const L1_VCPUS: u32 = 2;
    let Some((_, _machine)) = common::hvtrace_on_kvm_locked() else {
        return;
    };
    let r = record_on(
        "kvm",
        "6.1",
        L1_VCPUS,
        "storm",
        &["--events", "syscalls,sched,irq"],
        &["/bin/storm", "500"],
    );
    let (events, lost, per_event) = check_storm(&r, L1_VCPUS, "kvm.json", true);
    eprintln!(
        "kvm engine, {L1_VCPUS} vCPUs, storm 500: {events} events, {lost} lost, {:.2} us of tracer time per event",
        per_event / 1e3
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}
