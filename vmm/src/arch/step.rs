//! Stepping over a software breakpoint by emulating the instruction it
//! covers, so the int3 never leaves guest memory and other vCPUs cannot run
//! past it unseen. A pure function of the instruction bytes and the
//! registers: it returns the new registers and at most one memory write,
//! which the caller performs through the guest's page tables.
//!
//! Exactly these instructions (64-bit code) are emulated; any other answers
//! `None` and the caller single-steps the real instruction instead:
//!
//! | bytes | instruction | effect |
//! |---|---|---|
//! | `90` | `nop` | RIP += 1 |
//! | `66 90` | `xchg ax,ax` (2-byte NOP) | RIP += 2 |
//! | `[66/2e/3e]* 0f 1f /0` | `nopw/nopl r/m` (any ModRM, SIB, displacement; ≤ 15 bytes) | RIP += length (nothing is accessed) |
//! | `f3 0f 1e fa` | `endbr64` | RIP += 4 |
//! | `50+r`, `41 50+r` | `push r64` | RSP −= 8, store the register (old RSP for `push rsp`) at the new RSP, RIP += 1 or 2 |
//! | `48 89 e5`, `48 8b ec` | `mov %rsp,%rbp` | RBP = RSP, RIP += 3 |
//! | `31 /r`, `33 /r` with both operands one register | `xor %r32,%r32` (zeroing) | the 64-bit register = 0, flags as below, RIP += 2 |
//! | `b8+r id`, `41 b8+r id` | `mov $imm32,%r32` | the 64-bit register = the immediate zero-extended, RIP += 5 or 6 |
//!
//! With RFLAGS.TF set (the guest single-steps itself) nothing is emulated:
//! the #DB it expects after the instruction must come from the CPU.
//! Flags are untouched by every instruction of the set but the zeroing
//! `xor`, which leaves ZF and PF set and CF, OF and SF clear (AF, which
//! the SDM leaves undefined, as it was). It follows the `push` of
//! `__sysvec_apic_timer_interrupt`'s trap site: emulating the pair spares
//! every timer interrupt the single-step fallback (all vCPUs paused).
//! The `mov` of an immediate is the trap site of `raise_softirq`,
//! `raise_softirq_irqoff` (every timer tick), `__tasklet_schedule_common`
//! and `wake_up_new_task` on Debian's 6.1.

use kvm_bindings::kvm_regs;

/// The longest x86 instruction.
pub const MAX_INSN: usize = 15;

/// An instruction of the emulated set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepInsn {
    /// A NOP of this many bytes (`90`, `66 90`, `0f 1f /0` forms).
    Nop(u8),
    /// `endbr64`.
    Endbr64,
    /// `push r64` (register number 0..16, in ModRM order: 0 = rax, 4 = rsp,
    /// 8 = r8); `len` is 1 or 2 (with REX.B).
    Push {
        /// Register number.
        reg: u8,
        /// Instruction length.
        len: u8,
    },
    /// `mov %rsp,%rbp`.
    MovRspRbp,
    /// `xor %r32,%r32` of one register (0..8, no REX) with itself.
    XorZero {
        /// Register number.
        reg: u8,
    },
    /// `mov $imm32,%r32` (register 0..16; `len` 5, or 6 with REX.B).
    MovImm32 {
        /// Register number.
        reg: u8,
        /// The immediate.
        imm: u32,
        /// Instruction length.
        len: u8,
    },
}

impl StepInsn {
    /// Instruction length in bytes.
    pub fn length(self) -> u8 {
        match self {
            StepInsn::Nop(n) => n,
            StepInsn::Endbr64 => 4,
            StepInsn::Push { len, .. } => len,
            StepInsn::MovRspRbp => 3,
            StepInsn::XorZero { .. } => 2,
            StepInsn::MovImm32 { len, .. } => len,
        }
    }

    /// True if emulating it writes guest memory or reads RSP-relative
    /// state (needs the page walk and 64-bit mode confirmed).
    pub fn needs_long_mode(self) -> bool {
        matches!(
            self,
            StepInsn::Push { .. }
                | StepInsn::MovRspRbp
                | StepInsn::XorZero { .. }
                | StepInsn::MovImm32 { .. }
        )
    }
}

/// Length of a `0f 1f /0` NOP starting at `b[0] == 0x0f` (ModRM, SIB and
/// displacement), or `None` if it is not one.
fn nopl_len(b: &[u8]) -> Option<usize> {
    if b.len() < 3 || b[0] != 0x0f || b[1] != 0x1f {
        return None;
    }
    let modrm = b[2];
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if reg != 0 {
        return None;
    }
    let mut len = 3;
    if md != 3 && rm == 4 {
        let sib = *b.get(3)?;
        len += 1;
        if md == 0 && sib & 7 == 5 {
            len += 4;
        }
    }
    len += match (md, rm) {
        (0, 5) => 4,
        (1, _) => 1,
        (2, _) => 4,
        _ => 0,
    };
    (len <= b.len()).then_some(len)
}

