//! What an image yields: the kernel's symbols, types, syscalls and
//! identity (the analysis is in [`crate::image`], storage in
//! [`crate::cache`]).

use crate::btf::KernelTypes;
use crate::bzimage::Compression;
use crate::kallsyms::Layout;
use crate::symbols::KernelSymbols;
use crate::syscalls::SyscallTable;
use crate::tracepoints::TracepointSite;

/// What the input was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    BzImage(Compression),
    /// A compressed stream holding a vmlinux (e.g. `vmlinux.xz`).
    Compressed(Compression),
    Elf,
    /// Decompressed raw image, mapped at the kernel's `_text`.
    Raw,
    /// Loaded from the build-id cache.
    Cache,
}

/// Everything recovered from one kernel image.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub symbols: KernelSymbols,
    /// Types from `.BTF` (empty if the kernel has none).
    pub types: KernelTypes,
    pub syscalls: SyscallTable,
    /// The 32-bit (compat, i386 ABI) syscalls, from `ia32_sys_call`'s code
    /// (see [`crate::syscalls32`]); empty without CONFIG_IA32_EMULATION.
    pub compat_syscalls: SyscallTable,
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `linux_banner` (`Linux version ...`), without the trailing newline.
    pub banner: String,
    /// GNU build-id, lowercase hex.
    pub build_id: Option<String>,
    pub format: ImageFormat,
    /// Where the kallsyms tables were (None if symbols came from elsewhere).
    pub kallsyms_layout: Option<Layout>,
    /// Static-branch sites of the kernel's tracepoints (`__jump_table`).
    pub tracepoint_sites: Vec<TracepointSite>,
}
