//! Software x86-64 page walk (4- and 5-level paging, 2 MiB and 1 GiB pages,
//! page-table isolation), for engines that only read physical memory.

/// Errors of a page walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("{va:#x} not present at level {level}")]
    NotPresent { va: u64, level: u8 },
    #[error("{0:#x} is not canonical")]
    NonCanonical(u64),
    #[error("page table at {0:#x} unreadable")]
    TableUnreadable(u64),
    #[error("reserved bits set in entry {entry:#x} at level {level}")]
    Reserved { entry: u64, level: u8 },
}

const PRESENT: u64 = 1;
const PS: u64 = 1 << 7;
/// Physical address bits 12..51 of a page-table entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// With PTI, the user half of the CR3 pair has this bit set (pgd pages are
/// allocated as an 8 KiB pair: kernel then user).
pub const PTI_USER_PGTABLE_BIT: u64 = 1 << 12;
/// CR3 bits holding the PCID and flags.
pub const CR3_FLAGS: u64 = 0xfff | (1 << 63);

/// Reads one 8-byte entry of guest physical memory.
pub trait PhysRead {
    fn read_phys_u64(&self, pa: u64) -> Option<u64>;
}

impl<F: Fn(u64) -> Option<u64>> PhysRead for F {
    fn read_phys_u64(&self, pa: u64) -> Option<u64> {
        self(pa)
    }
}

/// The page-table root the kernel uses for an address space: with PTI the
/// user CR3 differs from the kernel one by bit 12.
pub fn kernel_cr3(cr3: u64) -> u64 {
    cr3 & !CR3_FLAGS & !PTI_USER_PGTABLE_BIT
}

fn canonical(va: u64, la57: bool) -> bool {
    let bits = if la57 { 57 } else { 48 };
    let top = (va as i64) >> (bits - 1);
    top == 0 || top == -1
}

/// Result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub pa: u64,
    /// Size of the page mapping `va`: 4 KiB, 2 MiB or 1 GiB.
    pub page_size: u64,
}

/// Translates `va` through the tables at `cr3` (flags and PCID ignored).
/// At most 5 reads; never loops.
pub fn translate<R: PhysRead + ?Sized>(
    mem: &R,
    cr3: u64,
    va: u64,
    la57: bool,
) -> Result<Translation, WalkError> {
    if !canonical(va, la57) {
        return Err(WalkError::NonCanonical(va));
    }
    let levels: u8 = if la57 { 5 } else { 4 };
    let mut table = cr3 & ADDR_MASK;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let idx = (va >> shift) & 0x1ff;
        let epa = table + idx * 8;
        let entry = mem
            .read_phys_u64(epa)
            .ok_or(WalkError::TableUnreadable(epa))?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent { va, level });
        }
        if (2..=3).contains(&level) && entry & PS != 0 {
            let size = 1u64 << shift;
            let base = entry & ADDR_MASK & !(size - 1);
            // Bits 12..shift of a large-page entry hold PAT and must be
            // zero above bit 12 otherwise.
            let resv = entry & ADDR_MASK & (size - 1) & !0x1000;
            if resv != 0 {
                return Err(WalkError::Reserved { entry, level });
            }
            return Ok(Translation {
                pa: base | (va & (size - 1)),
                page_size: size,
            });
        }
        if level >= 4 && entry & PS != 0 {
            return Err(WalkError::Reserved { entry, level });
        }
        table = entry & ADDR_MASK;
    }
    Ok(Translation {
        pa: table | (va & 0xfff),
        page_size: 0x1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<u64, u64>);
    impl PhysRead for Mem {
        fn read_phys_u64(&self, pa: u64) -> Option<u64> {
            self.0.get(&pa).copied().or(Some(0))
        }
    }

    fn idx(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * (level - 1))) & 0x1ff
    }

    #[test]
    fn four_level_4k_2m_1g() {
        let va = 0xffff_ffff_8123_4567u64;
        let mut m = HashMap::new();
        let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        m.insert(pml4 + idx(va, 4) * 8, pdpt | 3);
        m.insert(pdpt + idx(va, 3) * 8, pd | 3);
        m.insert(pd + idx(va, 2) * 8, pt | 3);
        m.insert(pt + idx(va, 1) * 8, 0x77_7000 | 3);
        let mem = Mem(m);
        let t = translate(&mem, pml4 | 0x1005, va, false);
        // bit 12 of CR3 is part of the address: user tables would be at 0x1000
        assert!(t.is_err() || t.unwrap().pa != 0);
        let t = translate(&mem, pml4, va, false).unwrap();
        assert_eq!(
            t,
            Translation {
                pa: 0x77_7567,
                page_size: 0x1000
            }
        );

        // 2 MiB page
        let mut mem = mem;
        mem.0.insert(pd + idx(va, 2) * 8, 0x4000_0000 | PS | 3);
        let t = translate(&mem, pml4, va, false).unwrap();
        assert_eq!(t.pa, 0x4000_0000 | (va & 0x1f_ffff));
        assert_eq!(t.page_size, 2 << 20);

        // 1 GiB page
        mem.0.insert(pdpt + idx(va, 3) * 8, 0x8000_0000 | PS | 3);
        let t = translate(&mem, pml4, va, false).unwrap();
        assert_eq!(t.pa, 0x8000_0000 | (va & 0x3fff_ffff));
        assert_eq!(t.page_size, 1 << 30);
    }

    #[test]
    fn five_level() {
        let va = 0xff11_2233_4455_6677u64;
        let mut m = HashMap::new();
        let tables = [0x10000u64, 0x11000, 0x12000, 0x13000, 0x14000];
        for lvl in (1..=5u32).rev() {
            let t = tables[(5 - lvl) as usize];
            let next = if lvl == 1 {
                0xabc000
            } else {
                tables[(6 - lvl) as usize]
            };
            m.insert(t + idx(va, lvl) * 8, next | 1);
        }
        let mem = Mem(m);
        let t = translate(&mem, tables[0], va, true).unwrap();
        assert_eq!(t.pa, 0xabc000 | 0x677);
        // with 4-level paging this address is not canonical
        assert_eq!(
            translate(&mem, tables[0], va, false),
            Err(WalkError::NonCanonical(va))
        );
    }

    #[test]
    fn pti_cr3_pair() {
        assert_eq!(kernel_cr3(0x8000_0000_1234_4806 | 0x1000), 0x1234_4000);
        assert_eq!(kernel_cr3(0x1234_4000), 0x1234_4000);
    }

    #[test]
    fn not_present_and_random_tables_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let a = next();
            let b = next();
            let rd = move |pa: u64| Some(pa.wrapping_mul(a) ^ b);
            let _ = translate(&rd, next(), next(), a & 1 == 0);
        }
        let empty = |_pa: u64| Some(0u64);
        assert!(matches!(
            translate(&empty, 0x1000, 0xffff_8880_0000_0000, false),
            Err(WalkError::NotPresent { level: 4, .. })
        ));
    }
}
