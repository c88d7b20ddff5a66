//! Differential test of `vmm::arch::emulate` against the host CPU.
//!
//! Every generated encoding of mov, movzx, movsx(d), lea, add, sub, and, or,
//! xor, cmp and test (register, memory and immediate operands of 1 to 8
//! bytes, AH..BH and the REX byte registers) runs natively in a stub that
//! loads every general register but RSP, and RFLAGS, from a state block,
//! runs the instruction and saves them back. [`emulate`] must give the same
//! registers, the same arithmetic flags (AF only where x86 defines it) and
//! the same store. Memory operands point into a host buffer that the
//! emulator reads through a [`GuestView`] (guest-virtual = host address).
//! The encodings are made by hand in `x86_forms`.

mod x86_forms;

use std::collections::BTreeMap;
use std::ptr;
use std::time::Instant;

use vmm::arch::emulate::{
    emulate, supported, GuestView, AF, ARITH_FLAGS as ARITH, CF, OF, PF, SF, ZF,
};
use vmm::kvm_regs;
use x86_forms::{reg, target_off, value, Addr, Gen, Insn, Kind, Sweep, XorShift, BUF_LEN, EDGES};

/// The mapping: the stub's code page, the state page, then the buffer.
const CODE_LEN: usize = 4096;
const STATE_OFF: usize = CODE_LEN;
const BUF_OFF: usize = 2 * CODE_LEN;
const REGION_LEN: usize = BUF_OFF + BUF_LEN;
/// State block slots: 16 registers in ModRM order (RSP's unused), RFLAGS.
const FLAGS_SLOT: usize = 16;
const RSP: usize = 4;

/// Bit 1 and IF: what user-mode `popfq` keeps whatever it is given.
const FIXED_FLAGS: u64 = 0x202;

// ---- The native side: a stub in an mmap'ed page ----

const CALLEE_SAVED: [u8; 6] = [3, 5, 12, 13, 14, 15];

/// `push r` (`op` 0x50) or `pop r` (0x58).
fn push_pop(c: &mut Vec<u8>, op: u8, r: u8) {
    c.extend(if r >= 8 {
        vec![0x41, op + (r & 7)]
    } else {
        vec![op + r]
    });
}

fn movabs_rax(c: &mut Vec<u8>, v: u64) {
    c.extend([0x48, 0xb8]);
    c.extend(v.to_le_bytes());
}

/// `mov reg,[rax+slot*8]` (`load`) or `mov [rax+slot*8],reg`.
fn mov_slot(c: &mut Vec<u8>, load: bool, reg: u8, slot: usize) {
    let opcode = if load { 0x8b } else { 0x89 };
    c.extend([0x48 | (reg >> 3) << 2, opcode, 0x80 | (reg & 7) << 3]);
    c.extend((slot as u32 * 8).to_le_bytes());
}

/// Saves the callee-saved registers, loads RFLAGS and the registers.
fn prologue(state: u64) -> Vec<u8> {
    let mut c = Vec::new();
    for r in CALLEE_SAVED {
        push_pop(&mut c, 0x50, r);
    }
    movabs_rax(&mut c, state);
    c.extend([0xff, 0xb0]); // push qword [rax+FLAGS]; popfq
    c.extend((FLAGS_SLOT as u32 * 8).to_le_bytes());
    c.push(0x9d);
    for r in (1..16).filter(|&r| r != RSP as u8) {
        mov_slot(&mut c, true, r, r.into());
    }
    mov_slot(&mut c, true, 0, 0);
    c
}

/// Saves the flags before anything can change them, then the registers
/// (RAX through the stack: it holds the state's address), and returns.
fn epilogue(state: u64) -> Vec<u8> {
    let mut c = vec![0x9c, 0x50]; // pushfq; push rax
    movabs_rax(&mut c, state);
    for r in (1..16).filter(|&r| r != RSP as u8) {
        mov_slot(&mut c, false, r, r.into());
    }
    for slot in [0, FLAGS_SLOT] {
        push_pop(&mut c, 0x58, 1);
        mov_slot(&mut c, false, 1, slot);
    }
    for &r in CALLEE_SAVED.iter().rev() {
        push_pop(&mut c, 0x58, r);
    }
    c.push(0xc3);
    c
}

struct Native {
    region: *mut u8,
    prologue_len: usize,
    loaded: bool,
}

