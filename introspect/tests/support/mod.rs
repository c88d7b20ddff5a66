//! What the fuzz tests share: a PRNG, a guest whose memory is a hash of
//! its addresses (some pages unmapped), and a kernel with random offsets.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::HashMap;

use introspect::decode::SiteArg;
use introspect::kernel::Kernel;
use introspect::plan::Offsets;
use introspect::{MemError, ProbeKind, Reg, VcpuContext};

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Guest memory whose every byte is a hash of its address and a seed;
/// pages whose hash says so are unmapped. Counts reads.
pub struct RandomGuest {
    pub seed: u64,
    pub regs: [u64; Reg::ALL.len()],
    pub reads: Cell<u64>,
    pub overrides: HashMap<u64, u8>,
}

pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

impl VcpuContext for RandomGuest {
    fn read_reg(&self, reg: Reg) -> u64 {
        self.regs[reg as usize]
    }
    fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get() + 1);
        for (i, b) in buf.iter_mut().enumerate() {
            let a = va.wrapping_add(i as u64);
            if mix((a >> 12) ^ self.seed) % 4 == 0 {
                return Err(MemError::Unmapped(a));
            }
            *b = match self.overrides.get(&a) {
                Some(v) => *v,
                None => mix(a ^ self.seed.rotate_left(7)) as u8,
            };
        }
        Ok(())
    }
    fn read_phys(&self, _pa: u64, _buf: &mut [u8]) -> Result<(), MemError> {
        Err(MemError::Unsupported)
    }
    fn vcpu_index(&self) -> u32 {
        0
    }
}

pub fn kernel(rng: &mut Rng) -> Kernel {
    let mut small = || rng.next() % 4096;
    Kernel {
        page_offset_base: 0,
        slide: 0,
        init_task: 0xffff_ffff_8200_0000 | (small() << 3),
        off: Offsets {
            task_pid: small(),
            task_tgid: small(),
            task_comm: small(),
            task_prio: small(),
            task_state: small(),
            task_state_size: 4,
            task_real_parent: small(),
            task_tasks: small(),
            task_cpu: small(),
            percpu_current_task: small(),
            binprm_filename: small(),
            irq_desc_irq: small(),
            irq_desc_action: small(),
            irqaction_name: small(),
            task_mm: small(),
            mm_pgd: small(),
            task_stack: small(),
            thread_size: [0, 0x4000][(small() % 2) as usize],
        },
        // every statedump walk on, over the same hostile memory
        sd: introspect::statedump::StatedumpLayout {
            have: u32::MAX,
            task_files: small(),
            files_fdt: small(),
            fdt_fd: small(),
            fdt_max_fds: small(),
            mm_mt: small(),
            vma_file: small(),
            dentry_parent: small(),
            sym_sparse_irqs: 0xffff_ffff_8200_0000 | (small() << 3),
            sym_init_net: 0xffff_ffff_8200_0000 | (small() << 3),
            sym_nr_cpu_ids: 0xffff_ffff_8200_0000 | (small() << 3),
            ..Default::default()
        },
    }
}

/// Every kind of probe the decoders know.
pub const KINDS: [ProbeKind; 21] = [
    ProbeKind::SyscallEntry,
    ProbeKind::SyscallExit,
    ProbeKind::SchedSwitch,
    ProbeKind::SchedWaking,
    ProbeKind::ProcessFork,
    ProbeKind::ProcessExec,
    ProbeKind::ProcessExit,
    ProbeKind::IrqEntry,
    ProbeKind::IrqExit,
    ProbeKind::TimerEntry,
    ProbeKind::TimerExit,
    ProbeKind::Sample,
    ProbeKind::SchedWakeup {
        arg: SiteArg::Reg(Reg::Rbx),
    },
    ProbeKind::SchedWakeup {
        arg: SiteArg::Reg(Reg::R15),
    },
    ProbeKind::SchedWakeupNew {
        arg: SiteArg::Reg(Reg::Rbx),
    },
    ProbeKind::SchedWakingAt {
        arg: SiteArg::Reg(Reg::Rbp),
    },
    ProbeKind::SoftirqEntry {
        arg: SiteArg::Reg(Reg::Rdx),
    },
    ProbeKind::SoftirqExit {
        arg: SiteArg::Reg(Reg::R14),
    },
    ProbeKind::SoftirqRaise {
        arg: SiteArg::Const(6),
    },
    ProbeKind::CompatSyscallEntry,
    ProbeKind::CompatSyscallExit,
];
