//! Step-over emulation beyond [`super::step`]'s prologue set: one
//! fall-through integer instruction decoded with `iced-x86`: `mov`,
//! `movzx`, `movsx(d)`, `lea`, and `add`, `sub`, `and`, `or`, `xor`, `cmp`,
//! `test` with register, memory and immediate operands of 1 to 8 bytes.
//! These are what a trap after a function's ftrace NOP or a tracepoint's
//! static branch covers in the kernels seen (loads and stores through a
//! pointer, per-CPU `%gs:` accesses, flag-setting compares).
//!
//! Pure: the guest is reached through [`GuestView`] (reads by guest-virtual
//! address, segment bases), and a store is returned, not done, so the
//! caller commits registers and memory together or not at all. Anything
//! outside the set (a `lock` or `rep` prefix, a 32-bit address, a register
//! that is not a general one, a trap flag set by the guest) is `None`: the
//! caller falls back to letting the CPU run it.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use kvm_bindings::kvm_regs;

use super::step::{reg64, MAX_INSN};

/// What the emulator reads of the guest.
pub trait GuestView {
    /// Fills `buf` from guest-virtual `gva` through the vCPU's page
    /// tables; false if a byte is not readable RAM.
    fn read(&self, gva: u64, buf: &mut [u8]) -> bool;
    /// The FS segment base.
    fn fs_base(&self) -> Option<u64>;
    /// The GS segment base (the kernel's per-CPU area).
    fn gs_base(&self) -> Option<u64>;
}

/// A store the instruction makes: `len` bytes of `bytes` at `gva`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    /// Guest-virtual address.
    pub gva: u64,
    /// Little-endian value.
    pub bytes: [u8; 8],
    /// 1, 2, 4 or 8.
    pub len: u8,
}

/// The effect of one emulated instruction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effect {
    /// Registers after it (RIP past it).
    pub regs: kvm_regs,
    /// Its store, if it writes memory.
    pub store: Option<Store>,
    /// It read memory.
    pub loaded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Mov,
    Movzx,
    Movsx,
    Lea,
    Add,
    Sub,
    And,
    Or,
    Xor,
    Cmp,
    Test,
}

/// RFLAGS.CF.
pub const CF: u64 = 1;
/// RFLAGS.PF.
pub const PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub const AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub const ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub const SF: u64 = 1 << 7;
/// RFLAGS.TF.
pub const TF: u64 = 1 << 8;
/// RFLAGS.OF.
pub const OF: u64 = 1 << 11;
/// The six flags an arithmetic instruction sets.
pub const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

fn decode(bytes: &[u8], ip: u64) -> Option<Instruction> {
    let n = bytes.len().min(MAX_INSN);
    let i = Decoder::with_ip(64, &bytes[..n], ip, DecoderOptions::NONE).decode();
    (!i.is_invalid()).then_some(i)
}

fn op_of(i: &Instruction) -> Option<Op> {
    if i.has_lock_prefix() || i.has_rep_prefix() || i.has_repne_prefix() || i.op_count() != 2 {
        return None;
    }
    Some(match i.mnemonic() {
        Mnemonic::Mov => Op::Mov,
        Mnemonic::Movzx => Op::Movzx,
        Mnemonic::Movsx | Mnemonic::Movsxd => Op::Movsx,
        Mnemonic::Lea => Op::Lea,
        Mnemonic::Add => Op::Add,
        Mnemonic::Sub => Op::Sub,
        Mnemonic::And => Op::And,
        Mnemonic::Or => Op::Or,
        Mnemonic::Xor => Op::Xor,
        Mnemonic::Cmp => Op::Cmp,
        Mnemonic::Test => Op::Test,
        _ => return None,
    })
}

fn is_gpr(r: Register) -> bool {
    r.is_gpr() && r.size() <= 8
}

fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// Every operand is a general register, an immediate, or a memory operand
/// of 1-8 bytes addressed with 64-bit registers (or RIP).
fn operands_supported(i: &Instruction) -> bool {
    // `lea` computes an address and reads nothing: its operand has no size.
    let lea = i.mnemonic() == Mnemonic::Lea;
    (0..i.op_count()).all(|n| match i.op_kind(n) {
        OpKind::Register => is_gpr(i.op_register(n)),
        OpKind::Memory => {
            let size = i.memory_size().size();
            let base = i.memory_base();
            let index = i.memory_index();
            let addr64 = |r: Register| r == Register::None || r == Register::RIP || r.is_gpr64();
            (lea || (1..=8).contains(&size))
                && addr64(base)
                && addr64(index)
                && index != Register::RIP
        }
        k => is_immediate(k),
    })
}