/// Decodes the instruction at the start of `bytes` if it is in the
/// emulated set. `bytes` may be shorter than 15 (e.g. cut at a page end):
/// an instruction that does not fit in it is not decoded.
pub fn decode(bytes: &[u8]) -> Option<StepInsn> {
    match bytes {
        [0x90, ..] => return Some(StepInsn::Nop(1)),
        [0x66, 0x90, ..] => return Some(StepInsn::Nop(2)),
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => return Some(StepInsn::Endbr64),
        [b @ 0x50..=0x57, ..] => {
            return Some(StepInsn::Push {
                reg: b - 0x50,
                len: 1,
            })
        }
        [0x41, b @ 0x50..=0x57, ..] => {
            return Some(StepInsn::Push {
                reg: b - 0x50 + 8,
                len: 2,
            })
        }
        [0x48, 0x89, 0xe5, ..] | [0x48, 0x8b, 0xec, ..] => return Some(StepInsn::MovRspRbp),
        // ModRM 11 reg reg with the same register twice.
        [0x31 | 0x33, m, ..] if m >> 6 == 3 && (m >> 3) & 7 == m & 7 => {
            return Some(StepInsn::XorZero { reg: m & 7 })
        }
        [b @ 0xb8..=0xbf, i0, i1, i2, i3, ..] => {
            return Some(StepInsn::MovImm32 {
                reg: b - 0xb8,
                imm: u32::from_le_bytes([*i0, *i1, *i2, *i3]),
                len: 5,
            })
        }
        [0x41, b @ 0xb8..=0xbf, i0, i1, i2, i3, ..] => {
            return Some(StepInsn::MovImm32 {
                reg: b - 0xb8 + 8,
                imm: u32::from_le_bytes([*i0, *i1, *i2, *i3]),
                len: 6,
            })
        }
        _ => {}
    }
    let prefixes = bytes
        .iter()
        .take_while(|b| matches!(b, 0x66 | 0x2e | 0x3e))
        .count();
    let n = prefixes + nopl_len(&bytes[prefixes..])?;
    (n <= MAX_INSN).then_some(StepInsn::Nop(n as u8))
}

/// Register `reg` (ModRM order) of `r`.
pub fn reg64(r: &kvm_regs, reg: u8) -> u64 {
    match reg {
        0 => r.rax,
        1 => r.rcx,
        2 => r.rdx,
        3 => r.rbx,
        4 => r.rsp,
        5 => r.rbp,
        6 => r.rsi,
        7 => r.rdi,
        8 => r.r8,
        9 => r.r9,
        10 => r.r10,
        11 => r.r11,
        12 => r.r12,
        13 => r.r13,
        14 => r.r14,
        _ => r.r15,
    }
}

/// Sets register `reg` (ModRM order) of `r`.
pub(crate) fn set_reg64(r: &mut kvm_regs, reg: u8, v: u64) {
    let slot = match reg {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    };
    *slot = v;
}

/// RFLAGS bits a zeroing `xor` clears (CF, SF, OF) and sets (PF, ZF).
const XOR_CLEARS: u64 = 1 | (1 << 7) | (1 << 11);
const XOR_SETS: u64 = (1 << 2) | (1 << 6);

/// The result of emulating one instruction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stepped {
    /// Registers after the instruction.
    pub regs: kvm_regs,
    /// A store the instruction makes: (guest-virtual address, 8 bytes).
    pub write: Option<(u64, [u8; 8])>,
}

/// RFLAGS.TF.
const TF: u64 = 1 << 8;

/// Emulates `insn` on `regs` (RIP at the instruction).
pub fn emulate(insn: StepInsn, regs: &kvm_regs) -> Option<Stepped> {
    if regs.rflags & TF != 0 {
        return None;
    }
    let mut r = *regs;
    r.rip = regs.rip.wrapping_add(u64::from(insn.length()));
    let mut write = None;
    match insn {
        StepInsn::Nop(_) | StepInsn::Endbr64 => {}
        StepInsn::Push { reg, .. } => {
            let value = reg64(regs, reg);
            r.rsp = regs.rsp.wrapping_sub(8);
            write = Some((r.rsp, value.to_le_bytes()));
        }
        StepInsn::MovRspRbp => r.rbp = regs.rsp,
        StepInsn::XorZero { reg } => {
            // A 32-bit result zero-extends: the whole register is 0.
            set_reg64(&mut r, reg, 0);
            r.rflags = (regs.rflags & !XOR_CLEARS) | XOR_SETS;
        }
        // A 32-bit destination zero-extends; flags are untouched.
        StepInsn::MovImm32 { reg, imm, .. } => set_reg64(&mut r, reg, u64::from(imm)),
    }
    Some(Stepped { regs: r, write })
}

