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

/// One KVM memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// KVM slot number.
    pub id: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes (0 deletes the slot).
    pub size: u64,
    /// Host address of `gpa`.
    pub host: u64,
    /// Guest writes exit to the monitor (KVM_MEM_READONLY).
    pub readonly: bool,
}

/// The slots of freshly created guest memory.
pub fn initial_slots(mem: &GuestMemoryMmap) -> Vec<Slot> {
    regions(mem)
        .into_iter()
        .map(|(id, gpa, size, host)| Slot {
            id,
            gpa,
            size,
            host,
            readonly: false,
        })
        .collect()
}

/// Splits the writable slot holding 4 KiB page `page` so that the page
/// becomes a read-only slot of its own. Returns the slot to delete and the
/// slots to add (the old id is reused for the first piece); `None` if the
/// page is outside RAM or already read-only.
pub fn split_readonly(slots: &[Slot], page: u64, next_id: &mut u32) -> Option<(Slot, Vec<Slot>)> {
    let page = page & !0xfff;
    let old = *slots
        .iter()
        .find(|s| !s.readonly && s.gpa <= page && page + 0x1000 <= s.gpa + s.size)?;
    let mut add = Vec::new();
    let mut piece = |gpa: u64, size: u64, readonly: bool, add: &mut Vec<Slot>| {
        if size == 0 {
            return;
        }
        let id = if add.is_empty() {
            old.id
        } else {
            *next_id += 1;
            *next_id - 1
        };
        add.push(Slot {
            id,
            gpa,
            size,
            host: old.host + (gpa - old.gpa),
            readonly,
        });
    };
    piece(old.gpa, page - old.gpa, false, &mut add);
    piece(page, 0x1000, true, &mut add);
    piece(
        page + 0x1000,
        old.gpa + old.size - page - 0x1000,
        false,
        &mut add,
    );
    Some((old, add))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_a_page_out() {
        let s = vec![Slot {
            id: 0,
            gpa: 0,
            size: 0x10_0000,
            host: 0x7000_0000,
            readonly: false,
        }];
        let mut next = 1;
        let (old, add) = split_readonly(&s, 0x5123, &mut next).unwrap();
        assert_eq!(old, s[0]);
        assert_eq!(add.len(), 3);
        assert_eq!((add[0].id, add[0].gpa, add[0].size), (0, 0, 0x5000));
        assert_eq!((add[1].id, add[1].gpa, add[1].readonly), (1, 0x5000, true));
        assert_eq!(add[1].host, 0x7000_5000);
        assert_eq!((add[2].id, add[2].gpa, add[2].size), (2, 0x6000, 0xfa000));
        assert_eq!(next, 3);
        assert!(split_readonly(&add, 0x5000, &mut next).is_none());
        let (_, at0) = split_readonly(&s, 0, &mut next).unwrap();
        assert_eq!((at0[0].gpa, at0[0].readonly, at0.len()), (0, true, 2));
    }
}
