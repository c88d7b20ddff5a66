//! The 32-bit (compat, i386 ABI) syscall table, recovered from the code of
//! `ia32_sys_call(const struct pt_regs *regs, unsigned int nr)`.
//!
//! Kernels since 6.9 (and the stable lines that took the same fix, Debian's
//! 6.1 and 6.12 among them) have no `ia32_sys_call_table` array: the
//! dispatch is a `switch (nr)` compiled with `-fno-jump-tables` into a
//! binary search tree of `cmp $imm,%esi` / `je` / `ja` / `jbe` / `jne`
//! ending in tail calls `jmp __ia32_sys_NAME` (or `call` for the handlers
//! that never return, such as `exit`).
//!
//! [`recover`] runs that tree for every number below [`MAX_COMPAT_NR`]
//! with a tiny interpreter of exactly the instructions it holds (cmp esi
//! imm8/imm32, jcc rel8/rel32, jmp rel8/rel32, call rel32, endbr64, NOPs,
//! the entry's `call __fentry__`), each run bounded by [`MAX_STEPS`] and by
//! the function's bounds. A run ending in a jump (or call) to the start of
//! a symbol gives that symbol for its number; a run that meets anything
//! else gives nothing. Running each number concretely is exact where an
//! interval walk would have to track "nr != imm" holes.
//!
//! Names come from the handler symbols (`__ia32_sys_X`,
//! `__ia32_compat_sys_X` → `X`). Argument names and C types come from the
//! kernel's syscall metadata of the same name where there is one: that
//! metadata is the native (64-bit) declaration, whose argument names and
//! order the compat handler shares; a compat handler's own C types may be
//! narrower (`compat_ulong_t`), and the values are 32-bit registers.

use std::collections::HashMap;

use crate::elf::AddressSpace;
use crate::symbols::KernelSymbols;
use crate::syscalls::{Syscall, SyscallArg, SyscallTable};

/// Numbers tried (the i386 table ends below 500).
pub const MAX_COMPAT_NR: u32 = 1024;
/// Instructions interpreted per number.
pub const MAX_STEPS: usize = 256;
/// Largest dispatcher function accepted.
const MAX_FUNC: u64 = 64 * 1024;
const PREFIXES: [&str; 2] = ["__ia32_compat_sys_", "__ia32_sys_"];

/// One decoded instruction of the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insn {
    /// `cmp $imm,%esi`.
    CmpEsi(u32),
    /// Conditional jump (condition code 0..15, as in `0x70 + cc`).
    Jcc(u8, u64),
    Jmp(u64),
    Call(u64),
    /// Anything that only falls through (endbr64, NOPs).
    Nop,
}

/// Decodes the instruction at `at` from `code` (which starts at `base`):
/// the instruction and its length, or None for anything else.
fn decode(code: &[u8], base: u64, at: u64) -> Option<(Insn, u64)> {
    let off = usize::try_from(at.checked_sub(base)?).ok()?;
    let b = code.get(off..)?;
    let rel = |n: usize, len: u64| -> Option<u64> {
        let v = match n {
            1 => i64::from(*b.get(len as usize - 1)? as i8),
            _ => {
                let s = b.get(len as usize - 4..len as usize)?;
                i64::from(i32::from_le_bytes(s.try_into().ok()?))
            }
        };
        Some(at.wrapping_add(len).wrapping_add(v as u64))
    };
    let imm32 = |from: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(from..from + 4)?.try_into().ok()?))
    };
    Some(match *b.first()? {
        // cmp $imm8,%esi (sign-extended) / cmp $imm32,%esi
        0x83 if *b.get(1)? == 0xfe => (Insn::CmpEsi(i32::from(*b.get(2)? as i8) as u32), 3),
        0x81 if *b.get(1)? == 0xfe => (Insn::CmpEsi(imm32(2)?), 6),
        0x70..=0x7f => (Insn::Jcc(b[0] - 0x70, rel(1, 2)?), 2),
        0x0f if (0x80..=0x8f).contains(b.get(1)?) => (Insn::Jcc(b[1] - 0x80, rel(4, 6)?), 6),
        // nopl 0x0(%rax,%rax,1) (the patched-out __fentry__ call), nopl (%rax), nopw
        0x0f if *b.get(1)? == 0x1f => {
            let len = match *b.get(2)? {
                0x00 => 3,
                0x40 => 4,
                0x44 => 5,
                0x80 => 7,
                0x84 => 8,
                _ => return None,
            };
            (Insn::Nop, len)
        }
        0x90 => (Insn::Nop, 1),
        0xf3 if b.get(1..4)? == [0x0f, 0x1e, 0xfa] => (Insn::Nop, 4),
        0xe9 => (Insn::Jmp(rel(4, 5)?), 5),
        0xeb => (Insn::Jmp(rel(1, 2)?), 2),
        0xe8 => (Insn::Call(rel(4, 5)?), 5),
        _ => return None,
    })
}

