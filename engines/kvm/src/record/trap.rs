//! Which software trap this host takes, and where one may go in: the
//! checks made at each insertion, with every other vCPU parked.

use vmm::{TrapKind, VcpuCtx};

/// Which software trap to use on this host, and why.
pub(super) fn decide() -> (Option<TrapKind>, String) {
    let port = "traps are `out %al,$0xe9` port writes (2 bytes), which every KVM hands to user space; return sites are hardware breakpoints";
    match vmm::probe_sw_breakpoints() {
        Ok(true) => (
            Some(TrapKind::Int3),
            "KVM delivers software breakpoints (#BP exits): every entry probe is an int3, return sites are hardware breakpoints".into(),
        ),
        Ok(false) => (
            Some(TrapKind::PortIo),
            format!("KVM does not deliver int3 here (no #BP exit: a KVM nested in QEMU's TCG, or one that emulates guest code such as KVM-PVM), so {port}"),
        ),
        Err(e) => (
            Some(TrapKind::PortIo),
            format!("software breakpoints could not be probed ({e}), so {port}"),
        ),
    }
}

/// Where traps go in: this vCPU's context, the trap, and the RIPs of the
/// other vCPUs, parked meanwhile.
pub(super) struct Inserter<'a, 'b> {
    /// The inserting vCPU.
    pub ctx: &'a VcpuCtx<'b>,
    /// The trap's encoding.
    pub trap: TrapKind,
    /// Where each parked vCPU stands.
    pub rips: &'a [u64],
}

impl Inserter<'_, '_> {
    /// Inserts the trap at `site` unless a parked vCPU stands inside its
    /// bytes (past the first: it would resume in the trap's second byte).
    pub fn insert(&self, site: u64) -> Result<vmm::StepOver, String> {
        let end = site + self.trap.length();
        if let Some(r) = self.rips.iter().find(|&&r| r > site && r < end) {
            return Err(format!(
                "a vCPU stood inside its bytes (at {r:#x}) when it was to go in"
            ));
        }
        // Port-I/O traps are for KVMs that never see the guest's #BP, such
        // as one nested in QEMU's TCG; there, single-stepping the guest
        // with the other vCPUs paused broke it (its state ended up holding
        // the L1 hypervisor's RIP and RSP), so only sites whose
        // instructions the monitor emulates get a trap.
        let step = self
            .ctx
            .classify_vm_sw_breakpoint(site)
            .map_err(|e| e.to_string())?;
        if self.trap == TrapKind::PortIo && step == vmm::StepOver::SingleStep {
            return Err(
                "its instructions are not in the emulated set, and port-I/O traps are never single-stepped"
                    .into(),
            );
        }
        self.ctx
            .insert_vm_sw_breakpoint(site)
            .map_err(|e| e.to_string())
    }
}
