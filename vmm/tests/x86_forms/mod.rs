//! The instruction forms `emulate_native` runs, encoded here by hand (REX,
//! ModRM, SIB) independently of the emulator's decoder: mov, movzx,
//! movsx(d), lea, add, sub, and, or, xor, cmp and test over every operand
//! size, register (AH..BH and the REX byte registers too), addressing mode
//! and edge immediate; and the values the cases give registers and memory.

use std::fmt;

/// The buffer memory operands point into.
pub const BUF_LEN: usize = 64 * 1024;
/// Memory operands land at least this far inside the buffer, beyond any
/// displacement or index used.
const TARGET_MARGIN: u64 = 0x1000;

#[rustfmt::skip]
pub const EDGES: [u64; 13] = [
    0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff,
    i64::MAX as u64, i64::MIN as u64, u64::MAX,
];

pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A register or memory value: edge values (also shifted into AH..BH's
/// byte, or under random upper bits) or random ones.
pub fn value(rng: &mut XorShift) -> u64 {
    let r = rng.next();
    let edge = EDGES[(r >> 8) as usize % EDGES.len()];
    match r % 8 {
        0..=2 => edge,
        3 => edge << 8 | (r >> 32 & 0xff),
        4 => {
            let keep = mask([1, 2, 4][(r >> 40) as usize % 3]);
            edge & keep | rng.next() & !keep
        }
        _ => rng.next(),
    }
}

fn mask(size: u8) -> u64 {
    u64::MAX >> (64 - 8 * u32::from(size))
}

pub fn target_off(rng: &mut XorShift) -> u64 {
    TARGET_MARGIN + rng.below(BUF_LEN as u64 - 2 * TARGET_MARGIN)
}

#[derive(Clone, Copy)]
pub struct Reg {
    /// ModRM number; 4..8 are AH..BH when `high`.
    num: u8,
    size: u8,
    high: bool,
}

pub const fn reg(num: u8, size: u8) -> Reg {
    let high = false;
    Reg { num, size, high }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = usize::from(self.num);
        let size = usize::from(self.size);
        if self.high {
            return f.write_str(["ah", "ch", "dh", "bh"][n - 4]);
        }
        if n >= 8 {
            return write!(f, "r{n}{}", ["", "b", "w", "", "d", "", "", "", ""][size]);
        }
        let name = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"][n];
        match size {
            1 => f.write_str(["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil"][n]),
            2 => f.write_str(name),
            4 => write!(f, "e{name}"),
            _ => write!(f, "r{name}"),
        }
    }
}

/// Every general register but RSP.
const GPRS: [u8; 15] = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const SIZES: [u8; 4] = [1, 2, 4, 8];

/// The registers of a size (for bytes: AL..BL, AH..BH, BPL..DIL, R8B..).
fn regs_of(size: u8) -> Vec<Reg> {
    let mut v: Vec<Reg> = GPRS.iter().map(|&num| reg(num, size)).collect();
    if size == 1 {
        v.extend((4..8).map(|num| Reg {
            high: true,
            ..reg(num, 1)
        }));
    }
    v
}

/// base + index * scale + disp (not both registers absent).
#[derive(Clone, Copy)]
pub struct Mem {
    pub base: Option<u8>,
    pub index: Option<u8>,
    pub scale: u8,
    pub disp: i32,
}

#[derive(Clone, Copy)]
pub enum Addr {
    Regs(Mem),
    /// RIP-relative, to this buffer offset.
    Rip(u64),
    /// `mov`'s 64-bit absolute `moffs`, to this buffer offset.
    Abs(u64),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = match *self {
            Addr::Rip(off) => return write!(f, "[rip -> buf+{off:#x}]"),
            Addr::Abs(off) => return write!(f, "[abs buf+{off:#x}]"),
            Addr::Regs(m) => m,
        };
        let base = m.base.map(|b| reg(b, 8).to_string());
        let index = m.index.map(|i| format!("{}*{}", reg(i, 8), m.scale));
        let sum = base.into_iter().chain(index).collect::<Vec<_>>().join("+");
        let (sign, d) = (if m.disp < 0 { "-" } else { "+" }, m.disp.unsigned_abs());
        match d {
            0 => write!(f, "[{sum}]"),
            _ => write!(f, "[{sum}{sign}{d:#x}]"),
        }
    }
}

