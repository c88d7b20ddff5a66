//! The KVM engine's report: `DIR/kvm.json` and the summary lines that say
//! which mechanism each probe used.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::shared::{CpuReport, Shared, UNKNOWN};
use super::sw::SwPhase;
use crate::monitor::MonitorOutcome;

/// Why `kvm.json` could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The tracer time the guest could see (the KVM engine is not
/// time-transparent: its clocks run on while a vCPU is out of KVM_RUN).
pub(super) struct GuestVisible {
    /// Per vCPU, in index order: the whole run, and its part from the
    /// traced command's exec on (None: the command was never seen).
    pub whole: Vec<vmm::TracerTime>,
    pub command: Option<Vec<vmm::TracerTime>>,
    /// A bare exit round trip on this host, measured after the run
    /// (None: no exit to price, or the measurement failed).
    pub round_trip_ns: Option<f64>,
    pub round_trip_source: &'static str,
}

/// Single-step runs enough to take their median as the round trip.
const MIN_STEP_RUNS: u64 = 100;

impl GuestVisible {
    /// Prices the exits with a bare round trip measured now, once the
    /// guest is gone (it would otherwise compete with it). `at_command`:
    /// each vCPU's figures when the command started.
    pub fn measure(whole: Vec<vmm::TracerTime>, at_command: Option<Vec<vmm::TracerTime>>) -> Self {
        let exits: u64 = whole.iter().map(|t| t.exits).sum();
        // The run's own single-step round trips where there are enough
        // (weighted by vCPU), else a bare loop measured now.
        let steps: u64 = whole.iter().map(|t| t.step_runs).sum();
        let in_run = (steps >= MIN_STEP_RUNS).then(|| {
            whole
                .iter()
                .filter_map(|t| Some(t.step_run_ns? as f64 * t.step_runs as f64))
                .sum::<f64>()
                / steps as f64
        });
        let (round_trip_ns, round_trip_source) = match in_run {
            Some(ns) => (Some(ns), "single-step runs of this guest"),
            None => (
                (exits > 0)
                    .then(|| vmm::bench::pio_round_trip(500, 5).ok())
                    .flatten(),
                "a bare port-I/O loop after the run",
            ),
        };
        let command = at_command.map(|at| {
            whole
                .iter()
                .zip(
                    at.iter()
                        .chain(std::iter::repeat(&vmm::TracerTime::default())),
                )
                .map(|(w, a)| vmm::TracerTime {
                    exits: w.exits.saturating_sub(a.exits),
                    handling_ns: w.handling_ns.saturating_sub(a.handling_ns),
                    in_run_ns: w.in_run_ns.saturating_sub(a.in_run_ns),
                    ..*w
                })
                .collect()
        });
        GuestVisible {
            whole,
            command,
            round_trip_ns,
            round_trip_source,
        }
    }

    fn ns(&self, t: &vmm::TracerTime) -> u64 {
        t.guest_visible_ns(self.round_trip_ns.unwrap_or(0.0))
    }

    fn total_ns(&self, per_cpu: &[vmm::TracerTime]) -> u64 {
        per_cpu.iter().map(|t| self.ns(t)).sum()
    }

    pub fn print(&self) {
        let exits: u64 = self.whole.iter().map(|t| t.exits).sum();
        let handling: u64 = self.whole.iter().map(|t| t.handling_ns).sum();
        let rt = match self.round_trip_ns {
            Some(ns) => format!("{:.1} us (from {})", ns / 1e3, self.round_trip_source),
            None => "not measured".into(),
        };
        let ms = |ns: u64| ns as f64 / 1e6;
        eprintln!(
            "hvtrace: record: not time-transparent (KVM): the guest could see {:.1} ms of tracer time ({exits} exits x {rt} round trip + {:.1} ms handling); per vCPU (ms) {:?}",
            ms(self.total_ns(&self.whole)),
            ms(handling),
            self.whole
                .iter()
                .map(|t| (ms(self.ns(t)) * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        if let Some(c) = &self.command {
            eprintln!(
                "hvtrace: record:   of which {:.1} ms from the traced command's exec on",
                ms(self.total_ns(c))
            );
        }
    }

    fn json_of(&self, per_cpu: &[vmm::TracerTime]) -> serde_json::Value {
        serde_json::json!({
            "guest_visible_ns": self.total_ns(per_cpu),
            "cpus": per_cpu.iter().enumerate().map(|(i, t)| serde_json::json!({
                "cpu": i,
                "exits": t.exits,
                "handling_ns": t.handling_ns,
                "in_kvm_run_ns": t.in_run_ns,
                "step_run_ns": t.step_run_ns,
                "guest_visible_ns": self.ns(t),
            })).collect::<Vec<_>>(),
        })
    }

    fn json(&self) -> serde_json::Value {
        let mut v = self.json_of(&self.whole);
        v["exit_round_trip_ns"] = serde_json::json!(self.round_trip_ns);
        v["exit_round_trip_from"] = serde_json::json!(self.round_trip_source);
        v["command"] = match &self.command {
            Some(c) => self.json_of(c),
            None => serde_json::Value::Null,
        };
        v
    }
}

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
pub(super) fn print_probes(sw: &SwPhase, rows: &[ProbeRow], out: &MonitorOutcome) {
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
    sw: &MonitorOutcome,
    visible: &GuestVisible,
) -> Result<(), ReportError> {
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
            "discards": report.discards_json(),
            "packets": report.packets_written,
            "bytes": report.bytes_written,
            "relayd": report.relayd.as_ref().map(|r| r.to_json()),
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
        "tracer_time": visible.json(),
        "cpus": cpus,
        "notes": notes,
    });
    let path = out.join("kvm.json");
    std::fs::write(&path, serde_json::to_string_pretty(&v)?)
        .map_err(|source| ReportError::Write { path, source })
}
