//! The lossless promise under load: an 8-vCPU guest runs `/bin/storm`, one
//! thread pinned to each vCPU making `getppid` calls and 1 ns `nanosleep`s
//! (a timer interrupt each) all at once. Traced in lossless mode, the
//! trace must hold every one of them, on the vCPU the thread was pinned to,
//! and say that nothing was discarded; on both engines (the KVM monitor
//! with the vCPUs its nested harness can run here).

mod common;
mod record_support;

use record_support::{record_on, Recorded};

const VCPUS: u32 = 8;

/// Checks the trace against the storm's own counts on `vcpus` vCPUs;
/// returns (events in the trace, events discarded, tracer ns per event).
fn check_storm(r: &Recorded, vcpus: u32, report_file: &str) -> (usize, u64, f64) {
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let n = |k: &str| -> i64 {
        counts
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {counts:?}"))
    };
    assert_eq!(n("cpus"), i64::from(vcpus));
    for cpu in 0..i64::from(vcpus) {
        let tid = n(&format!("cpu{cpu}_tid"));
        for call in ["getppid", "nanosleep"] {
            let want = n(&format!("cpu{cpu}_{call}"));
            for side in ["entry", "exit"] {
                let name = format!("syscall_{side}_{call}");
                let mine: Vec<_> = r
                    .events
                    .iter()
                    .filter(|e| e.tid == tid && e.name == name)
                    .collect();
                assert_eq!(
                    mine.len() as i64,
                    want,
                    "vCPU {cpu} (tid {tid}): {name} in the trace vs the thread's own count"
                );
                // Pinned: every one on its own vCPU's stream.
                assert!(
                    mine.iter().all(|e| e.cpu == cpu),
                    "{name} of tid {tid} off vCPU {cpu}"
                );
            }
        }
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(r.dir.join(report_file)).expect("the engine's report"),
    )
    .expect("JSON report");
    let discarded = report["ctf"]["discarded"].as_u64().expect("ctf.discarded");
    assert_eq!(discarded, 0, "lossless mode discarded events");
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
    let (events, lost, per_event) = check_storm(&r, VCPUS, "plugin.json");
    eprintln!(
        "qemu engine, 8 vCPUs, storm 5000: {events} events, {lost} lost, {:.2} us of tracer time per event",
        per_event / 1e3
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// The same on hvtrace's own monitor, in the stock-KVM harness here, with
/// as many vCPUs as the harness's L1 has (2). 8 vCPUs of an L2 guest on
/// the L1's two, all under QEMU's TCG on this 2-core host, did not hold in
/// four tries: L1's own kernel crashed once, the L2 guest stalled in RCU
/// (soft lockups of 44 s) once, and it triple-faulted twice.
///
/// Ignored until the cause of an intermittent triple fault of the L2 guest
/// is found: it ended one CI run with 2 vCPUs 0.3 s after the software
/// traps went in (`TripleFault { vcpu: 1 }`, no oops on the console), as
/// it once ended `kvm_record_forkexec_6_12_two_vcpus`; the same test
/// passed locally (storm 1000: 117 019 events, 0 lost). Run it with
/// `cargo test --release --test storm -- --ignored`.
#[test]
#[ignore = "intermittent triple fault of the nested L2 guest after the software traps go in (issue 16)"]
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
    let (events, lost, per_event) = check_storm(&r, L1_VCPUS, "kvm.json");
    eprintln!(
        "kvm engine, {L1_VCPUS} vCPUs, storm 500: {events} events, {lost} lost, {:.2} us of tracer time per event",
        per_event / 1e3
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}
