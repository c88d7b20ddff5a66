//! x86-64 `struct pt_regs` offsets (stable ABI of the entry code).

pub const BP: u64 = 32;
pub const BX: u64 = 40;
pub const R10: u64 = 56;
pub const R9: u64 = 64;
pub const R8: u64 = 72;
pub const AX: u64 = 80;
pub const CX: u64 = 88;
pub const DX: u64 = 96;
pub const SI: u64 = 104;
pub const DI: u64 = 112;
pub const ORIG_AX: u64 = 120;
pub const CS: u64 = 136;
/// `sizeof(struct pt_regs)`.
pub const SIZE: u64 = 168;
