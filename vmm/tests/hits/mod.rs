//! Shared by the software-trap tests: a debug handler that counts trap
//! hits per (vCPU, address), and guest-memory reads.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmm::{Action, DebugEvent, VcpuCtx};

/// Hits per (vCPU, trap address).
pub type Hits = Arc<Mutex<HashMap<(u32, u64), u64>>>;

/// A handler factory counting every `SwBreakpoint` event into `hits`
/// (and checking the vCPU stopped at the trap's address).
pub fn counting(hits: Hits) -> vmm::HandlerFactory {
    Box::new(move |_| {
        let hits = hits.clone();
        Box::new(move |ctx: &mut VcpuCtx<'_>, ev: DebugEvent| {
            if let DebugEvent::SwBreakpoint { pc } = ev {
                assert_eq!(ctx.regs().unwrap().rip, pc, "stopped at the trap");
                *hits.lock().unwrap().entry((ctx.index(), pc)).or_default() += 1;
            }
            Action::Continue
        })
    })
}

/// The u64 at guest-physical `gpa`.
pub fn read_u64(vm: &vmm::Vm, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    vm.read_phys(gpa, &mut b).unwrap();
    u64::from_le_bytes(b)
}
