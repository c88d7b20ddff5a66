//! Kernel image → symbols, types, syscall table.
//!
//! Everything comes from the kernel image alone: a bzImage (gzip, xz, lzma,
//! zstd or lz4 payload), an ELF vmlinux (its symtab when present), a raw
//! decompressed image, or a System.map. The kallsyms tables give every
//! symbol as /proc/kallsyms shows it; `.BTF` gives struct layouts; the
//! syscall metadata and `sys_call_table` give the syscalls.
//!
//! ```no_run
//! let k = guest_symbols::KernelImage::open("/boot/vmlinuz")?;
//! let comm = k.types.member_offset("task_struct", "comm");
//! let loc = k.symbols.by_addr(0xffffffff81000010).map(|l| l.to_string());
//! # Ok::<(), guest_symbols::ImageError>(())
//! ```

pub mod btf;
pub mod bzimage;
pub mod cache;
pub mod elf;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod kallsyms;
pub mod kernel;
pub mod ksymtab;
pub mod symbols;
pub mod syscalls;
pub mod syscalls32;
pub mod tracepoints;

pub use btf::{KernelTypes, Member, StructLayout, INTROSPECTION_LAYOUT};
pub use image::{
    extract_vmlinux, extract_vmlinux_to, ImageError, ImageFormat, Kernel, KernelImage, OpenOptions,
};
pub use symbols::{ExportedSymbol, KernelSymbols, Location, Symbol, SymbolSource};
pub use syscalls::{Syscall, SyscallArg, SyscallTable};
pub use tracepoints::TracepointSite;