fn sized(addr: Addr, size: u8) -> String {
    let width = ["", "byte ", "word ", "", "dword ", "", "", "", "qword "];
    format!("{}{addr}", width[usize::from(size)])
}

/// ModRM (with `reg`), SIB and displacement of `addr`, and its REX.X and
/// REX.B bits. A RIP displacement is left 0 and follows the ModRM byte.
fn modrm_mem(reg: u8, addr: Addr) -> (Vec<u8>, u8) {
    let r = (reg & 7) << 3;
    let Addr::Regs(m) = addr else {
        return (vec![r | 5, 0, 0, 0, 0], 0);
    };
    // RBP and R13 as a base always take a displacement; no base takes 32 bits.
    let (md, disp) = match m.base {
        Some(b) if m.disp == 0 && b & 7 != 5 => (0, vec![]),
        Some(_) if i8::try_from(m.disp).is_ok() => (0x40, vec![m.disp as u8]),
        Some(_) => (0x80, m.disp.to_le_bytes().to_vec()),
        None => (0, m.disp.to_le_bytes().to_vec()),
    };
    let (base, index) = (m.base.unwrap_or(5), m.index.unwrap_or(4));
    let mut out = if m.index.is_some() || m.base.is_none_or(|b| b & 7 == 4) {
        let sib = (m.scale.trailing_zeros() as u8) << 6 | (index & 7) << 3 | base & 7;
        vec![md | r | 4, sib]
    } else {
        vec![md | r | base & 7]
    };
    out.extend(disp);
    let rex = m.index.map_or(0, |i| i >> 3) << 1 | m.base.map_or(0, |b| b >> 3);
    (out, rex)
}