impl Native {
    fn new() -> Self {
        let (rw, flags) = (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        );
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let p = unsafe { libc::mmap(ptr::null_mut(), REGION_LEN, rw, flags, -1, 0) };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let region = p.cast::<u8>();
        let prologue_len = prologue(region as u64 + STATE_OFF as u64).len();
        let loaded = false;
        Native {
            region,
            prologue_len,
            loaded,
        }
    }

    fn state_addr(&self) -> u64 {
        self.region as u64 + STATE_OFF as u64
    }

    fn buf_addr(&self) -> u64 {
        self.region as u64 + BUF_OFF as u64
    }

    /// Where the instruction under test sits in the stub.
    fn insn_addr(&self) -> u64 {
        self.region as u64 + self.prologue_len as u64
    }

    fn protect(&self, prot: libc::c_int) {
        // SAFETY: the code page is the start of our own mapping.
        let rc = unsafe { libc::mprotect(self.region.cast(), CODE_LEN, prot) };
        assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
    }

    /// Writes the stub around `insn`: writable, then executable only.
    fn load(&mut self, insn: &[u8]) {
        let state = self.state_addr();
        let code = [prologue(state), insn.to_vec(), epilogue(state)].concat();
        assert!(code.len() <= CODE_LEN);
        self.protect(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: the code page is ours, writable now, and `code` fits in it.
        unsafe { ptr::copy_nonoverlapping(code.as_ptr(), self.region, code.len()) };
        self.protect(libc::PROT_READ | libc::PROT_EXEC);
        self.loaded = true;
    }

    /// Runs the stub from these registers and flags: the ones it ends with.
    fn run(&mut self, gpr: &[u64; 16], rflags: u64) -> ([u64; 16], u64) {
        assert!(self.loaded);
        let state = (self.region as usize + STATE_OFF) as *mut u64;
        // SAFETY: the state page is ours, writable and aligned; 17 slots fit.
        unsafe {
            ptr::copy_nonoverlapping(gpr.as_ptr(), state, 16);
            state.add(FLAGS_SLOT).write(rflags);
        }
        // SAFETY: the code page holds a whole stub (`load`): a C-ABI function
        // of no arguments that keeps the callee-saved registers and the
        // stack, and writes only the state page and, through the generated
        // memory operands, the buffer, which nothing borrows during the call
        // (`&mut self`).
        let stub = unsafe { std::mem::transmute::<*mut u8, extern "C" fn()>(self.region) };
        stub();
        let mut out = [0u64; 16];
        // SAFETY: as above; the stub has returned.
        let flags = unsafe {
            ptr::copy_nonoverlapping(state, out.as_mut_ptr(), 16);
            state.add(FLAGS_SLOT).read()
        };
        (out, flags)
    }

    fn buf(&self) -> &[u8] {
        // SAFETY: the buffer is ours and readable; native code only runs in
        // `run`, which takes `&mut self`, so not while this is borrowed.
        unsafe { std::slice::from_raw_parts(self.region.add(BUF_OFF), BUF_LEN) }
    }

    fn buf_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `buf`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.region.add(BUF_OFF), BUF_LEN) }
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which nothing borrows any more.
        unsafe { libc::munmap(self.region.cast(), REGION_LEN) };
    }
}

/// The emulator's view of the buffer: a copy of it, at the host address.
struct Buffer<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl GuestView for Buffer<'_> {
    fn read(&self, gva: u64, buf: &mut [u8]) -> bool {
        let o = gva.wrapping_sub(self.base) as usize;
        let Some(b) = o
            .checked_add(buf.len())
            .and_then(|end| self.bytes.get(o..end))
        else {
            return false;
        };
        buf.copy_from_slice(b);
        true
    }
    fn fs_base(&self) -> Option<u64> {
        Some(0)
    }
    fn gs_base(&self) -> Option<u64> {
        Some(0)
    }
}

// ---- Running and comparing ----

/// `kvm_regs`' general registers in ModRM order.
fn gprs(r: &mut kvm_regs) -> [&mut u64; 16] {
    [
        &mut r.rax, &mut r.rcx, &mut r.rdx, &mut r.rbx, &mut r.rsp, &mut r.rbp, &mut r.rsi,
        &mut r.rdi, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
        &mut r.r14, &mut r.r15,
    ]
}

fn flag_names(f: u64) -> String {
    let names = [
        (CF, "CF"),
        (PF, "PF"),
        (AF, "AF"),
        (ZF, "ZF"),
        (SF, "SF"),
        (OF, "OF"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|&(_, n)| n)
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(" ")
    }
}

