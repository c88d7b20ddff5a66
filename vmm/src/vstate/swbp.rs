//! VM-wide software breakpoints: one int3 per guest address for the whole
//! VM, its original byte saved once and restored on removal, at
//! [`crate::Vm::shutdown`] (normal end, timeout, interrupt, and the `Vm`'s
//! drop during a panic's unwinding), and never written back over a byte the
//! guest changed meanwhile.
//!
//! Every vCPU of a VM built with [`crate::VmConfig::sw_breakpoints`] runs
//! with `KVM_GUESTDBG_USE_SW_BP` from its first entry, so any int3 is a
//! debug exit: one of ours is reported as [`DebugEvent::SwBreakpoint`]; any
//! other is reinjected into the guest (the kernel's own text patching and
//! kprobes use int3), and an int3 of ours removed while a vCPU was exiting
//! on it just runs the restored instruction.
//!
//! Resuming past ours: when the covered instruction is one of the small set
//! in [`crate::arch::step`] (the NOP family incl. ftrace's 5-byte NOP,
//! `endbr64`, `push r64`, `mov %rsp,%rbp`) or of the wider one in
//! [`crate::arch::emulate`] (loads, stores, `lea`, compares and logic with
//! their flags), the monitor emulates it, so the trap never leaves memory
//! and no hit on another vCPU can be lost. Any other instruction (or an
//! operand that is not plain RAM) takes the slow path: pause every other vCPU,
//! restore the byte, single-step this vCPU (interrupts blocked where KVM
//! offers `KVM_GUESTDBG_BLOCKIRQ`), put the int3 back, resume the others.
//! Costs two vCPU round trips per other vCPU per hit: fine for rare
//! probes, not for a hot one.
//!
//! Two encodings of the trap ([`TrapKind`]): `int3` (1 byte) where KVM
//! delivers #BP as a debug exit, and `out %al,$0xe9` (2 bytes,
//! [`crate::layout::TRAP_PORT`]) everywhere else: KVM hands every port
//! write to user space, also where it never sees the guest's #BP (a KVM
//! nested in QEMU's TCG, which raises int3 as a software interrupt). A
//! 2-byte trap may cover two instructions (a 1-byte `push` and the next);
//! the caller must have proven that no branch lands between them
//! ([`crate::arch::trap_site`]).
//!
//! Readers on the trap path take no lock: each vCPU keeps its own `Arc` of
//! the published table and refreshes it only when the generation changed.
//! The vCPU side (hits, step-over, fallback) is in [`super::swstep`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::emulate;
use crate::arch::step::{self, StepInsn, MAX_INSN};
use crate::breakpoints::DebugError;
use crate::devices::lock;

/// The instruction a software trap writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrapKind {
    /// `int3` (`cc`): a #BP debug exit under `KVM_GUESTDBG_USE_SW_BP`.
    #[default]
    Int3,
    /// `out %al,$TRAP_PORT` (`e6 e9`): a port-I/O exit.
    PortIo,
}

impl TrapKind {
    /// The trap's bytes.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            TrapKind::Int3 => &[0xcc],
            TrapKind::PortIo => &[0xe6, crate::layout::TRAP_PORT as u8],
        }
    }

    /// Its length in bytes.
    pub fn length(self) -> u64 {
        self.bytes().len() as u64
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrapKind::Int3 => write!(f, "int3"),
            TrapKind::PortIo => write!(f, "out %al,${:#x}", crate::layout::TRAP_PORT),
        }
    }
}

/// How the monitor resumes past one software breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOver {
    /// The covered instruction is emulated; the trap stays in memory.
    Emulated(StepInsn),
    /// The two covered instructions are emulated (a 2-byte trap over a
    /// 1-byte instruction and the next).
    EmulatedPair(StepInsn, StepInsn),
    /// The covered instruction (or a 1-byte one and the next) in
    /// [`crate::arch::emulate`]'s wider set, by their iced-x86 codes.
    Interpreted(iced_x86::Code, Option<iced_x86::Code>),
    /// Other vCPUs paused, bytes restored, single steps out of the
    /// covered bytes, re-inserted.
    SingleStep,
}