/// REX and operand-size prefixes; None if AH..BH would need a REX.
fn prefixes(size: u8, rex: u8, regs: &[Reg]) -> Option<Vec<u8>> {
    let bytes = regs.iter().filter(|r| r.size == 1);
    let rex_needed = rex != 0 || bytes.clone().any(|r| !r.high && r.num >= 4);
    if rex_needed && bytes.clone().any(|r| r.high) {
        return None;
    }
    let p66 = (size == 2).then_some(0x66);
    Some(
        p66.into_iter()
            .chain(rex_needed.then_some(0x40 | rex))
            .collect(),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// mov, movzx, movsx, lea: the flags stay.
    Move,
    /// and, or, xor, test: AF is undefined.
    Logic,
    /// add, sub, cmp.
    Arith,
}

#[derive(Clone, Copy)]
struct Op {
    name: &'static str,
    kind: Kind,
    /// Whether a memory destination is read, and written.
    reads_dst: bool,
    writes_dst: bool,
}

const fn op(name: &'static str, kind: Kind, reads_dst: bool, writes_dst: bool) -> Op {
    Op {
        name,
        kind,
        reads_dst,
        writes_dst,
    }
}

const MOV: Op = op("mov", Kind::Move, false, true);
const TEST: Op = op("test", Kind::Logic, true, false);
/// The ALU group, with its opcode row (`/digit`).
const ALU: [(Op, u8); 6] = [
    (op("add", Kind::Arith, true, true), 0),
    (op("or", Kind::Logic, true, true), 1),
    (op("and", Kind::Logic, true, true), 4),
    (op("sub", Kind::Arith, true, true), 5),
    (op("xor", Kind::Logic, true, true), 6),
    (op("cmp", Kind::Arith, true, false), 7),
];

/// What a memory operand does: `len` 0 for `lea`.
#[derive(Clone, Copy)]
pub struct Access {
    pub len: u8,
    pub loads: bool,
    pub stores: bool,
}

const fn access(len: u8, loads: bool, stores: bool) -> Access {
    Access { len, loads, stores }
}

/// How a case picks RAX and RCX: at random, over every pair of low bytes,
/// or over every pair of edge values and their neighbours.
#[derive(Clone, Copy)]
pub enum Sweep {
    Random,
    Bytes,
    Edges,
}

pub struct Insn {
    pub bytes: Vec<u8>,
    pub text: String,
    pub kind: Kind,
    pub mem: Option<(Addr, Access)>,
    pub sweep: Sweep,
}

/// The ModRM reg field: a register or an opcode extension (`/digit`).
#[derive(Clone, Copy)]
enum Field {
    Reg(Reg),
    Ext(u8),
}

#[derive(Clone, Copy)]
enum Rm {
    Reg(Reg),
    Mem(Addr, Access),
}

pub struct Gen {
    insn_addr: u64,
    buf_addr: u64,
    rng: XorShift,
    modes: Vec<Addr>,
    pub insns: Vec<Insn>,
}

impl Gen {
    /// The forms for an instruction at `insn_addr` (RIP-relative ones
    /// reach the buffer at `buf_addr`).
    pub fn new(insn_addr: u64, buf_addr: u64) -> Self {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut modes = Vec::new();
        let mut add_mode = |base, index, scale, disp| {
            modes.push(Addr::Regs(Mem {
                base,
                index,
                scale,
                disp,
            }))
        };
        // Every base with no, an 8- and a 32-bit displacement; every index
        // with every scale, over a rotation of bases; no base.
        for (k, &base) in GPRS.iter().enumerate() {
            for disp in [0, [0x18, -0x20, 0x7f, -0x80][k % 4], [0x400, -0x400][k % 2]] {
                add_mode(Some(base), None, 1, disp);
            }
            for (s, scale) in [1, 2, 4, 8].into_iter().enumerate() {
                let base = GPRS[(k + 1 + 3 * s) % GPRS.len()];
                add_mode(Some(base), Some(GPRS[k]), scale, [0, -8, 0x7c, 0x300][s]);
            }
        }
        for (s, index) in [0, 5, 12, 15].into_iter().enumerate() {
            add_mode(None, Some(index), 1 << s, 0x40);
        }
        modes.extend((0..3).map(|_| Addr::Rip(target_off(&mut rng))));
        let insns = Vec::new();
        Gen {
            insn_addr,
            buf_addr,
            rng,
            modes,
            insns,
        }
    }

    /// Edge immediates of a size, and a random one.
    fn imms(&mut self, size: u8) -> Vec<u64> {
        let mut v: Vec<u64> = EDGES.iter().map(|&e| e & mask(size)).collect();
        v.sort_unstable();
        v.dedup();
        v.push(self.rng.next() & mask(size));
        v
    }

    fn push(&mut self, text: String, kind: Kind, bytes: Vec<u8>, mem: Option<(Addr, Access)>) {
        let sweep = Sweep::Random;
        self.insns.push(Insn {
            bytes,
            text,
            kind,
            mem,
            sweep,
        });
    }

    /// A ModRM form of `size` (66 or REX.W), skipped if not encodable.
    fn emit(
        &mut self,
        text: String,
        kind: Kind,
        (size, opcode): (u8, &[u8]),
        reg: Field,
        rm: Rm,
        imm: &[u8],
    ) {
        let mut regs = Vec::new();
        let reg = match reg {
            Field::Reg(r) => {
                regs.push(r);
                r.num
            }
            Field::Ext(e) => e,
        };
        let mut rex = (size & 8) | (reg >> 3) << 2;
        let (modrm, mem) = match rm {
            Rm::Reg(r) => {
                regs.push(r);
                rex |= r.num >> 3;
                (vec![0xc0 | (reg & 7) << 3 | r.num & 7], None)
            }
            Rm::Mem(addr, access) => {
                let (modrm, xb) = modrm_mem(reg, addr);
                rex |= xb;
                (modrm, Some((addr, access)))
            }
        };
        let Some(mut bytes) = prefixes(size, rex, &regs) else {
            return;
        };
        let disp_at = bytes.len() + opcode.len() + 1;
        bytes.extend(opcode.iter().chain(&modrm).chain(imm));
        if let Some((Addr::Rip(off), _)) = mem {
            let next = self.insn_addr + bytes.len() as u64;
            let disp = i32::try_from((self.buf_addr + off).wrapping_sub(next) as i64).unwrap();
            bytes[disp_at..disp_at + 4].copy_from_slice(&disp.to_le_bytes());
        }
        self.push(text, kind, bytes, mem);
    }

    /// `op` in its `op r/m, r` (`rm_first`) or `op r, r/m` form (`sizes`:
    /// the reg field's, the r/m's; 0 for `lea`'s): on register pairs, then
    /// on every addressing mode with a rotating register.
    fn modrm_forms(&mut self, op: Op, opcode: &[u8], sizes: (u8, u8), rm_first: bool) {
        let (reg_size, rm_size) = sizes;
        let (name, enc) = (op.name, (reg_size, opcode));
        // The `r, r/m` form of a same-size operation encodes the same pairs
        // as the `r/m, r` one again: a fifth of them are enough.
        let fifth = !rm_first && reg_size == rm_size;
        let pairs = if rm_size == 0 {
            vec![]
        } else {
            regs_of(reg_size)
        };
        for (i, r) in pairs.into_iter().enumerate() {
            for (j, m) in regs_of(rm_size).into_iter().enumerate() {
                if fifth && (i + j) % 5 != 0 {
                    continue;
                }
                let text = if rm_first {
                    format!("{name} {m}, {r}")
                } else {
                    format!("{name} {r}, {m}")
                };
                self.emit(text, op.kind, enc, Field::Reg(r), Rm::Reg(m), &[]);
            }
        }
        let mem_access = match rm_first {
            true => access(rm_size, op.reads_dst, op.writes_dst),
            false => access(rm_size, rm_size != 0, false),
        };
        let regs = regs_of(reg_size);
        for (k, addr) in self.modes.clone().into_iter().enumerate() {
            let (r, m) = (regs[k % regs.len()], sized(addr, rm_size));
            let text = if rm_first {
                format!("{name} {m}, {r}")
            } else {
                format!("{name} {r}, {m}")
            };
            self.emit(
                text,
                op.kind,
                enc,
                Field::Reg(r),
                Rm::Mem(addr, mem_access),
                &[],
            );
        }
    }

    /// `op r/m, imm` (`/ext`; `sizes`: the operand's, the immediate's):
    /// every register with every immediate, every addressing mode with one.
    fn rm_imms(&mut self, op: Op, opcode: &[u8], ext: u8, (size, imm_size): (u8, u8)) {
        let imms = self.imms(imm_size);
        let mem_access = access(size, op.reads_dst, op.writes_dst);
        let regs = regs_of(size)
            .into_iter()
            .flat_map(|r| imms.iter().map(move |&v| (Rm::Reg(r), v)));
        let mems = self
            .modes
            .iter()
            .enumerate()
            .map(|(k, &a)| (Rm::Mem(a, mem_access), imms[k % imms.len()]));
        for (rm, v) in regs.chain(mems).collect::<Vec<_>>() {
            let dst = match rm {
                Rm::Reg(r) => r.to_string(),
                Rm::Mem(a, _) => sized(a, size),
            };
            let (text, imm) = (
                format!("{} {dst}, {v:#x}", op.name),
                &v.to_le_bytes()[..usize::from(imm_size)],
            );
            self.emit(text, op.kind, (size, opcode), Field::Ext(ext), rm, imm);
        }
    }

    /// `op r, imm` without ModRM: `opcode` for the accumulator, or + the
    /// register (`mov`'s B0+r and B8+r) for `regs`.
    fn short_imms(&mut self, op: Op, opcode: u8, regs: &[Reg], (size, imm_size): (u8, u8)) {
        for &r in regs {
            for v in self.imms(imm_size) {
                let Some(mut bytes) = prefixes(size, (size & 8) | r.num >> 3, &[r]) else {
                    continue;
                };
                bytes.push(opcode + (r.num & 7));
                bytes.extend_from_slice(&v.to_le_bytes()[..usize::from(imm_size)]);
                self.push(format!("{} {r}, {v:#x}", op.name), op.kind, bytes, None);
            }
        }
    }

    pub fn alu_test_mov(&mut self) {
        for size in SIZES {
            let (w, imm_size) = (u8::from(size != 1), size.min(4));
            let same = (size, size);
            for (op, digit) in ALU {
                let row = digit * 8 + w;
                self.modrm_forms(op, &[row], same, true);
                self.modrm_forms(op, &[row + 2], same, false);
                self.rm_imms(op, &[0x80 + w], digit, (size, imm_size));
                if size != 1 {
                    // The sign-extended imm8 form.
                    self.rm_imms(op, &[0x83], digit, (size, 1));
                }
                self.short_imms(op, row + 4, &[reg(0, size)], (size, imm_size));
            }
            self.modrm_forms(TEST, &[0x84 + w], same, true);
            self.rm_imms(TEST, &[0xf6 + w], 0, (size, imm_size));
            self.short_imms(TEST, 0xa8 + w, &[reg(0, size)], (size, imm_size));
            self.modrm_forms(MOV, &[0x88 + w], same, true);
            self.modrm_forms(MOV, &[0x8a + w], same, false);
            self.rm_imms(MOV, &[0xc6 + w], 0, (size, imm_size));
            self.short_imms(MOV, 0xb0 + 8 * w, &regs_of(size), (size, size));
            // A0..A3: the accumulator from or to a 64-bit absolute address.
            for (load, opcode) in [(true, 0xa0 + w), (false, 0xa2 + w)] {
                for _ in 0..4 {
                    let off = target_off(&mut self.rng);
                    let addr = Addr::Abs(off);
                    let mut bytes = prefixes(size, size & 8, &[]).unwrap();
                    bytes.push(opcode);
                    bytes.extend((self.buf_addr + off).to_le_bytes());
                    let (acc, m) = (reg(0, size), sized(addr, size));
                    let text = if load {
                        format!("mov {acc}, {m}")
                    } else {
                        format!("mov {m}, {acc}")
                    };
                    self.push(
                        text,
                        Kind::Move,
                        bytes,
                        Some((addr, access(size, load, !load))),
                    );
                }
            }
        }
    }

    /// movzx, movsx, movsxd; lea.
    pub fn extends_and_lea(&mut self) {
        let (movzx, movsx) = (
            op("movzx", Kind::Move, false, false),
            op("movsx", Kind::Move, false, false),
        );
        let forms: [(Op, &[u8], u8, &[u8]); 5] = [
            (movzx, &[0x0f, 0xb6], 1, &[2, 4, 8]),
            (movsx, &[0x0f, 0xbe], 1, &[2, 4, 8]),
            (movzx, &[0x0f, 0xb7], 2, &[4, 8]),
            (movsx, &[0x0f, 0xbf], 2, &[4, 8]),
            (op("movsxd", Kind::Move, false, false), &[0x63], 4, &[8]),
        ];
        for (op, opcode, src, dsts) in forms {
            for &dst in dsts {
                self.modrm_forms(op, opcode, (dst, src), false);
            }
        }
        let lea = op("lea", Kind::Move, false, false);
        for size in [2, 4, 8] {
            self.modrm_forms(lea, &[0x8d], (size, 0), false);
        }
    }

    /// `op al, cl` over every byte pair, and `op ax/eax/rax, cx/ecx/rcx` over
    /// every pair of edge values, for each flag-setting operation.
    pub fn sweeps(&mut self) {
        let ops = ALU.iter().map(|&(op, digit)| (op, digit * 8));
        for (op, row) in ops.chain([(TEST, 0x84)]) {
            for size in SIZES {
                let (dst, src) = (reg(0, size), reg(1, size));
                let opcode = [row + u8::from(size != 1)];
                let text = format!("{} {dst}, {src}", op.name);
                self.emit(
                    text,
                    op.kind,
                    (size, &opcode),
                    Field::Reg(src),
                    Rm::Reg(dst),
                    &[],
                );
                let last = self.insns.last_mut().unwrap();
                last.sweep = if size == 1 {
                    Sweep::Bytes
                } else {
                    Sweep::Edges
                };
            }
        }
    }
}
