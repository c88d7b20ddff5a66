//! Where a software trap for a probe may go: a pure analysis of the
//! function's code as the running kernel has it (after its boot-time
//! patching), decoded from the function's start with `iced-x86`.
//!
//! A probe names an address (a function's entry, or a tracepoint's
//! static-branch NOP). The trap covers whole instructions from the first
//! one there that is safe to change:
//!
//! - leading `endbr64` and NOPs are skipped, never covered: a NOP may be a
//!   site the kernel patches at run time (ftrace's `__fentry__` NOP, a
//!   static branch, a static call to nothing), and it compares the bytes
//!   it expects before patching. Both change no state, so the state at
//!   the trap is the state at the probe;
//! - the covered instructions (as many as the trap's bytes need: 1 for
//!   int3, 2 for `out %al,$imm8`) each fall through to the next (no call:
//!   static calls are patched; no branch; no `lock`, which the kernel may
//!   patch on a CPU going on- or offline);
//! - no branch in the function lands on a covered instruction (it would
//!   hit the trap without passing the probe, or jump into its bytes),
//!   except on the probe address itself, and except branches from code
//!   the caller names (a static branch's out-of-line block, which jumps
//!   back behind its NOP when the guest turns its tracepoint on: a pass
//!   through the tracepoint all the same).
//!
//! A function that does not decode cleanly up to the probe (the probe is
//! not an instruction boundary) gets no trap.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Mnemonic};

/// The covered instructions of a trap site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrapSite {
    /// Address of the first covered instruction (the trap's address).
    pub addr: u64,
    /// Lengths of the covered instructions (their sum is at least the
    /// trap's length).
    pub lengths: Vec<u8>,
    /// The covered instructions by iced-x86's code name (`Mov_r64_rm64`).
    pub names: Vec<String>,
}

impl TrapSite {
    /// Bytes covered.
    pub fn covered(&self) -> u64 {
        self.lengths.iter().map(|&l| u64::from(l)).sum()
    }
}

/// Why a probe gets no trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoSite {
    #[error("the probe address is outside the function's code")]
    OutsideFunction,
    #[error("the function does not decode to an instruction at the probe address")]
    NotAnInstruction,
    #[error("only NOPs and endbr64 before the function's code ends")]
    NothingToCover,
    #[error("the instruction there is a call, branch or lock-prefixed")]
    NotFallThrough,
    #[error("a branch in the function lands on the instructions the trap would cover")]
    BranchTarget,
}

/// Leading instructions skipped at most (endbr64, then a NOP).
const MAX_SKIPPED: usize = 3;

fn is_skippable(insn: &iced_x86::Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Nop | Mnemonic::Endbr64)
}

fn falls_through(insn: &iced_x86::Instruction) -> bool {
    insn.flow_control() == FlowControl::Next
        && !insn.has_lock_prefix()
        && !is_skippable(insn)
        && insn.code() != Code::INVALID
}

