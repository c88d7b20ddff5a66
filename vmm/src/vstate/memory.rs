//! Guest memory (vm-memory, anonymous mmap) with the hole below 4 GiB.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::ram_ranges;

/// Errors of creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Zero or absurd size.
    #[error("invalid guest memory size: {0} MiB")]
    Size(u64),
    /// mmap failed.
    #[error("cannot allocate guest memory: {0}")]
    Alloc(vm_memory::mmap::FromRangesError),
}

/// Allocates `mib` MiB of guest RAM laid out by [`ram_ranges`].
pub fn create(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(2..=(1 << 20)).contains(&mib) {
        return Err(MemoryError::Size(mib));
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mib << 20)
        .into_iter()
        .map(|(a, l)| (GuestAddress(a), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Alloc)
}

/// (slot, guest address, size, host address) of each region, for
/// KVM_SET_USER_MEMORY_REGION.
pub fn regions(mem: &GuestMemoryMmap) -> Vec<(u32, u64, u64, u64)> {
    mem.iter()
        .enumerate()
        .map(|(i, r)| (i as u32, r.start_addr().0, r.len(), r.as_ptr() as u64))
        .collect()
}

/// Total RAM in bytes.
pub fn size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}