/// Whether condition code `cc` holds after `cmp $imm,%esi` with `esi = nr`.
fn holds(cc: u8, nr: u32, imm: u32) -> Option<bool> {
    Some(match cc {
        0x2 => nr < imm,  // jb
        0x3 => nr >= imm, // jae
        0x4 => nr == imm, // je
        0x5 => nr != imm, // jne
        0x6 => nr <= imm, // jbe
        0x7 => nr > imm,  // ja
        0xc => (nr as i32) < (imm as i32),
        0xd => (nr as i32) >= (imm as i32),
        0xe => (nr as i32) <= (imm as i32),
        0xf => (nr as i32) > (imm as i32),
        _ => return None,
    })
}

/// Runs the dispatcher `code` (the bytes of the function at `base`) for
/// syscall number `nr`: the address it hands over to, if it does.
/// `is_fentry(target)` tells the entry's `call __fentry__` (skipped) from a
/// handler that never returns.
pub fn dispatch(code: &[u8], base: u64, nr: u32, is_fentry: &dyn Fn(u64) -> bool) -> Option<u64> {
    let end = base.checked_add(code.len() as u64)?;
    let inside = |a: u64| a >= base && a < end;
    let (mut at, mut last_cmp) = (base, None);
    for _ in 0..MAX_STEPS {
        let (insn, len) = decode(code, base, at)?;
        let next = at + len;
        at = match insn {
            Insn::Nop => next,
            Insn::CmpEsi(imm) => {
                last_cmp = Some(imm);
                next
            }
            Insn::Jcc(cc, t) => {
                if holds(cc, nr, last_cmp?)? {
                    t
                } else {
                    next
                }
            }
            Insn::Jmp(t) if inside(t) => t,
            Insn::Jmp(t) => return Some(t),
            Insn::Call(t) if is_fentry(t) => next,
            Insn::Call(t) if !inside(t) => return Some(t),
            Insn::Call(_) => return None,
        };
        if !inside(at) {
            return None;
        }
    }
    None
}

fn compat_name(sym: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|p| sym.strip_prefix(p))
}

