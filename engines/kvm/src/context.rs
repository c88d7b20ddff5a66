//! A vCPU in a debug exit of the KVM monitor as the engine-independent
//! core sees it (`introspect::VcpuContext`).

/// One vCPU stopped in a debug exit of the KVM monitor, as the engine-
/// independent core sees it: registers read once per trap, guest-virtual
/// reads through a page walk of the guest's own tables.
pub struct KvmContext<'a, 'b> {
    ctx: &'a vmm::VcpuCtx<'b>,
    regs: vmm::kvm_regs,
    sregs: vmm::kvm_sregs,
    /// IA32_KERNEL_GS_BASE, read only when asked for (the core needs it
    /// only when GS base is not the kernel's, i.e. rarely at our probes).
    kernel_gs_base: std::cell::Cell<Option<u64>>,
}

impl<'a, 'b> KvmContext<'a, 'b> {
    /// Snapshots the registers of `ctx` (GET_REGS, GET_SREGS).
    pub fn new(ctx: &'a mut vmm::VcpuCtx<'b>) -> Result<Self, vmm::DebugError> {
        let regs = ctx.regs()?;
        let sregs = ctx.sregs()?;
        Ok(KvmContext {
            ctx,
            regs,
            sregs,
            kernel_gs_base: std::cell::Cell::new(None),
        })
    }

    /// Uses `v` as IA32_KERNEL_GS_BASE instead of reading the MSR (a
    /// vCPU's per-CPU base does not change once the kernel set it up; the
    /// MSR read allocates, which a trap must not).
    pub fn with_kernel_gs_base(self, v: Option<u64>) -> Self {
        self.kernel_gs_base.set(v);
        self
    }

    /// GS base (the kernel's per-CPU base when the vCPU is in the kernel).
    pub fn gs_base(&self) -> u64 {
        self.sregs.gs.base
    }
}

impl introspect::VcpuContext for KvmContext<'_, '_> {
    fn read_reg(&self, reg: introspect::Reg) -> u64 {
        use introspect::Reg::*;
        let (r, s) = (&self.regs, &self.sregs);
        match reg {
            Rax => r.rax,
            Rbx => r.rbx,
            Rcx => r.rcx,
            Rdx => r.rdx,
            Rsi => r.rsi,
            Rdi => r.rdi,
            Rbp => r.rbp,
            Rsp => r.rsp,
            R8 => r.r8,
            R9 => r.r9,
            R10 => r.r10,
            R11 => r.r11,
            R12 => r.r12,
            R13 => r.r13,
            R14 => r.r14,
            R15 => r.r15,
            Rip => r.rip,
            Cr0 => s.cr0,
            Cr3 => s.cr3,
            Cr4 => s.cr4,
            Efer => s.efer,
            GsBase => s.gs.base,
            KernelGsBase => match self.kernel_gs_base.get() {
                Some(v) => v,
                None => {
                    let v = self.ctx.msr(0xc000_0102).unwrap_or(0);
                    self.kernel_gs_base.set(Some(v));
                    v
                }
            },
        }
    }

    fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), introspect::MemError> {
        let la57 = self.sregs.cr4 & (1 << 12) != 0;
        let phys = |pa: u64| {
            let mut b = [0u8; 8];
            self.ctx
                .read_phys(pa, &mut b)
                .ok()
                .map(|_| u64::from_le_bytes(b))
        };
        let mut done = 0usize;
        while done < buf.len() {
            let addr = va.wrapping_add(done as u64);
            let t = introspect::paging::translate(&phys, self.sregs.cr3, addr, la57)
                .map_err(|_| introspect::MemError::Unmapped(addr))?;
            let in_page = (t.page_size - (addr & (t.page_size - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            self.read_phys(t.pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<(), introspect::MemError> {
        self.ctx
            .read_phys(pa, buf)
            .map_err(|_| introspect::MemError::OutOfRange(pa))
    }

    fn vcpu_index(&self) -> u32 {
        self.ctx.index()
    }
}
