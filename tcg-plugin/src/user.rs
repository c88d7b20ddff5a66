//! User-defined probes (`hvtrace record --probe`, see
//! `introspect::userprobe`) on the TCG engine: each probe's address gets an
//! execution callback at translation time; a hit fetches the probe's
//! fields into the vCPU's fixed buffer and writes one event of the probe's
//! own name.

use std::sync::atomic::Ordering;
use std::time::Instant;

use introspect::userprobe::ProbeSpec;
use introspect::ProbePlan;
use qemu_plugin::VCPUIndex;

use crate::resolved::{probes, PROBES};
use crate::state::{chain, note, now_ns, G};

/// Parses and resolves the plan's probes for `slide`; returns the
/// (runtime address, probe index) pairs to arm.
pub fn arm(plan: &ProbePlan, slide: u64) -> Vec<(u64, usize)> {
    let mut list = Vec::new();
    for spec in &plan.user_probes {
        let lookup = |s: &str| plan.user_probe_symbols.get(s).copied();
        match ProbeSpec::parse(spec).and_then(|p| p.resolve(lookup)) {
            Ok(p) => list.push(p.with_slide(slide)),
            Err(e) => note(format!("--probe {spec:?}: {}", chain(&e))),
        }
    }
    let sites = list
        .iter()
        .enumerate()
        .map(|(i, p)| (p.addr(), i))
        .collect();
    let _ = PROBES.set(list);
    sites
}

/// Execution callback of user probe `index` on vCPU `vcpu`.
pub fn on_hit(index: usize, vcpu: VCPUIndex) {
    let Some(g) = G.get() else { return };
    let Some(k) = g.kernel.get() else { return };
    let Some(probe) = probes().get(index) else {
        return;
    };
    let Some(slot) = g.slots.get(vcpu as usize) else {
        return;
    };
    // SAFETY: this callback runs on the thread of vCPU `vcpu`.
    let Some(rt) = (unsafe { slot.get() }).as_mut() else {
        return;
    };
    g.hits.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    rt.user_hit(index, probe, k, now_ns(g));
    rt.busy_ns += t0.elapsed().as_nanos() as u64;
}