/// Recovers the compat syscall table from `ia32_sys_call`'s code in the
/// image (empty when the kernel has no such function). Argument metadata:
/// `meta` maps a syscall name to the native declaration's arguments.
pub fn recover(
    data: &[u8],
    space: &AddressSpace,
    syms: &KernelSymbols,
    meta: &HashMap<String, Vec<SyscallArg>>,
) -> SyscallTable {
    let Some(base) = syms.addr("ia32_sys_call") else {
        return SyscallTable::default();
    };
    let size = syms.size_of("ia32_sys_call").unwrap_or(0);
    if size == 0 || size > MAX_FUNC {
        return SyscallTable::default();
    }
    let Some(code) = space.read(data, base, size as usize) else {
        return SyscallTable::default();
    };
    let fentry = syms.addr("__fentry__");
    let is_fentry = |t: u64| Some(t) == fentry;
    let mut entries = Vec::new();
    for nr in 0..MAX_COMPAT_NR {
        let Some(target) = dispatch(code, base, nr, &is_fentry) else {
            continue;
        };
        // aliases share the address (`__do_sys_getpid`, `__x64_sys_getpid`)
        let Some((sym, name)) = syms
            .at(target)
            .iter()
            .find_map(|s| Some((s, compat_name(&s.name)?)))
        else {
            continue;
        };
        if name == "ni_syscall" {
            continue;
        }
        entries.push(Syscall {
            nr,
            name: name.to_string(),
            handler: target,
            handler_symbol: sym.name.clone(),
            args: meta.get(name).cloned(),
        });
    }
    SyscallTable { entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xffff_ffff_8100_5630;

    fn rel32(from_end: u64, to: u64) -> [u8; 4] {
        (to.wrapping_sub(from_end) as i32).to_le_bytes()
    }

    /// A dispatcher in the kernel's shape: endbr64, call __fentry__, then
    /// nr == 3 -> A; nr > 3: nr == 200 (imm32) -> B, else (jne) -> NI;
    /// nr < 3: nr == 1 -> call C (noreturn); else -> NI.
    fn sample() -> Vec<u8> {
        let (a, b, c, ni, fentry) = (0x1000u64, 0x2000, 0x3000, 0x4000, 0x5000);
        let t = |x: u64| BASE + 0x10_0000 + x;
        let mut v: Vec<u8> = vec![0xf3, 0x0f, 0x1e, 0xfa]; // endbr64
        v.push(0xe8); // call __fentry__
        let e = BASE + v.len() as u64 + 4;
        v.extend(rel32(e, t(fentry)));
        v.extend([0x83, 0xfe, 0x03]); // cmp $3,%esi
        v.extend([0x0f, 0x84]); // je rel32 -> jmp A (at L_A)
        let je_a = v.len();
        v.extend([0; 4]);
        v.extend([0x76, 0x00]); // jbe rel8 -> L_LOW (patched)
        let jbe = v.len() - 1;
        v.extend([0x81, 0xfe, 200, 0, 0, 0]); // cmp $200,%esi
        v.extend([0x75, 0x05]); // jne +5 -> jmp NI
        v.push(0xe9); // jmp B
        let e = BASE + v.len() as u64 + 4;
        v.extend(rel32(e, t(b)));
        let l_ni = v.len();
        v.push(0xe9); // jmp NI
        let e = BASE + v.len() as u64 + 4;
        v.extend(rel32(e, t(ni)));
        let l_low = v.len();
        v[jbe] = (l_low - (jbe + 1)) as u8;
        v.extend([0x83, 0xfe, 0x01]); // cmp $1,%esi
        v.extend([0x75, (l_ni as isize - (v.len() as isize + 2)) as u8]); // jne NI
        v.push(0xe8); // call C
        let e = BASE + v.len() as u64 + 4;
        v.extend(rel32(e, t(c)));
        let l_a = v.len();
        let e = BASE + je_a as u64 + 4;
        v[je_a..je_a + 4].copy_from_slice(&rel32(e, BASE + l_a as u64));
        v.extend([0x0f, 0x1f, 0x44, 0x00, 0x00]); // nopl
        v.push(0xe9); // jmp A
        let e = BASE + v.len() as u64 + 4;
        v.extend(rel32(e, t(a)));
        v.extend([0xcc; 4]);
        v
    }

    #[test]
    fn runs_the_compare_tree() {
        let code = sample();
        let t = |x: u64| BASE + 0x10_0000 + x;
        let fentry = |x: u64| x == t(0x5000);
        let go = |nr| dispatch(&code, BASE, nr, &fentry);
        assert_eq!(go(3), Some(t(0x1000)));
        assert_eq!(go(200), Some(t(0x2000)));
        assert_eq!(go(1), Some(t(0x3000)));
        for nr in [0, 2, 4, 199, 201, u32::MAX] {
            assert_eq!(go(nr), Some(t(0x4000)), "nr {nr}");
        }
        // without knowing __fentry__, the entry's call ends every run there
        assert_eq!(dispatch(&code, BASE, 3, &|_| false), Some(t(0x5000)));
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let code = sample();
        for cut in 0..code.len() {
            let _ = dispatch(&code[..cut], BASE, 3, &|_| false);
        }
        let mut x = 0x9e37_79b9u32;
        for _ in 0..200 {
            let g: Vec<u8> = (0..512)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for nr in [0, 5, 300] {
                let _ = dispatch(&g, BASE, nr, &|_| false);
            }
        }
        // a loop onto itself ends at the step bound
        assert_eq!(dispatch(&[0xeb, 0xfe], BASE, 0, &|_| false), None);
        // a conditional jump with no compare before it: nothing
        assert_eq!(dispatch(&[0x74, 0x00, 0xc3], BASE, 0, &|_| false), None);
        assert_eq!(dispatch(&[], BASE, 0, &|_| false), None);
        assert_eq!(dispatch(&[0x0f], u64::MAX - 1, 0, &|_| false), None);
    }
}
