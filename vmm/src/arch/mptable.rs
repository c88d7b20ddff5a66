//! Intel MultiProcessor Specification 1.4 table, so SMP guests find their
//! vCPUs, the ISA bus and the IOAPIC without ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_ADDR, IOAPIC_ADDR, MPTABLE_START};

/// Errors of writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table supports.
    #[error("{0} vCPUs do not fit the MP table (max 254)")]
    TooManyCpus(u32),
    /// Writing to guest memory failed.
    #[error("cannot write the MP table into guest memory")]
    Memory,
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const LEGACY_IRQS: u8 = 16;

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)))
}

/// The MP floating pointer and configuration table for `num_cpus` vCPUs, as
/// bytes to place at [`MPTABLE_START`].
pub fn build(num_cpus: u32) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus as u8 + 1;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..num_cpus {
        let mut e = vec![0u8, cpu as u8, APIC_VERSION];
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        e.push(flags);
        e.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        e.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..LEGACY_IRQS {
        entries.extend_from_slice(&[3, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[4, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HVTRACE ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(MPTABLE_START as u32 + 16).to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);
    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP table into guest memory.
pub fn setup(mem: &GuestMemoryMmap, num_cpus: u32) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let b = build(4).unwrap();
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(b[..16].iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let t = &b[16..];
        assert_eq!(&t[0..4], b"PCMP");
        assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
        assert_eq!(t.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        assert_eq!(u16::from_le_bytes([t[34], t[35]]), 4 + 1 + 1 + 16 + 2);
        assert!(b.len() < 1024, "fits in the EBDA");
        assert!(build(0).is_err());
    }
}