/// Chooses the trap site for a probe at `probe` in the function whose code
/// (`code`, as the running kernel has it) starts at `func`; `trap_len` is
/// the number of bytes the trap writes; branches from `ignored` do not
/// count as landing on the trap.
pub fn choose(
    code: &[u8],
    func: u64,
    probe: u64,
    trap_len: u64,
    ignored: &[std::ops::Range<u64>],
) -> Result<TrapSite, NoSite> {
    let end = func.wrapping_add(code.len() as u64);
    if probe < func || probe >= end {
        return Err(NoSite::OutsideFunction);
    }
    let mut decoder = Decoder::with_ip(64, code, func, DecoderOptions::NONE);
    let mut insns = Vec::with_capacity(code.len() / 4);
    let mut targets = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            // Padding or data after the last instruction ends the sweep.
            break;
        }
        match insn.flow_control() {
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                let t = insn.near_branch_target();
                let from_ignored = ignored.iter().any(|r| r.contains(&insn.ip()));
                if t >= func && t < end && !from_ignored {
                    targets.push(t);
                }
            }
            _ => {}
        }
        insns.push(insn);
    }
    let Some(first) = insns.iter().position(|i| i.ip() == probe) else {
        return Err(NoSite::NotAnInstruction);
    };
    let mut at = first;
    while at < insns.len() && at - first < MAX_SKIPPED && is_skippable(&insns[at]) {
        at += 1;
    }
    if at >= insns.len() {
        return Err(NoSite::NothingToCover);
    }
    let mut lengths = Vec::new();
    let mut names = Vec::new();
    let mut covered = 0u64;
    for insn in &insns[at..] {
        if covered >= trap_len {
            break;
        }
        if !falls_through(insn) {
            return Err(NoSite::NotFallThrough);
        }
        lengths.push(insn.len() as u8);
        names.push(format!("{:?}", insn.code()));
        covered += insn.len() as u64;
    }
    if covered < trap_len {
        return Err(NoSite::NothingToCover);
    }
    let addr = insns[at].ip();
    let hit = |t: u64| t != probe && t >= addr && t < addr + covered;
    if targets.iter().any(|&t| hit(t)) {
        return Err(NoSite::BranchTarget);
    }
    Ok(TrapSite {
        addr,
        lengths,
        names,
    })
}

