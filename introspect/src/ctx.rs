//! What an engine hands to the core on every trap: registers and guest memory.

/// Registers the core may ask for. Engines map them to their own handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reg {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    Rsp,
    R8,
    R9,
    R10,
    R11,
    Rip,
    Cr0,
    Cr3,
    Cr4,
    Efer,
    GsBase,
    KernelGsBase,
    R12,
    R13,
    R14,
    R15,
}

impl Reg {
    /// Every register, in discriminant order.
    pub const ALL: [Reg; 23] = [
        Reg::Rax,
        Reg::Rbx,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rsi,
        Reg::Rdi,
        Reg::Rbp,
        Reg::Rsp,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::Rip,
        Reg::Cr0,
        Reg::Cr3,
        Reg::Cr4,
        Reg::Efer,
        Reg::GsBase,
        Reg::KernelGsBase,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
    ];

    /// The general register of x86 encoding number `n` (0 rax, 1 rcx,
    /// 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi, 8-15 r8-r15).
    pub fn from_x86(n: u8) -> Option<Reg> {
        const BY_NUMBER: [Reg; 16] = [
            Reg::Rax,
            Reg::Rcx,
            Reg::Rdx,
            Reg::Rbx,
            Reg::Rsp,
            Reg::Rbp,
            Reg::Rsi,
            Reg::Rdi,
            Reg::R8,
            Reg::R9,
            Reg::R10,
            Reg::R11,
            Reg::R12,
            Reg::R13,
            Reg::R14,
            Reg::R15,
        ];
        BY_NUMBER.get(usize::from(n)).copied()
    }

    /// The register's name in QEMU's gdb XML (and so in the plugin API).
    pub fn gdb_name(self) -> &'static str {
        match self {
            Reg::Rax => "rax",
            Reg::Rbx => "rbx",
            Reg::Rcx => "rcx",
            Reg::Rdx => "rdx",
            Reg::Rsi => "rsi",
            Reg::Rdi => "rdi",
            Reg::Rbp => "rbp",
            Reg::Rsp => "rsp",
            Reg::R8 => "r8",
            Reg::R9 => "r9",
            Reg::R10 => "r10",
            Reg::R11 => "r11",
            Reg::Rip => "rip",
            Reg::Cr0 => "cr0",
            Reg::Cr3 => "cr3",
            Reg::Cr4 => "cr4",
            Reg::Efer => "efer",
            Reg::GsBase => "gs_base",
            Reg::KernelGsBase => "k_gs_base",
            Reg::R12 => "r12",
            Reg::R13 => "r13",
            Reg::R14 => "r14",
            Reg::R15 => "r15",
        }
    }
}

/// Why a guest memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    #[error("guest address {0:#x} is not mapped")]
    Unmapped(u64),
    #[error("guest physical address {0:#x} is outside guest memory")]
    OutOfRange(u64),
    #[error("this engine cannot read guest memory that way")]
    Unsupported,
    #[error("guest value at {0:#x} is implausible")]
    Garbage(u64),
}

/// One vCPU, stopped at a trap, as an engine exposes it.
pub trait VcpuContext {
    /// Value of a register (0 when the engine cannot read it).
    fn read_reg(&self, reg: Reg) -> u64;
    /// Reads guest virtual memory through the vCPU's current address space.
    fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Reads guest physical memory.
    fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Index of the vCPU (0-based).
    fn vcpu_index(&self) -> u32;
}

/// Reads a little-endian u64 at a guest virtual address.
pub fn read_u64<C: VcpuContext + ?Sized>(ctx: &C, va: u64) -> Result<u64, MemError> {
    let mut b = [0u8; 8];
    ctx.read_virt(va, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Reads a little-endian u32 at a guest virtual address.
pub fn read_u32<C: VcpuContext + ?Sized>(ctx: &C, va: u64) -> Result<u32, MemError> {
    let mut b = [0u8; 4];
    ctx.read_virt(va, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads a NUL-terminated string of at most `out.len() - 1` bytes into
/// `out`, NUL-padded. Reads page by page, so a string that ends before an
/// unmapped page is still read. Returns the string length.
pub fn read_cstr<C: VcpuContext + ?Sized>(
    ctx: &C,
    va: u64,
    out: &mut [u8],
) -> Result<usize, MemError> {
    out.fill(0);
    let cap = out.len().saturating_sub(1);
    let mut done = 0usize;
    while done < cap {
        let addr = va.wrapping_add(done as u64);
        let to_page_end = (0x1000 - (addr & 0xfff)) as usize;
        let n = to_page_end.min(cap - done);
        let chunk = &mut out[done..done + n];
        if let Err(e) = ctx.read_virt(addr, chunk) {
            chunk.fill(0);
            if done == 0 {
                return Err(e);
            }
            return Ok(done);
        }
        if let Some(z) = chunk.iter().position(|&c| c == 0) {
            out[done + z..].fill(0);
            return Ok(done + z);
        }
        done += n;
    }
    if let Some(last) = out.last_mut() {
        *last = 0;
    }
    Ok(cap)
}

/// True for canonical x86-64 kernel-half addresses.
pub fn is_kernel_addr(va: u64) -> bool {
    va >= 0xff00_0000_0000_0000
}
