//! The running kernel: KASLR slide discovery and relocated addresses.

use crate::ctx::VcpuContext;
use crate::plan::{Offsets, ProbePlan};

/// Errors of kernel discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("no KASLR slide matched the kernel banner")]
    SlideNotFound,
    #[error("plan has no banner to match")]
    NoBanner,
}

/// Alignment of the kernel's virtual KASLR slide (CONFIG_PHYSICAL_ALIGN).
pub const SLIDE_ALIGN: u64 = 0x20_0000;
/// The slide is below KERNEL_IMAGE_SIZE (1 GiB).
pub const SLIDE_MAX: u64 = 0x4000_0000;

/// Finds the KASLR slide by reading the banner at each candidate address:
/// at most `SLIDE_MAX / SLIDE_ALIGN` (512) reads of `prefix.len()` bytes.
pub fn find_slide<C: VcpuContext + ?Sized>(
    ctx: &C,
    banner_link: u64,
    prefix: &[u8],
) -> Result<u64, KernelError> {
    if prefix.is_empty() || banner_link == 0 {
        return Err(KernelError::NoBanner);
    }
    let mut buf = [0u8; 64];
    let n = prefix.len().min(buf.len());
    let buf = &mut buf[..n];
    let mut slide = 0u64;
    while slide < SLIDE_MAX {
        if ctx.read_virt(banner_link.wrapping_add(slide), buf).is_ok() && buf == &prefix[..n] {
            return Ok(slide);
        }
        slide += SLIDE_ALIGN;
    }
    Err(KernelError::SlideNotFound)
}

/// Finds the slide from a runtime address known to be a symbol's (e.g. the
/// LSTAR MSR, which holds `entry_SYSCALL_64`).
pub fn slide_from_known(runtime: u64, link: u64) -> Option<u64> {
    let s = runtime.wrapping_sub(link);
    (s % SLIDE_ALIGN == 0 && s < SLIDE_MAX).then_some(s)
}

/// The kernel as it runs: relocated symbol addresses and type offsets.
#[derive(Debug, Clone, Default)]
pub struct Kernel {
    pub slide: u64,
    pub off: Offsets,
    pub init_task: u64,
    /// Runtime address of the variable `page_offset_base` (the base of the
    /// direct map of physical memory; 0: unknown).
    pub page_offset_base: u64,
    /// Layouts of the statedump's walks (symbols unrelocated).
    pub sd: crate::statedump::StatedumpLayout,
}

impl Kernel {
    /// The running kernel described by `plan`, relocated by `slide`.
    pub fn new(plan: &ProbePlan, slide: u64) -> Self {
        Self {
            slide,
            off: plan.offsets.clone(),
            init_task: reloc(plan.symbols.init_task, slide),
            page_offset_base: reloc(plan.symbols.page_offset_base, slide),
            sd: plan.statedump.clone(),
        }
    }
}

/// Relocates a link-time address (0 stays 0: absent symbol).
pub fn reloc(link: u64, slide: u64) -> u64 {
    if link == 0 {
        0
    } else {
        link.wrapping_add(slide)
    }
}