struct Harness {
    native: Native,
    /// The buffer as the emulator sees it, and as it must be after a case.
    shadow: Vec<u8>,
    rng: XorShift,
    /// The edge values and their neighbours, for `Sweep::Edges`.
    edges: Vec<u64>,
}

impl Harness {
    fn new() -> Self {
        let mut native = Native::new();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for chunk in native.buf_mut().chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        let shadow = native.buf().to_vec();
        let near = |e: u64| [e.wrapping_sub(1), e, e.wrapping_add(1)];
        let mut edges: Vec<u64> = EDGES.iter().flat_map(|&e| near(e)).collect();
        edges.sort_unstable();
        edges.dedup();
        Harness {
            native,
            shadow,
            rng,
            edges,
        }
    }

    /// Runs every case of every instruction: the number of cases, and the
    /// failures (one per failing instruction).
    fn run(&mut self, insns: &[Insn]) -> (usize, Vec<String>) {
        let (mut cases, mut failures) = (0, Vec::new());
        for insn in insns {
            if supported(&insn.bytes).map(|(_, n)| usize::from(n)) != Some(insn.bytes.len()) {
                failures.push(format!("{} {:02x?}: not supported", insn.text, insn.bytes));
                continue;
            }
            self.native.load(&insn.bytes);
            let n = match insn.sweep {
                Sweep::Random if insn.mem.is_some() => 12,
                Sweep::Random => 24,
                Sweep::Bytes => 1 << 16,
                Sweep::Edges => self.edges.len().pow(2),
            };
            for case in 0..n {
                cases += 1;
                if let Err(e) = self.case(insn, case) {
                    failures.push(e);
                    break;
                }
            }
        }
        (cases, failures)
    }

    /// Points `addr`'s registers at a random spot of the buffer: that spot.
    fn place(&mut self, addr: Addr, gpr: &mut [u64; 16]) -> u64 {
        let buf = self.native.buf_addr();
        let m = match addr {
            Addr::Rip(off) | Addr::Abs(off) => return buf + off,
            Addr::Regs(m) => m,
        };
        let mut target = buf + target_off(&mut self.rng);
        let (disp, scale) = (i64::from(m.disp) as u64, u64::from(m.scale));
        if let Some(b) = m.base {
            // A small index, negative too: the sum wraps as the CPU's does.
            let index = m.index.map_or(0, |i| {
                let v = (self.rng.below(33) as i64 - 16) as u64;
                gpr[usize::from(i)] = v;
                v
            });
            gpr[usize::from(b)] = target
                .wrapping_sub(index.wrapping_mul(scale))
                .wrapping_sub(disp);
        } else if let Some(i) = m.index {
            target -= target.wrapping_sub(disp) % scale;
            gpr[usize::from(i)] = target.wrapping_sub(disp) / scale;
        }
        target
    }

