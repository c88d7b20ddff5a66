//! Tracepoint call sites, recovered from the image's `__jump_table`.
//!
//! A kernel tracepoint compiles to a static branch: a NOP in the hot path
//! (`static_key_false`) whose `__jump_table` entry names the out-of-line
//! block that calls the tracepoint's probes, and the tracepoint's key. The
//! NOP executes exactly when the tracepoint would fire, also where the
//! function holding it was inlined (`ttwu_do_wakeup` on 6.12), so it is
//! the exact probe point of an event that has no function of its own.
//!
//! The tracepoint's first argument is in whatever register the compiler
//! chose; the out-of-line block moves it into `%rsi` right before calling
//! `__SCT__tp_func_<name>` (or `__traceiter_<name>`), so that `mov` names
//! it. Only that exact shape is accepted; a site in any other shape keeps
//! `first_arg: None` and callers must not guess.

use std::collections::HashMap;

use crate::btf::KernelTypes;
use crate::elf::AddressSpace;
use crate::symbols::KernelSymbols;

/// Bytes of one `struct jump_entry` with relative references
/// (`s32 code; s32 target; long key;`, CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE).
const JUMP_ENTRY: u64 = 16;
/// Most entries a table may have (a 6.12 kernel has ~9,000).
const MAX_ENTRIES: u64 = 1 << 20;
/// Bytes of the out-of-line block searched for the probe call.
const BLOCK: usize = 96;
/// `struct tracepoint.key` when BTF does not say (after `const char *name`).
const DEFAULT_KEY_OFFSET: u64 = 8;

/// One static-branch site of a tracepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointSite {
    /// Tracepoint name, e.g. `sched_wakeup`.
    pub tracepoint: String,
    /// Link-time address of the branch (a NOP while the tracepoint is off).
    pub addr: u64,
    /// Where the branch goes when the tracepoint is on: the out-of-line
    /// block, which calls the probes and jumps back to the instruction
    /// after the NOP.
    pub target: u64,
    /// Length of that NOP (2 or 5).
    pub len: u8,
    /// The register holding the tracepoint's first argument at `addr`, by
    /// its x86 encoding number (0 rax, 1 rcx, 2 rdx, 3 rbx, … 15 r15);
    /// `None` if the site has another shape.
    pub first_arg: Option<u8>,
    /// The first argument when it is a constant (`mov $imm32, %esi`).
    pub first_arg_const: Option<u32>,
}

/// Every tracepoint site of the image, sorted by tracepoint then address.
/// Empty when the image has no jump table or no tracepoints.
pub fn recover(
    data: &[u8],
    space: &AddressSpace,
    symbols: &KernelSymbols,
    types: &KernelTypes,
) -> Vec<TracepointSite> {
    let (Some(start), Some(stop)) = (
        symbols.addr("__start___jump_table"),
        symbols.addr("__stop___jump_table"),
    ) else {
        return Vec::new();
    };
    let key_offset = types
        .member_offset("tracepoint", "key")
        .unwrap_or(DEFAULT_KEY_OFFSET);
    // The key's address names the tracepoint: &__tracepoint_<name>.key.
    let by_key: HashMap<u64, &str> = symbols
        .iter()
        .filter_map(|s| {
            let name = s.name.strip_prefix("__tracepoint_")?;
            Some((s.addr.wrapping_add(key_offset), name))
        })
        .collect();
    let n = stop.saturating_sub(start) / JUMP_ENTRY;
    let mut out = Vec::new();
    for i in 0..n.min(MAX_ENTRIES) {
        let e = start + i * JUMP_ENTRY;
        let Some(raw) = space.read(data, e, JUMP_ENTRY as usize) else {
            break;
        };
        let rel32 = |o: usize| {
            i64::from(i32::from_le_bytes(
                raw[o..o + 4].try_into().unwrap_or_default(),
            ))
        };
        let key_rel = i64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
        let code = e.wrapping_add_signed(rel32(0));
        let target = (e + 4).wrapping_add_signed(rel32(4));
        let key = (e + 8).wrapping_add_signed(key_rel);
        // Bit 0: the branch is taken by default (not a tracepoint's NOP).
        if key & 1 != 0 {
            continue;
        }
        let Some(&name) = by_key.get(&(key & !3)) else {
            continue;
        };
        let Some(len) = space.read(data, code, 5).and_then(nop_len) else {
            continue;
        };
        let callees = [
            symbols.addr(&format!("__SCT__tp_func_{name}")),
            symbols.addr(&format!("__traceiter_{name}")),
        ];
        let arg = space
            .read(data, target, BLOCK)
            .and_then(|block| first_arg(block, target, &callees));
        out.push(TracepointSite {
            tracepoint: name.to_string(),
            addr: code,
            target,
            len,
            first_arg: arg.and_then(|a| a.register()),
            first_arg_const: arg.and_then(|a| a.constant()),
        });
    }
    out.sort_by(|a, b| (&a.tracepoint, a.addr).cmp(&(&b.tracepoint, b.addr)));
    out.dedup();
    out
}