fn insn_name(i: StepInsn) -> String {
    match i {
        StepInsn::Nop(n) => format!("nop{n}"),
        StepInsn::Endbr64 => "endbr64".into(),
        StepInsn::Push { reg, .. } => format!("push r{reg}"),
        StepInsn::MovRspRbp => "mov %rsp,%rbp".into(),
        StepInsn::XorZero { reg } => format!("xor r{reg}d,r{reg}d"),
        StepInsn::MovImm32 { reg, imm, .. } => format!("mov ${imm:#x},r{reg}d"),
    }
}

impl std::fmt::Display for StepOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepOver::Emulated(i) => write!(f, "emulated {}", insn_name(*i)),
            StepOver::EmulatedPair(a, b) => {
                write!(f, "emulated {}; {}", insn_name(*a), insn_name(*b))
            }
            StepOver::Interpreted(a, None) => write!(f, "emulated {a:?}"),
            StepOver::Interpreted(a, Some(b)) => write!(f, "emulated {a:?}; {b:?}"),
            StepOver::SingleStep => write!(f, "single-step (other vCPUs paused)"),
        }
    }
}

/// One software breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwEntry {
    /// Guest-physical address of the trap's first byte.
    pub gpa: u64,
    /// The bytes it replaced (`len` of them).
    pub orig: [u8; 2],
    /// The trap's length.
    pub len: u8,
    /// How hits are stepped over (decided from the bytes at insertion; the
    /// bytes are decoded again at every hit, so a tail the guest changed
    /// meanwhile is seen).
    pub step: StepOver,
}

type Table = HashMap<u64, SwEntry>;

/// Counters of the VM-wide list.
#[derive(Debug, Default)]
pub struct SwStats {
    /// Hits of ours reported to a handler.
    pub hits: AtomicU64,
    /// Step-overs by emulation.
    pub emulated: AtomicU64,
    /// Step-overs by single-stepping with the other vCPUs paused.
    pub single_stepped: AtomicU64,
    /// int3s that were not ours, reinjected into the guest.
    pub reinjected: AtomicU64,
}

/// The VM-wide software-breakpoint list (see the module documentation).
pub struct SwBreakpoints {
    enabled: bool,
    trap: TrapKind,
    /// KVM offers KVM_GUESTDBG_BLOCKIRQ (interrupts held off while stepping).
    pub(crate) block_irq: bool,
    table: Mutex<Table>,
    published: Mutex<Arc<Table>>,
    generation: AtomicU64,
    /// Held by the vCPU doing a single-step fallback.
    pub(crate) stepping: AtomicBool,
    /// Counters.
    pub stats: SwStats,
}

fn write_bytes(mem: &GuestMemoryMmap, gpa: u64, b: &[u8]) -> Result<(), DebugError> {
    mem.write_slice(b, GuestAddress(gpa))
        .map_err(|_| DebugError::Memory(gpa, b.len()))
}