/// The instruction at the start of `bytes` if [`emulate`] handles its form
/// (decided from the bytes alone, for choosing how a trap is stepped over).
pub fn supported(bytes: &[u8]) -> Option<(Code, u8)> {
    let i = decode(bytes, 0)?;
    (op_of(&i).is_some() && operands_supported(&i)).then(|| (i.code(), i.len() as u8))
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn sign_bit(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

/// Index of a 64-bit register in [`reg64`]'s order.
fn reg_index(full: Register) -> Option<u8> {
    let n = full as u32;
    let rax = Register::RAX as u32;
    (full.is_gpr64() && n >= rax && n < rax + 16).then(|| (n - rax) as u8)
}

fn get_reg(regs: &kvm_regs, r: Register) -> Option<u64> {
    let full = reg64(regs, reg_index(r.full_register())?);
    Some(if is_high_byte(r) {
        (full >> 8) & 0xff
    } else {
        full & mask(r.size())
    })
}

fn set_reg(regs: &mut kvm_regs, r: Register, v: u64) -> Option<()> {
    let idx = reg_index(r.full_register())?;
    let old = reg64(regs, idx);
    let new = match r.size() {
        1 if is_high_byte(r) => (old & !0xff00) | ((v & 0xff) << 8),
        1 => (old & !0xff) | (v & 0xff),
        2 => (old & !0xffff) | (v & 0xffff),
        // A 32-bit destination clears the upper half.
        4 => v & 0xffff_ffff,
        _ => v,
    };
    super::step::set_reg64(regs, idx, new);
    Some(())
}

/// The memory operand's linear address (with the FS/GS base); for `lea`,
/// the offset alone.
fn address(i: &Instruction, regs: &kvm_regs, view: &dyn GuestView, lea: bool) -> Option<u64> {
    let offset = if i.is_ip_rel_memory_operand() {
        i.ip_rel_memory_address()
    } else {
        let base = match i.memory_base() {
            Register::None => 0,
            r => get_reg(regs, r)?,
        };
        let index = match i.memory_index() {
            Register::None => 0,
            r => get_reg(regs, r)?.wrapping_mul(u64::from(i.memory_index_scale())),
        };
        base.wrapping_add(index)
            .wrapping_add(i.memory_displacement64())
    };
    if lea {
        return Some(offset);
    }
    let seg = match i.memory_segment() {
        Register::FS => view.fs_base()?,
        Register::GS => view.gs_base()?,
        _ => 0,
    };
    Some(offset.wrapping_add(seg))
}

fn parity_even(v: u64) -> bool {
    (v as u8).count_ones() % 2 == 0
}

/// The arithmetic flags of a result of `size` bytes; `carry`, `overflow`
/// and `adjust` as the operation computed them.
fn flags(rflags: u64, res: u64, size: usize, carry: bool, overflow: bool, adjust: bool) -> u64 {
    let res = res & mask(size);
    let mut f = rflags & !ARITH_FLAGS;
    for (set, bit) in [
        (carry, CF),
        (parity_even(res), PF),
        (adjust, AF),
        (res == 0, ZF),
        (res & sign_bit(size) != 0, SF),
        (overflow, OF),
    ] {
        if set {
            f |= bit;
        }
    }
    f
}

/// Emulates the instruction at the start of `bytes`, which is at
/// `regs.rip`. `None` when it is not in the set or an operand cannot be
/// read.
pub fn emulate(bytes: &[u8], regs: &kvm_regs, view: &dyn GuestView) -> Option<Effect> {
    if regs.rflags & TF != 0 {
        return None;
    }
    let i = decode(bytes, regs.rip)?;
    let op = op_of(&i)?;
    if !operands_supported(&i) {
        return None;
    }
    let dst_size = match i.op0_kind() {
        OpKind::Register => i.op0_register().size(),
        OpKind::Memory => i.memory_size().size(),
        _ => return None,
    };
    let mut loaded = false;
    let mut read = |n: u32| -> Option<(u64, usize)> {
        match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                Some((get_reg(regs, r)?, r.size()))
            }
            OpKind::Memory => {
                let size = i.memory_size().size();
                let mut b = [0u8; 8];
                let at = address(&i, regs, view, false)?;
                if !view.read(at, &mut b[..size]) {
                    return None;
                }
                loaded = true;
                Some((u64::from_le_bytes(b), size))
            }
            _ => Some((i.immediate(n) & mask(dst_size), dst_size)),
        }
    };
    let mut out = *regs;
    out.rip = regs.rip.wrapping_add(i.len() as u64);
    let m = mask(dst_size);
    let result: Option<u64> = match op {
        Op::Mov => Some(read(1)?.0 & m),
        Op::Movzx => Some(read(1)?.0 & m),
        Op::Movsx => {
            let (v, size) = read(1)?;
            let extended = if v & sign_bit(size) != 0 {
                v | !mask(size)
            } else {
                v
            };
            Some(extended & m)
        }
        Op::Lea => Some(address(&i, regs, view, true)? & m),
        Op::Add | Op::Sub | Op::Cmp => {
            let a = read(0)?.0 & m;
            let b = read(1)?.0 & m;
            let (res, carry, overflow) = if op == Op::Add {
                let r = a.wrapping_add(b) & m;
                (r, r < a, (a ^ r) & (b ^ r) & sign_bit(dst_size) != 0)
            } else {
                let r = a.wrapping_sub(b) & m;
                (r, a < b, (a ^ b) & (a ^ r) & sign_bit(dst_size) != 0)
            };
            let adjust = (a ^ b ^ res) & 0x10 != 0;
            out.rflags = flags(regs.rflags, res, dst_size, carry, overflow, adjust);
            (op != Op::Cmp).then_some(res)
        }
        Op::And | Op::Or | Op::Xor | Op::Test => {
            let a = read(0)?.0 & m;
            let b = read(1)?.0 & m;
            let res = match op {
                Op::Or => a | b,
                Op::Xor => a ^ b,
                _ => a & b,
            };
            out.rflags = flags(regs.rflags, res, dst_size, false, false, false);
            (op != Op::Test).then_some(res)
        }
    };
    let mut store = None;
    if let Some(v) = result {
        match i.op0_kind() {
            OpKind::Register => set_reg(&mut out, i.op0_register(), v)?,
            _ => {
                store = Some(Store {
                    gva: address(&i, regs, view, false)?,
                    bytes: v.to_le_bytes(),
                    len: dst_size as u8,
                })
            }
        }
    }
    Some(Effect {
        regs: out,
        store,
        loaded,
    })
}

#[cfg(test)]
mod tests;
