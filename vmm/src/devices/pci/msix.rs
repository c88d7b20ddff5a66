//! The MSI-X table and pending-bit array of one function (PCI Local Bus
//! specification 3.0, 6.8.2): each entry is a message address, data and a
//! mask bit; an interrupt raised while its vector is masked is remembered
//! in the PBA and sent when the guest unmasks it.

/// Bytes per table entry.
pub const ENTRY_SIZE: usize = 16;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_MASK: u16 = 1 << 14;
/// Vector control: the entry is masked.
const VECTOR_MASKED: u32 = 1;

/// A message to send: what the device would write to the LAPIC's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (0xfeeXXXXX on x86).
    pub address: u64,
    /// Data.
    pub data: u32,
}

/// The table, its pending bits and the capability's two control bits.
pub struct MsixTable {
    table: Vec<u8>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// `n` vectors, each masked as after reset.
    pub fn new(n: u16) -> Self {
        let mut table = vec![0u8; usize::from(n) * ENTRY_SIZE];
        for e in table.chunks_mut(ENTRY_SIZE) {
            e[12..16].copy_from_slice(&VECTOR_MASKED.to_le_bytes());
        }
        MsixTable {
            table,
            pending: vec![false; usize::from(n)],
            enabled: false,
            function_masked: false,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.pending.len() as u16
    }

    /// True with no vector.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The capability's message-control register as the guest wrote it:
    /// returns the messages that unmasking the function released.
    pub fn set_control(&mut self, control: u16) -> Vec<MsiMessage> {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_MASK != 0;
        (0..self.len()).filter_map(|v| self.release(v)).collect()
    }

    /// True once the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn word(&self, v: u16, i: usize) -> u32 {
        let at = usize::from(v) * ENTRY_SIZE + i * 4;
        u32::from_le_bytes(self.table[at..at + 4].try_into().unwrap_or([0; 4]))
    }

    fn masked(&self, v: u16) -> bool {
        self.function_masked || self.word(v, 3) & VECTOR_MASKED != 0
    }

    fn message(&self, v: u16) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.word(v, 0)) | u64::from(self.word(v, 1)) << 32,
            data: self.word(v, 2),
        }
    }

    /// Sends a pending vector that is no longer masked.
    fn release(&mut self, v: u16) -> Option<MsiMessage> {
        let i = usize::from(v);
        if self.enabled && self.pending[i] && !self.masked(v) {
            self.pending[i] = false;
            return Some(self.message(v));
        }
        None
    }

    /// Raises vector `v`: its message if it can be sent now; if it is
    /// masked it becomes pending; without MSI-X enabled, or for a vector
    /// the table does not have (the "no vector" 0xffff), nothing.
    pub fn trigger(&mut self, v: u16) -> Option<MsiMessage> {
        if !self.enabled || v >= self.len() {
            return None;
        }
        if self.masked(v) {
            self.pending[usize::from(v)] = true;
            return None;
        }
        Some(self.message(v))
    }

    /// Reads the table at byte `offset` (outside reads as zeros).
    pub fn read_table(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.table.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Writes the table; returns a message an unmasking released.
    pub fn write_table(&mut self, offset: usize, data: &[u8]) -> Option<MsiMessage> {
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i;
            if at >= self.table.len() {
                break;
            }
            // Of the vector-control word only the mask bit is writable.
            self.table[at] = match at % ENTRY_SIZE {
                12 => b & VECTOR_MASKED as u8,
                13..=15 => 0,
                _ => b,
            };
        }
        if offset >= self.table.len() {
            return None;
        }
        self.release((offset / ENTRY_SIZE) as u16)
    }

    /// Reads the pending-bit array (one bit per vector, in qwords).
    pub fn read_pba(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset + i;
            *b = (0..8)
                .filter(|bit| self.pending.get(byte * 8 + bit) == Some(&true))
                .fold(0u8, |a, bit| a | 1 << bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(t: &mut MsixTable, v: u16, addr: u32, data: u32) {
        let at = usize::from(v) * ENTRY_SIZE;
        t.write_table(at, &addr.to_le_bytes());
        t.write_table(at + 4, &0u32.to_le_bytes());
        t.write_table(at + 8, &data.to_le_bytes());
    }

    #[test]
    fn disabled_table_sends_nothing() {
        let mut t = MsixTable::new(2);
        program(&mut t, 0, 0xfee0_0000, 0x41);
        t.write_table(12, &0u32.to_le_bytes());
        assert_eq!(t.trigger(0), None);
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba);
        assert_eq!(pba, [0; 8]);
    }

    #[test]
    fn masked_vector_is_pending_until_unmasked() {
        let mut t = MsixTable::new(2);
        assert!(t.set_control(CONTROL_ENABLE).is_empty());
        program(&mut t, 1, 0xfee0_1000, 0x4022);
        // Entries start masked: the interrupt waits in the PBA.
        assert_eq!(t.trigger(1), None);
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        let msg = t.write_table(ENTRY_SIZE + 12, &0u32.to_le_bytes());
        assert_eq!(
            msg,
            Some(MsiMessage {
                address: 0xfee0_1000,
                data: 0x4022
            })
        );
        t.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        assert_eq!(t.trigger(1).map(|m| m.data), Some(0x4022));
        // No such vector (VIRTIO_MSI_NO_VECTOR).
        assert_eq!(t.trigger(0xffff), None);
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let mut t = MsixTable::new(2);
        t.set_control(CONTROL_ENABLE | CONTROL_MASK);
        program(&mut t, 0, 0xfee0_0000, 0x30);
        t.write_table(12, &0u32.to_le_bytes());
        assert_eq!(t.trigger(0), None);
        let released = t.set_control(CONTROL_ENABLE);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].data, 0x30);
    }

    #[test]
    fn vector_control_keeps_only_the_mask_bit() {
        let mut t = MsixTable::new(1);
        t.write_table(12, &u32::MAX.to_le_bytes());
        let mut b = [0u8; 4];
        t.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        assert_eq!(t.table_size(), 16);
    }
}