/// Whether the function whose code starts at `func` decodes, from its
/// start, to a near `call` of `callee` at `at` (a byte scan's candidate
/// call proven to be one).
pub fn call_at(code: &[u8], func: u64, at: u64, callee: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, func, DecoderOptions::NONE);
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() || insn.ip() > at {
            return false;
        }
        if insn.ip() == at {
            return insn.flow_control() == FlowControl::Call && insn.near_branch_target() == callee;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u64 = 0xffff_ffff_8110_0000;

    /// 6.1's try_to_wake_up: `nopl 0(%rax,%rax)` (ftrace), `push %r15`, ...
    const TTWU_6_1: &[u8] = &[
        0x0f, 0x1f, 0x44, 0x00, 0x00, // nop5 (__fentry__)
        0x41, 0x57, // push %r15
        0x41, 0x56, // push %r14
        0x49, 0x89, 0xfe, // mov %rdi,%r14
        0xc3, // ret
    ];

    #[test]
    fn skips_ftrace_nop_and_endbr64() {
        assert_eq!(
            choose(TTWU_6_1, F, F, 2, &[]),
            Ok(TrapSite {
                addr: F + 5,
                lengths: vec![2],
                names: vec!["Push_r64".into()],
            })
        );
        // int3 needs one byte: the same instruction.
        assert_eq!(choose(TTWU_6_1, F, F, 1, &[]).unwrap().addr, F + 5);
        // 6.12: endbr64, nop5, push %rbp, mov %rsp,%rbp
        let f612 = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5, 0xc3,
        ];
        assert_eq!(
            choose(&f612, F, F, 2, &[]),
            Ok(TrapSite {
                addr: F + 9,
                lengths: vec![1, 3],
                names: vec!["Push_r64".into(), "Mov_rm64_r64".into()],
            }),
            "a 1-byte push is covered together with the next instruction"
        );
    }

    #[test]
    fn a_static_branch_site_is_skipped_too() {
        // mov %rbx,%rdi; nop2 (jump label); mov 0x18(%rbx),%eax; ret
        let code = [0x48, 0x89, 0xdf, 0x66, 0x90, 0x8b, 0x43, 0x18, 0xc3];
        assert_eq!(
            choose(&code, F, F + 3, 2, &[]),
            Ok(TrapSite {
                addr: F + 5,
                lengths: vec![3],
                names: vec!["Mov_r32_rm32".into()],
            })
        );
    }

    #[test]
    fn refuses_calls_branches_and_lock() {
        // nop5; call rel32
        let call = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0xe8, 1, 2, 3, 4, 0xc3];
        assert_eq!(choose(&call, F, F, 2, &[]), Err(NoSite::NotFallThrough));
        // push %rbp (1 byte) then jmp: the pair would cover a branch
        let jmp = [0x55, 0xeb, 0x00, 0xc3];
        assert_eq!(choose(&jmp, F, F, 2, &[]), Err(NoSite::NotFallThrough));
        assert_eq!(choose(&jmp, F, F, 1, &[]).unwrap().addr, F);
        // lock incl (%rdi)
        let lock = [0xf0, 0xff, 0x07, 0xc3];
        assert_eq!(choose(&lock, F, F, 2, &[]), Err(NoSite::NotFallThrough));
    }

    #[test]
    fn refuses_a_site_a_branch_lands_on() {
        // 0: nop2 (site); 2: mov %edi,%eax; 4: dec %eax; 6: jne 2; 8: ret
        let code = [0x66, 0x90, 0x89, 0xf8, 0xff, 0xc8, 0x75, 0xfa, 0xc3];
        assert_eq!(choose(&code, F, F, 2, &[]), Err(NoSite::BranchTarget));
        // 0: push %rbp; 1: mov %edi,%eax; 3: jne 1 — lands inside the pair
        let inner = [0x55, 0x89, 0xf8, 0x75, 0xfc, 0xc3];
        assert_eq!(choose(&inner, F, F, 2, &[]), Err(NoSite::BranchTarget));
        // a branch back to the probe address itself is a real new pass
        let back = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0x41, 0x57, 0xeb, 0xf7];
        assert_eq!(choose(&back, F, F, 2, &[]).unwrap().addr, F + 5);
    }

    #[test]
    fn the_out_of_line_blocks_jump_back_is_ignored() {
        // 0: nop2 (jump label); 2: mov 0x18(%rbx),%eax; 5: ret;
        // 6: block: call rel32; 11: jmp 2
        let code = [
            0x66, 0x90, 0x8b, 0x43, 0x18, 0xc3, 0xe8, 0, 0, 0, 0, 0xeb, 0xf5,
        ];
        assert_eq!(choose(&code, F, F, 2, &[]), Err(NoSite::BranchTarget));
        let block = std::slice::from_ref(&(F + 6..F + 6 + 96));
        assert_eq!(choose(&code, F, F, 2, block).unwrap().addr, F + 2);
    }

    #[test]
    fn the_probe_must_be_an_instruction_boundary() {
        assert_eq!(
            choose(TTWU_6_1, F, F + 6, 2, &[]),
            Err(NoSite::NotAnInstruction)
        );
        assert_eq!(
            choose(TTWU_6_1, F, F - 1, 2, &[]),
            Err(NoSite::OutsideFunction)
        );
        assert_eq!(
            choose(TTWU_6_1, F, F + 100, 2, &[]),
            Err(NoSite::OutsideFunction)
        );
        // only NOPs, then the code ends
        assert_eq!(
            choose(&[0x90, 0x90], F, F, 2, &[]),
            Err(NoSite::NothingToCover)
        );
    }

    #[test]
    fn a_scanned_call_is_proven_by_decoding() {
        // 0: mov $0xe8,%eax (b8 e8 00 00 00: an e8 inside an immediate);
        // 5: call F+0x20; 10: ret
        let code = [0xb8, 0xe8, 0, 0, 0, 0xe8, 0x16, 0, 0, 0, 0xc3];
        assert!(call_at(&code, F, F + 5, F + 0x20));
        assert!(!call_at(&code, F, F + 5, F + 0x21), "another callee");
        assert!(
            !call_at(&code, F, F + 1, F + 1 + 5),
            "not an instruction start"
        );
        // the return site then takes a trap like a probe address
        assert_eq!(
            choose(&code, F, F + 10, 1, &[]),
            Err(NoSite::NotFallThrough)
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut code = [0u8; 64];
            for b in &mut code {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let probe = F + (x % 70);
            if let Ok(s) = choose(&code, F, probe, 2, &[]) {
                assert!(s.covered() >= 2 && s.addr >= probe);
                assert!(s.addr + s.covered() <= F + 64);
            }
        }
    }
}