    fn case(&mut self, insn: &Insn, case: usize) -> Result<(), String> {
        let mut gpr = [0u64; 16];
        gpr.fill_with(|| value(&mut self.rng));
        match insn.sweep {
            Sweep::Random => {}
            Sweep::Bytes => {
                gpr[0] = gpr[0] & !0xff | (case & 0xff) as u64;
                gpr[1] = gpr[1] & !0xff | (case >> 8) as u64;
            }
            Sweep::Edges => {
                let n = self.edges.len();
                (gpr[0], gpr[1]) = (self.edges[case / n], self.edges[case % n]);
            }
        }
        // `lea` reads no memory: its registers stay random.
        let (mut target, mut old) = (None, 0);
        if let Some((addr, access)) = insn.mem.filter(|(_, a)| a.len > 0) {
            let t = self.place(addr, &mut gpr);
            let o = (t - self.native.buf_addr()) as usize;
            old = value(&mut self.rng);
            self.native.buf_mut()[o..o + 8].copy_from_slice(&old.to_le_bytes());
            self.shadow[o..o + 8].copy_from_slice(&old.to_le_bytes());
            target = Some((t, access));
        }
        let rflags = FIXED_FLAGS | self.rng.next() & ARITH;
        let rip = self.native.insn_addr();
        let mut regs = kvm_regs {
            rip,
            rflags,
            ..Default::default()
        };
        for (slot, v) in gprs(&mut regs).into_iter().zip(gpr) {
            *slot = v;
        }
        let view = Buffer {
            base: self.native.buf_addr(),
            bytes: &self.shadow,
        };
        let emulated = emulate(&insn.bytes, &regs, &view);
        let (out, out_flags) = self.native.run(&gpr, rflags);
        let mut diffs = Vec::new();
        match emulated {
            None => diffs.push("not emulated".to_string()),
            Some(mut e) => {
                let after = gprs(&mut e.regs).map(|v| *v);
                for n in (0..16).filter(|&n| n != RSP && after[n] != out[n]) {
                    let (r, emu, cpu) = (reg(n as u8, 8), after[n], out[n]);
                    diffs.push(format!("{r}: emulated {emu:#x}, native {cpu:#x}"));
                }
                if after[RSP] != gpr[RSP] || e.regs.rip != rip + insn.bytes.len() as u64 {
                    diffs.push(format!("rsp {:#x}, rip {:#x}", after[RSP], e.regs.rip));
                }
                let compared = if insn.kind == Kind::Logic {
                    ARITH & !AF
                } else {
                    ARITH
                };
                let (emu, cpu) = (e.regs.rflags & compared, out_flags & compared);
                if emu != cpu {
                    diffs.push(format!(
                        "flags: emulated {}, native {}",
                        flag_names(emu),
                        flag_names(cpu)
                    ));
                }
                let store_wanted = target.filter(|(_, a)| a.stores).map(|(t, a)| (t, a.len));
                if e.store.map(|s| (s.gva, s.len)) != store_wanted {
                    diffs.push(format!(
                        "store {:x?}, wanted at and len {store_wanted:x?}",
                        e.store
                    ));
                }
                if e.loaded != insn.mem.is_some_and(|(_, a)| a.loads) {
                    diffs.push(format!("loaded: {}", e.loaded));
                }
                if let Some(s) = e.store.filter(|s| Some((s.gva, s.len)) == store_wanted) {
                    let (o, len) = (
                        (s.gva - self.native.buf_addr()) as usize,
                        usize::from(s.len),
                    );
                    self.shadow[o..o + len].copy_from_slice(&s.bytes[..len]);
                }
            }
        }
        // What the CPU wrote must be the emulator's store, and nothing else.
        if target.is_some() && self.native.buf() != &self.shadow[..] {
            let buf = self.native.buf();
            let at = buf
                .iter()
                .zip(&self.shadow)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let (cpu, emu) = (buf[at], self.shadow[at]);
            diffs.push(format!(
                "memory at buf+{at:#x}: native {cpu:#04x}, emulated {emu:#04x}"
            ));
            self.shadow.copy_from_slice(buf);
        }
        if diffs.is_empty() {
            return Ok(());
        }
        let inputs: Vec<String> = (0..16)
            .filter(|&n| n != RSP)
            .map(|n| format!("{}={:#x}", reg(n as u8, 8), gpr[n]))
            .collect();
        let mem = target
            .map(|(t, _)| format!(" mem[{t:#x}]={old:#018x}"))
            .unwrap_or_default();
        let (text, bytes, flags) = (&insn.text, &insn.bytes, flag_names(rflags));
        Err(format!(
            "{text} {bytes:02x?}: {}\n    from {} flags {flags}{mem}",
            diffs.join("; "),
            inputs.join(" ")
        ))
    }
}

fn check(what: &str, insns: &[Insn], h: &mut Harness) {
    let started = Instant::now();
    let (cases, failures) = h.run(insns);
    let mut by_mnemonic = BTreeMap::new();
    for i in insns {
        *by_mnemonic
            .entry(i.text.split(' ').next().unwrap_or(""))
            .or_insert(0) += 1;
    }
    let with_mem = insns.iter().filter(|i| i.mem.is_some()).count();
    eprintln!(
        "emulate_native: {what}: {} instructions ({with_mem} with a memory operand; {by_mnemonic:?}), {cases} cases, {:.2?}",
        insns.len(),
        started.elapsed()
    );
    let shown = failures[..failures.len().min(20)].join("\n");
    assert!(
        failures.is_empty(),
        "{} of {} instructions differ from the CPU:\n{shown}",
        failures.len(),
        insns.len()
    );
}

#[test]
fn every_generated_instruction_matches_the_cpu() {
    let mut h = Harness::new();
    let mut gen = Gen::new(h.native.insn_addr(), h.native.buf_addr());
    gen.alu_test_mov();
    gen.extends_and_lea();
    check("every form", &gen.insns, &mut h);
}

#[test]
fn flags_match_the_cpu_on_every_byte_pair_and_edge_pair() {
    let mut h = Harness::new();
    let mut gen = Gen::new(h.native.insn_addr(), h.native.buf_addr());
    gen.sweeps();
    check("flag sweeps", &gen.insns, &mut h);
}