/// Length of the NOP a disabled static branch compiles to, if `code`
/// starts with one: `66 90` or `0f 1f 44 00 00` (what x86's
/// `arch_static_branch` emits and `jump_label` patches back in).
fn nop_len(code: &[u8]) -> Option<u8> {
    match code {
        [0x66, 0x90, ..] => Some(2),
        [0x0f, 0x1f, 0x44, 0x00, 0x00, ..] => Some(5),
        _ => None,
    }
}

/// Where the first argument is at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    Register(u8),
    Constant(u32),
}

impl Arg {
    fn register(self) -> Option<u8> {
        match self {
            Arg::Register(r) => Some(r),
            Arg::Constant(_) => None,
        }
    }
    fn constant(self) -> Option<u32> {
        match self {
            Arg::Constant(c) => Some(c),
            Arg::Register(_) => None,
        }
    }
}

/// In the out-of-line block at `base`, finds `call rel32` to one of
/// `callees` preceded immediately by `mov %reg, %rsi` (or `%esi`, for an
/// integer argument), `mov $imm32, %esi` or `xor %esi, %esi`, and says
/// which.
fn first_arg(block: &[u8], base: u64, callees: &[Option<u64>]) -> Option<Arg> {
    for at in 3..block.len().saturating_sub(4) {
        if block[at] != 0xe8 {
            continue;
        }
        let rel = i32::from_le_bytes(block[at + 1..at + 5].try_into().ok()?);
        let dest = (base + at as u64 + 5).wrapping_add_signed(i64::from(rel));
        if !callees.contains(&Some(dest)) {
            continue;
        }
        // mov $imm32, %esi: BE imm32
        if at >= 5 && block[at - 5] == 0xbe {
            let imm = u32::from_le_bytes(block[at - 4..at].try_into().ok()?);
            return Some(Arg::Constant(imm));
        }
        // xor %esi,%esi (31 f6 or 33 f6): zero
        if matches!(block[at - 2..at], [0x31 | 0x33, 0xf6]) {
            return Some(Arg::Constant(0));
        }
        return mov_to_rsi(&block[at - 3..at]).map(Arg::Register);
    }
    None
}