fn read_bytes(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Result<[u8; 2], DebugError> {
    let mut b = [0u8; 2];
    mem.read_slice(&mut b[..len], GuestAddress(gpa))
        .map_err(|_| DebugError::Memory(gpa, len))?;
    Ok(b)
}

/// How a trap of `len` bytes over `code` is stepped over: by the prologue
/// set of [`step`] where it covers the instruction(s), else by adding
/// [`emulate`]'s wider set, else single steps.
fn step_over(code: &[u8], len: usize) -> StepOver {
    if let Some(i) = step::decode(code) {
        let at = usize::from(i.length());
        if at >= len {
            return StepOver::Emulated(i);
        }
        if let Some(j) = step::decode(&code[at..]) {
            return StepOver::EmulatedPair(i, j);
        }
    }
    // Either set, by iced-x86's name.
    let one = |b: &[u8]| match step::decode(b) {
        Some(i) => {
            let d = iced_x86::Decoder::new(64, b, iced_x86::DecoderOptions::NONE).decode();
            (usize::from(i.length()) == d.len()).then(|| (d.code(), i.length()))
        }
        None => emulate::supported(b),
    };
    let Some((first, n)) = one(code) else {
        return StepOver::SingleStep;
    };
    if usize::from(n) >= len {
        return StepOver::Interpreted(first, None);
    }
    match one(&code[usize::from(n)..]) {
        Some((second, _)) => StepOver::Interpreted(first, Some(second)),
        None => StepOver::SingleStep,
    }
}

/// Up to [`MAX_INSN`] bytes at `gpa`, not crossing its page.
pub(crate) fn insn_bytes(mem: &GuestMemoryMmap, gpa: u64, buf: &mut [u8; MAX_INSN]) -> usize {
    let n = MAX_INSN.min((0x1000 - (gpa & 0xfff)) as usize);
    match mem.read_slice(&mut buf[..n], GuestAddress(gpa)) {
        Ok(()) => n,
        Err(_) => 0,
    }
}

impl SwBreakpoints {
    /// A list of int3s for a VM whose vCPUs run with USE_SW_BP (`enabled`).
    pub fn new(enabled: bool, block_irq: bool) -> Self {
        Self::with_trap(enabled, block_irq, TrapKind::Int3)
    }

    /// A list whose traps are `trap`.
    pub fn with_trap(enabled: bool, block_irq: bool, trap: TrapKind) -> Self {
        SwBreakpoints {
            enabled,
            trap,
            block_irq,
            table: Mutex::new(Table::new()),
            published: Mutex::new(Arc::new(Table::new())),
            generation: AtomicU64::new(0),
            stepping: AtomicBool::new(false),
            stats: SwStats::default(),
        }
    }

    /// Whether the VM's vCPUs take these traps (insertion is refused
    /// otherwise).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The traps' encoding.
    pub fn trap(&self) -> TrapKind {
        self.trap
    }

    /// The trap's bytes and their count, as stored in an entry.
    fn trap_bytes(&self) -> ([u8; 2], usize) {
        let b = self.trap.bytes();
        let mut out = [0u8; 2];
        out[..b.len()].copy_from_slice(b);
        (out, b.len())
    }

    fn publish(&self, t: &Table) {
        *lock(&self.published) = Arc::new(t.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes the VM-wide step: the right to pause the other vCPUs and
    /// change text under them (false if another vCPU holds it).
    pub(crate) fn claim_step(&self) -> bool {
        self.stepping
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives the VM-wide step back.
    pub(crate) fn release_step(&self) {
        self.stepping.store(false, Ordering::Release);
    }

    /// Inserts a trap at guest-virtual `gva` whose first byte is at
    /// guest-physical `gpa`; says how its hits will be stepped over. A
    /// 2-byte trap must not cross a page (its bytes are written by
    /// guest-physical address).
    pub fn insert(
        &self,
        mem: &GuestMemoryMmap,
        gva: u64,
        gpa: u64,
    ) -> Result<StepOver, DebugError> {
        if !self.enabled {
            return Err(DebugError::SwBreakpoint(
                gva,
                "this VM was built without VmConfig::sw_breakpoints",
            ));
        }
        let (trap, len) = self.trap_bytes();
        if (gpa & 0xfff) + len as u64 > 0x1000 {
            return Err(DebugError::SwBreakpoint(gva, "the trap would cross a page"));
        }
        let mut t = lock(&self.table);
        if t.contains_key(&gva) {
            return Err(DebugError::SwBreakpoint(gva, "already set"));
        }
        let overlaps = |e: &SwEntry| gpa < e.gpa + u64::from(e.len) && e.gpa < gpa + len as u64;
        if t.values().any(overlaps) {
            return Err(DebugError::SwBreakpoint(
                gva,
                "its bytes already hold one of ours (alias or overlap)",
            ));
        }
        let mut b = [0u8; MAX_INSN];
        let n = insn_bytes(mem, gpa, &mut b);
        if n < len {
            return Err(DebugError::Memory(gpa, len));
        }
        if b[..len].contains(&0xcc) {
            return Err(DebugError::SwBreakpoint(gva, "the guest has an int3 there"));
        }
        let step = step_over(&b[..n], len);
        let mut orig = [0u8; 2];
        orig[..len].copy_from_slice(&b[..len]);
        let e = SwEntry {
            gpa,
            orig,
            len: len as u8,
            step,
        };
        t.insert(gva, e);
        // Published before the trap exists: a vCPU that hits it finds it.
        self.publish(&t);
        write_bytes(mem, gpa, &trap[..len])?;
        Ok(step)
    }

    /// How a trap at guest-physical `gpa` would be stepped over, from the
    /// bytes there now (nothing is written).
    pub fn classify(&self, mem: &GuestMemoryMmap, gpa: u64) -> Result<StepOver, DebugError> {
        let (_, len) = self.trap_bytes();
        let mut b = [0u8; MAX_INSN];
        let n = insn_bytes(mem, gpa, &mut b);
        if n < len {
            return Err(DebugError::Memory(gpa, len));
        }
        Ok(step_over(&b[..n], len))
    }

    /// Whether `e`'s trap is in memory as written.
    fn holds_trap(&self, mem: &GuestMemoryMmap, e: &SwEntry) -> bool {
        let (trap, len) = self.trap_bytes();
        read_bytes(mem, e.gpa, len).is_ok_and(|b| b[..len] == trap[..len])
    }

    /// Restores `e`'s bytes unless the guest rewrote them since (its own
    /// text patching): then the guest's bytes stay.
    fn restore(&self, mem: &GuestMemoryMmap, e: &SwEntry) -> Result<(), DebugError> {
        if self.holds_trap(mem, e) {
            write_bytes(mem, e.gpa, &e.orig[..usize::from(e.len)])?;
        }
        Ok(())
    }

    /// The trap is still in memory at `gpa` (a hit on a trap not in the
    /// list: the guest's own int3, or ours just removed).
    pub(crate) fn trap_in_memory(&self, mem: &GuestMemoryMmap, gpa: u64) -> bool {
        let (trap, len) = self.trap_bytes();
        read_bytes(mem, gpa, len).is_ok_and(|b| b[..len] == trap[..len])
    }

    /// Removes the breakpoint at `gva`, restoring the original byte.
    pub fn remove(&self, mem: &GuestMemoryMmap, gva: u64) -> Result<(), DebugError> {
        let mut t = lock(&self.table);
        let e = t
            .remove(&gva)
            .ok_or(DebugError::SwBreakpoint(gva, "not set"))?;
        self.restore(mem, &e)?;
        self.publish(&t);
        Ok(())
    }

    /// Removes every breakpoint (detach); returns how many.
    pub fn remove_all(&self, mem: &GuestMemoryMmap) -> usize {
        let mut t = lock(&self.table);
        let n = t.len();
        for e in t.values() {
            let _ = self.restore(mem, e);
        }
        t.clear();
        if n > 0 {
            self.publish(&t);
        }
        n
    }

    /// The breakpoints, sorted by address.
    pub fn list(&self) -> Vec<(u64, SwEntry)> {
        let mut v: Vec<_> = lock(&self.table).iter().map(|(a, e)| (*a, *e)).collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// Writes the original bytes for a single step over `gva` (false if
    /// the breakpoint is gone).
    pub(crate) fn lift(&self, mem: &GuestMemoryMmap, gva: u64) -> bool {
        let t = lock(&self.table);
        match t.get(&gva) {
            Some(e) => write_bytes(mem, e.gpa, &e.orig[..usize::from(e.len)]).is_ok(),
            None => false,
        }
    }

    /// Puts the trap back after a single step, if still wanted.
    pub(crate) fn relower(&self, mem: &GuestMemoryMmap, gva: u64) {
        let t = lock(&self.table);
        if let Some(e) = t.get(&gva) {
            let (trap, len) = self.trap_bytes();
            let _ = write_bytes(mem, e.gpa, &trap[..len]);
        }
    }
}

/// A vCPU's private view of the published table.
#[derive(Default)]
pub(crate) struct SwView {
    generation: u64,
    table: Arc<Table>,
}

impl SwView {
    /// The entry at `gva`, from a view refreshed if the list changed.
    pub(crate) fn get(&mut self, sw: &SwBreakpoints, gva: u64) -> Option<SwEntry> {
        let g = sw.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.table = lock(&sw.published).clone();
            self.generation = g;
        }
        self.table.get(&gva).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn insert_remove_restores_the_exact_bytes() {
        let m = mem();
        let code = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0x41, 0x57, 0xe8, 1, 2, 3, 4];
        m.write_slice(&code, GuestAddress(0x1000)).unwrap();
        let sw = SwBreakpoints::new(true, false);
        let va = 0xffff_ffff_8100_0000u64;
        assert_eq!(
            sw.insert(&m, va, 0x1000).unwrap(),
            StepOver::Emulated(StepInsn::Nop(5))
        );
        assert_eq!(
            sw.insert(&m, va + 5, 0x1005).unwrap(),
            StepOver::Emulated(StepInsn::Push { reg: 15, len: 2 })
        );
        assert_eq!(sw.insert(&m, va + 7, 0x1007).unwrap(), StepOver::SingleStep);
        let mut now = [0u8; 12];
        m.read_slice(&mut now, GuestAddress(0x1000)).unwrap();
        assert_eq!(now, [0xcc, 0x1f, 0x44, 0, 0, 0xcc, 0x57, 0xcc, 1, 2, 3, 4]);
        // One byte saved per address: a second insert or an alias is refused.
        assert!(sw.insert(&m, va, 0x1000).is_err());
        assert!(sw.insert(&m, va + 0x10_0000, 0x1000).is_err());
        assert_eq!(sw.list().len(), 3);
        sw.remove(&m, va + 5).unwrap();
        assert!(sw.remove(&m, va + 5).is_err(), "not set any more");
        assert_eq!(sw.remove_all(&m), 2);
        m.read_slice(&mut now, GuestAddress(0x1000)).unwrap();
        assert_eq!(now, code, "every byte as before");
        assert!(sw.list().is_empty());
    }

    #[test]
    fn the_guest_own_bytes_are_never_overwritten() {
        let m = mem();
        m.write_slice(&[0x90, 0xcc], GuestAddress(0x2000)).unwrap();
        let sw = SwBreakpoints::new(true, false);
        assert!(sw.insert(&m, 0x2001, 0x2001).is_err(), "the guest's int3");
        sw.insert(&m, 0x2000, 0x2000).unwrap();
        // The guest patches its text over our int3 (e.g. a static key).
        m.write_obj(0xebu8, GuestAddress(0x2000)).unwrap();
        sw.remove(&m, 0x2000).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0xeb);
        // Outside RAM, and on a VM that does not trap int3.
        assert!(sw.insert(&m, 1, 0x10_0000).is_err());
        let off = SwBreakpoints::new(false, false);
        assert!(off.insert(&m, 0x2000, 0x2000).is_err());
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0xeb);
    }

    #[test]
    fn views_follow_the_published_table() {
        let m = mem();
        m.write_slice(&[0x90; 4], GuestAddress(0x3000)).unwrap();
        let sw = SwBreakpoints::new(true, false);
        let mut v = SwView::default();
        assert_eq!(v.get(&sw, 0x3000), None);
        sw.insert(&m, 0x3000, 0x3000).unwrap();
        let e = v.get(&sw, 0x3000).unwrap();
        assert_eq!((e.gpa, e.orig[0], e.len), (0x3000, 0x90, 1));
        let held = v.table.clone();
        sw.remove(&m, 0x3000).unwrap();
        assert_eq!(v.get(&sw, 0x3000), None, "removal seen at the next lookup");
        assert!(held.contains_key(&0x3000), "an old view stays intact");
        // The single-step fallback's lift / relower only touch listed ones.
        sw.insert(&m, 0x3001, 0x3001).unwrap();
        assert!(sw.lift(&m, 0x3001));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3001)).unwrap(), 0x90);
        sw.relower(&m, 0x3001);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3001)).unwrap(), 0xcc);
        assert!(!sw.lift(&m, 0x3002));
        sw.remove(&m, 0x3001).unwrap();
        sw.relower(&m, 0x3001);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3001)).unwrap(), 0x90);
    }
}
