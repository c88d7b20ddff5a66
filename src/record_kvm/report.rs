//! The KVM engine's report: `DIR/kvm.json` and the summary lines that say
//! which mechanism each probe used.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use super::sw::SwPhase;
use super::{CpuReport, Shared, UNKNOWN};
use crate::backend_kvm::SwOutcome;

/// One probe and how it was armed.
pub(super) struct ProbeRow {
    addr: u64,
    /// A built-in probe's kind, or a user probe's name.
    kind: String,
    mechanism: String,
}

/// Every probe of the run: the software breakpoints (if armed) and the
/// hardware breakpoints vCPU 0 held at the end (all vCPUs hold the same).
pub(super) fn probes(cpus: &[CpuReport], sw: &SwPhase) -> Vec<ProbeRow> {
    let mut rows: Vec<ProbeRow> = sw
        .probes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|p| ProbeRow {
            addr: p.addr,
            kind: p.kind.clone(),
            mechanism: p.mechanism.clone(),
        })
        .collect();
    if let Some(c) = cpus.first() {
        rows.extend(c.armed.iter().map(|&(addr, kind)| ProbeRow {
            addr,
            kind: format!("{kind:?}"),
            mechanism: "hardware breakpoint (DR0-DR3, every vCPU)".into(),
        }));
    }
    rows
}

/// The summary lines about probes.
pub(super) fn print_probes(sw: &SwPhase, rows: &[ProbeRow], out: &SwOutcome) {
    let hw: Vec<String> = rows
        .iter()
        .filter(|r| r.mechanism.starts_with("hardware"))
        .map(|r| format!("{}@{:#x}", r.kind, r.addr))
        .collect();
    eprintln!("hvtrace: record: hardware breakpoints: {}", hw.join(", "));
    if !sw.enabled() {
        eprintln!("hvtrace: record: no software traps: {}", sw.reason);
        return;
    }
    if !sw.armed() {
        eprintln!(
            "hvtrace: record: software traps not armed: the kernel never reached its first exec (begin_new_exec); {}",
            sw.reason
        );
        return;
    }
    for r in rows.iter().filter(|r| !r.mechanism.starts_with("hardware")) {
        eprintln!(
            "hvtrace: record:   {}@{:#x}: {}",
            r.kind, r.addr, r.mechanism
        );
    }
    eprintln!(
        "hvtrace: record: software traps: {} hits, {} stepped over by emulation, {} by single-step, {} guest int3s reinjected; {} traps removed at the end, {} with their original bytes back",
        out.hits, out.emulated, out.single_stepped, out.reinjected, out.left, out.restored
    );
}

#[allow(clippy::too_many_arguments)]
pub(super) fn write(
    out: &Path,
    cpus: &[CpuReport],
    notes: &[String],
    slide: u64,
    sh: &Shared,
    report: &ltt_writer::TraceReport,
    rows: &[ProbeRow],
    sw: &SwOutcome,
) -> Result<()> {
    let cpus: Vec<serde_json::Value> = cpus
        .iter()
        .map(|c| {
            serde_json::json!({
                "cpu": c.cpu,
                "events": c.events,
                "busy_ns": c.busy_ns,
                "ctf_errors": c.ctf_errors,
                "by_kind": c.by_kind,
                "by_event": c.by_event,
                "strings_deferred": c.deferred,
                "strings_recovered": c.recovered,
                "breakpoints": c.armed.iter().map(|(a, k)| format!("{k:?}@{a:#x}")).collect::<Vec<_>>(),
            })
        })
        .collect();
    let probes: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "kind": r.kind,
                "addr": format!("{:#x}", r.addr),
                "mechanism": r.mechanism,
            })
        })
        .collect();
    let v = serde_json::json!({
        "engine": "kvm",
        "slide": if slide == UNKNOWN { -1 } else { slide as i64 },
        "hits": sh.hits.load(Ordering::Relaxed),
        "statedump": sh.gate.taken(),
        "ctf": {
            "events": report.events(),
            "discarded": report.discarded(),
            "packets": report.packets_written,
            "bytes": report.bytes_written,
        },
        "software_breakpoints": {
            "used": sh.sw.enabled(),
            "trap": sh.sw.trap.map(|t| t.to_string()),
            "armed": sh.sw.armed(),
            "reason": sh.sw.reason,
            "hits": sw.hits,
            "emulated": sw.emulated,
            "single_stepped": sw.single_stepped,
            "reinjected": sw.reinjected,
            "removed_at_end": sw.left,
            "bytes_restored": sw.restored,
        },
        "probes": probes,
        "cpus": cpus,
        "notes": notes,
    });
    std::fs::write(out.join("kvm.json"), serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("writing {}", out.join("kvm.json").display()))
}