/// Decodes the register-to-register `mov` into %rsi/%esi that ends `insn`
/// (the 3 bytes before the call): `[REX] 89 /r` with rm = rsi, or
/// `[REX] 8B /r` with reg = rsi; the REX prefix (W for 64 bits, R/B for
/// r8-r15) is optional.
fn mov_to_rsi(insn: &[u8]) -> Option<u8> {
    const RSI: u8 = 6;
    let &[b0, b1, b2] = insn else {
        return None;
    };
    let (rex, op, modrm) = match b0 {
        0x40..=0x4f if matches!(b1, 0x89 | 0x8b) => (b0, b1, b2),
        _ => (0, b1, b2),
    };
    if !matches!(op, 0x89 | 0x8b) || modrm >> 6 != 0b11 {
        return None;
    }
    let reg = ((rex >> 2) & 1) << 3 | ((modrm >> 3) & 7);
    let rm = (rex & 1) << 3 | (modrm & 7);
    match op {
        0x89 if rm == RSI => Some(reg),
        0x8b if reg == RSI => Some(rm),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::{Symbol, SymbolSource};

    #[test]
    fn decodes_both_mov_encodings() {
        // mov %rbx,%rsi ; mov %rbp,%rsi ; mov %r12,%rsi ; mov %rsi,%r13 (not ours)
        assert_eq!(mov_to_rsi(&[0x48, 0x89, 0xde]), Some(3));
        assert_eq!(mov_to_rsi(&[0x48, 0x89, 0xee]), Some(5));
        assert_eq!(mov_to_rsi(&[0x4c, 0x89, 0xe6]), Some(12));
        assert_eq!(mov_to_rsi(&[0x49, 0x89, 0xf5]), None);
        // mov %r14,%rsi written as 8B: 49 8b f6
        assert_eq!(mov_to_rsi(&[0x49, 0x8b, 0xf6]), Some(14));
        // 32-bit: mov %edx,%esi (89 d6) after another byte; mov %r14d,%esi
        assert_eq!(mov_to_rsi(&[0x90, 0x89, 0xd6]), Some(2));
        assert_eq!(mov_to_rsi(&[0x44, 0x89, 0xf6]), Some(14));
        // memory operand, or into another register
        assert_eq!(mov_to_rsi(&[0x48, 0x8b, 0x73]), None);
        assert_eq!(mov_to_rsi(&[0x90, 0x89, 0xd7]), None);
    }

    #[test]
    fn nops_of_a_disabled_branch() {
        assert_eq!(nop_len(&[0x66, 0x90, 0xcc, 0xcc, 0xcc]), Some(2));
        assert_eq!(nop_len(&[0x0f, 0x1f, 0x44, 0x00, 0x00]), Some(5));
        assert_eq!(nop_len(&[0xe9, 0x00, 0x00, 0x00, 0x00]), None);
    }

    /// A synthetic image: text at 0x1000 with one site and its block, a
    /// jump table at 0x2000, the tracepoint at 0x3000.
    fn image(call_dest: u64, mov: [u8; 3]) -> (Vec<u8>, AddressSpace, KernelSymbols) {
        let base = 0xffff_ffff_8100_0000u64;
        let mut data = vec![0xccu8; 0x4000];
        let site = base + 0x1010;
        let block = base + 0x1100;
        data[0x1010..0x1015].copy_from_slice(&[0x0f, 0x1f, 0x44, 0x00, 0x00]);
        // block: mov 0x8(%rax),%rdi ; mov %reg,%rsi ; call dest
        let mut b = vec![0x48, 0x8b, 0x78, 0x08];
        b.extend_from_slice(&mov);
        let call_at = block + b.len() as u64;
        b.push(0xe8);
        b.extend_from_slice(&((call_dest as i64 - (call_at as i64 + 5)) as i32).to_le_bytes());
        data[0x1100..0x1100 + b.len()].copy_from_slice(&b);
        let e = base + 0x2000;
        let tp = base + 0x3000;
        data[0x2000..0x2004].copy_from_slice(&((site as i64 - e as i64) as i32).to_le_bytes());
        data[0x2004..0x2008]
            .copy_from_slice(&((block as i64 - (e + 4) as i64) as i32).to_le_bytes());
        // key = &tp.key with the "init" flag (bit 1) set, as the kernel has it
        data[0x2008..0x2010].copy_from_slice(&((tp + 8 + 2) as i64 - (e + 8) as i64).to_le_bytes());
        let sym = |name: &str, addr: u64| Symbol {
            addr,
            kind: 'D',
            name: name.into(),
        };
        let syms = KernelSymbols::new(
            vec![
                sym("__start___jump_table", e),
                sym("__stop___jump_table", e + 16),
                sym("__tracepoint_sched_wakeup", tp),
                sym("__SCT__tp_func_sched_wakeup", base + 0x3800),
            ],
            SymbolSource::Kallsyms,
        );
        (data, AddressSpace::linear(base, 0x4000), syms)
    }

    #[test]
    fn finds_the_site_and_its_argument_register() {
        let base = 0xffff_ffff_8100_0000u64;
        let (data, space, syms) = image(base + 0x3800, [0x48, 0x89, 0xee]);
        let sites = recover(&data, &space, &syms, &KernelTypes::default());
        assert_eq!(
            sites,
            [TracepointSite {
                tracepoint: "sched_wakeup".into(),
                addr: base + 0x1010,
                target: base + 0x1100,
                len: 5,
                first_arg: Some(5),
                first_arg_const: None,
            }]
        );
    }

    #[test]
    fn a_constant_argument_is_read_from_its_immediate() {
        // mov 0x8(%rax),%rdi ; mov $0x6,%esi ; call
        let b = [
            0x48, 0x8b, 0x78, 0x08, 0xbe, 6, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xcc, 0xcc, 0xcc, 0xcc,
        ];
        let callee = 0x1000 + 14;
        assert_eq!(
            first_arg(&b, 0x1000, &[Some(callee)]),
            Some(Arg::Constant(6))
        );
    }

    #[test]
    fn a_block_of_another_shape_gives_no_register() {
        let base = 0xffff_ffff_8100_0000u64;
        // the call goes elsewhere: the site is found, its argument is not
        let (data, space, syms) = image(base + 0x3900, [0x48, 0x89, 0xee]);
        let sites = recover(&data, &space, &syms, &KernelTypes::default());
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].first_arg, None);
    }

    #[test]
    fn garbage_tables_yield_nothing_and_do_not_panic() {
        let base = 0xffff_ffff_8100_0000u64;
        let (mut data, space, syms) = image(base + 0x3800, [0x48, 0x89, 0xee]);
        for (i, b) in data[0x2000..0x2010].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(97) ^ 0x5a;
        }
        assert!(recover(&data, &space, &syms, &KernelTypes::default()).is_empty());
        // a stop before the start, or a table beyond the image
        let mut s = syms.as_slice().to_vec();
        for sym in &mut s {
            if sym.name == "__start___jump_table" {
                sym.addr = base + 0x10_0000;
            }
        }
        let syms = KernelSymbols::new(s, SymbolSource::Kallsyms);
        assert!(recover(&data, &space, &syms, &KernelTypes::default()).is_empty());
    }
}