/// [`decode`] then [`emulate`].
pub fn step_over(bytes: &[u8], regs: &kvm_regs) -> Option<Stepped> {
    emulate(decode(bytes)?, regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> kvm_regs {
        kvm_regs {
            rax: 0xa,
            rcx: 0xc,
            rbp: 0xb0,
            rsp: 0xffff_c900_0001_3f58,
            r15: 0xf15,
            rip: 0xffff_ffff_8100_1000,
            rflags: 0x246,
            ..Default::default()
        }
    }

    #[test]
    fn the_nop_family_advances_rip_only() {
        let cases: &[(&[u8], u8)] = &[
            (&[0x90], 1),
            (&[0x66, 0x90], 2),
            (&[0x0f, 0x1f, 0x00], 3),
            (&[0x0f, 0x1f, 0x40, 0x00], 4),
            // ftrace's patched-out `call __fentry__`, static-branch NOP.
            (&[0x0f, 0x1f, 0x44, 0x00, 0x00], 5),
            (&[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00], 6),
            (&[0x0f, 0x1f, 0x80, 0, 0, 0, 0], 7),
            (&[0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], 8),
            (&[0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], 9),
            (&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], 10),
            // 6.12's poisoned endbr64 (`nopl -0x2a(%rax)`).
            (&[0x0f, 0x1f, 0x40, 0xd6], 4),
            // RIP-relative and SIB-with-disp32 forms, register form.
            (&[0x0f, 0x1f, 0x05, 1, 2, 3, 4], 7),
            (&[0x0f, 0x1f, 0x04, 0x25, 1, 2, 3, 4], 8),
            (&[0x0f, 0x1f, 0xc0], 3),
        ];
        for &(b, n) in cases {
            let mut bytes = b.to_vec();
            bytes.extend_from_slice(&[0xcc; 8]);
            assert_eq!(decode(&bytes), Some(StepInsn::Nop(n)), "{b:02x?}");
            let s = step_over(&bytes, &regs()).unwrap();
            let mut want = regs();
            want.rip += u64::from(n);
            assert_eq!(
                s,
                Stepped {
                    regs: want,
                    write: None
                },
                "{b:02x?}"
            );
        }
    }

    #[test]
    fn endbr64_push_and_frame_setup() {
        let r = regs();
        let s = step_over(&[0xf3, 0x0f, 0x1e, 0xfa, 0xe8], &r).unwrap();
        assert_eq!((s.regs.rip, s.write), (r.rip + 4, None));

        // push %rbp (do_syscall_64 on 6.1)
        let s = step_over(&[0x55, 0x48, 0x89, 0xe5], &r).unwrap();
        assert_eq!(s.regs.rip, r.rip + 1);
        assert_eq!(s.regs.rsp, r.rsp - 8);
        assert_eq!(s.write, Some((r.rsp - 8, 0xb0u64.to_le_bytes())));
        // push %r15 (__switch_to)
        let s = step_over(&[0x41, 0x57], &r).unwrap();
        assert_eq!((s.regs.rip, s.regs.rsp), (r.rip + 2, r.rsp - 8));
        assert_eq!(s.write, Some((r.rsp - 8, 0xf15u64.to_le_bytes())));
        // push %rsp stores the value before the decrement
        let s = step_over(&[0x54], &r).unwrap();
        assert_eq!(s.write, Some((r.rsp - 8, r.rsp.to_le_bytes())));
        // push %rcx, push %r8 register numbering
        assert_eq!(decode(&[0x51]), Some(StepInsn::Push { reg: 1, len: 1 }));
        assert_eq!(
            decode(&[0x41, 0x50]),
            Some(StepInsn::Push { reg: 8, len: 2 })
        );
        // everything else is untouched
        let mut same = s.regs;
        same.rip = r.rip;
        same.rsp = r.rsp;
        assert_eq!(same, r);

        for b in [[0x48, 0x89, 0xe5], [0x48, 0x8b, 0xec]] {
            let s = step_over(&b, &r).unwrap();
            assert_eq!((s.regs.rip, s.regs.rbp, s.write), (r.rip + 3, r.rsp, None));
        }
    }

    #[test]
    fn zeroing_xor_clears_the_register_and_sets_the_flags_a_cpu_sets() {
        // __sysvec_apic_timer_interrupt's site: push %rbp; xor %esi,%esi.
        let mut r = regs();
        r.rsi = 0xffff_ffff_dead_beef;
        // CF, SF and OF set, ZF and PF clear beforehand; IF and AF kept.
        r.rflags = 0x202 | 1 | (1 << 4) | (1 << 7) | (1 << 11);
        let s = step_over(&[0x31, 0xf6], &r).unwrap();
        assert_eq!(s.regs.rsi, 0);
        assert_eq!(s.regs.rflags, 0x202 | (1 << 4) | (1 << 2) | (1 << 6));
        assert_eq!((s.regs.rip, s.write), (r.rip + 2, None));
        let mut same = s.regs;
        same.rsi = r.rsi;
        same.rflags = r.rflags;
        same.rip = r.rip;
        assert_eq!(same, r);
        // Both encodings, every legacy register.
        assert_eq!(decode(&[0x33, 0xc0]), Some(StepInsn::XorZero { reg: 0 }));
        assert_eq!(decode(&[0x31, 0xff]), Some(StepInsn::XorZero { reg: 7 }));
        // The pair the trap covers decodes as push then xor.
        assert_eq!(decode(&[0x55]), Some(StepInsn::Push { reg: 5, len: 1 }));
    }

    #[test]
    fn mov_of_an_immediate_sets_the_whole_register_and_nothing_else() {
        // raise_softirq_irqoff's site on Debian's 6.1: mov $0x...,%ebx.
        let mut r = regs();
        r.rbx = 0xffff_ffff_dead_beef;
        let s = step_over(&[0xbb, 0x78, 0x56, 0x34, 0x92, 0xcc], &r).unwrap();
        assert_eq!(s.regs.rbx, 0x9234_5678, "zero-extended, not sign-extended");
        assert_eq!((s.regs.rip, s.write), (r.rip + 5, None));
        let mut same = s.regs;
        same.rbx = r.rbx;
        same.rip = r.rip;
        assert_eq!(same, r, "flags and every other register untouched");
        // With REX.B: mov $7,%r12d.
        r.r12 = u64::MAX;
        let s = step_over(&[0x41, 0xbc, 7, 0, 0, 0], &r).unwrap();
        assert_eq!((s.regs.r12, s.regs.rip), (7, r.rip + 6));
        assert_eq!(
            decode(&[0xb8, 1, 0, 0, 0]),
            Some(StepInsn::MovImm32 {
                reg: 0,
                imm: 1,
                len: 5
            })
        );
        // The same bytes as iced-x86 reads them.
        for b in [
            &[0xbb, 0x78, 0x56, 0x34, 0x92][..],
            &[0x41, 0xbc, 7, 0, 0, 0],
        ] {
            let i = iced_x86::Decoder::new(64, b, 0).decode();
            assert_eq!(i.code(), iced_x86::Code::Mov_r32_imm32, "{b:02x?}");
            assert_eq!(usize::from(decode(b).unwrap().length()), i.len());
        }
    }

    #[test]
    fn anything_else_is_not_emulated() {
        let r = regs();
        for b in [
            &[0xe8, 0, 0, 0, 0][..],               // call __fentry__ (not patched yet)
            &[0x0f, 0x1f, 0x48, 0x00],             // 0f 1f /1 is not a NOP
            &[0x0f, 0x1f, 0x44, 0x00],             // cut short
            &[0x0f, 0x1f],                         // cut short
            &[0x66],                               // cut short
            &[0x48, 0x89, 0xe7],                   // mov %rsp,%rdi
            &[0x48, 0x83, 0xec, 0x08],             // sub $8,%rsp
            &[0xf3, 0x90],                         // pause
            &[0x41, 0x90],                         // xchg %eax,%r8d
            &[0x66, 0x50],                         // push %ax (16-bit)
            &[0x31, 0xc8],                         // xor %ecx,%eax (two registers)
            &[0x31, 0x00],                         // xor %eax,(%rax)
            &[0x45, 0x31, 0xc0],                   // xor %r8d,%r8d (REX: not in the set)
            &[0xbb, 3, 0, 0],                      // mov $imm32,%ebx cut short
            &[0x48, 0xc7, 0xc0, 1, 0, 0, 0],       // mov $imm32,%rax (sign-extending)
            &[0x49, 0xbc, 1, 0, 0, 0, 0, 0, 0, 0], // movabs $imm64,%r12
            &[0xc3],                               // ret
            &[0xcc],                               // int3
            &[
                0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x0f, 0x1f,
                0x84, 0, 0, 0, 0, 0,
            ], // > 15 bytes
            &[],
        ] {
            assert_eq!(step_over(b, &r), None, "{b:02x?}");
        }
        // The guest single-steps itself: the CPU must run it.
        let mut tf = r;
        tf.rflags |= TF;
        assert_eq!(step_over(&[0x90], &tf), None);
    }
}
