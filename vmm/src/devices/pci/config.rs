//! A type-0 PCI configuration space: 256 bytes, a write mask per byte, and
//! BARs that answer the sizing probe (all ones written, the size mask read
//! back) as the PCI Local Bus specification 3.0, 6.2.5.1 describes.

/// Offset of the vendor ID.
pub const VENDOR_ID: usize = 0x00;
/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Offset of the status register.
pub const STATUS: usize = 0x06;
/// Offset of the first BAR.
pub const BAR0: usize = 0x10;
/// Offset of the capabilities pointer.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Status: the device has a capability list.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Command bits a guest may set: I/O and memory decode, bus master,
/// INTx disable.
const COMMAND_WRITABLE: u16 = 0x0007 | (1 << 10);
/// Where the first capability goes (after the type-0 header).
const FIRST_CAP: usize = 0x40;

/// The identity of a function.
#[derive(Debug, Clone, Copy)]
pub struct PciId {
    /// Vendor.
    pub vendor: u16,
    /// Device.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (base, sub-class, programming interface).
    pub class: [u8; 3],
    /// Subsystem vendor.
    pub subsystem_vendor: u16,
    /// Subsystem.
    pub subsystem: u16,
}

/// One function's configuration space.
pub struct PciConfig {
    bytes: [u8; 256],
    mask: [u8; 256],
    /// Size of BAR 0 (a 32-bit memory BAR), 0 if none.
    bar0_size: u32,
    next_cap: usize,
    last_cap: Option<usize>,
}

impl PciConfig {
    /// A header of type 0 for `id`, no BAR, no capability.
    pub fn new(id: PciId) -> Self {
        let mut c = PciConfig {
            bytes: [0; 256],
            mask: [0; 256],
            bar0_size: 0,
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.put(VENDOR_ID, &id.vendor.to_le_bytes());
        c.put(0x02, &id.device.to_le_bytes());
        c.put(0x08, &[id.revision, id.class[2], id.class[1], id.class[0]]);
        c.put(0x2c, &id.subsystem_vendor.to_le_bytes());
        c.put(0x2e, &id.subsystem.to_le_bytes());
        c.mask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        // Interrupt line: scratch for the guest; no interrupt pin (MSI-X only).
        c.mask[0x3c] = 0xff;
        c
    }

    fn put(&mut self, at: usize, b: &[u8]) {
        self.bytes[at..at + b.len()].copy_from_slice(b);
    }

    /// Gives the function a 32-bit, non-prefetchable memory BAR 0 of `size`
    /// bytes (a power of two, at least 16) at `addr`.
    pub fn set_bar0(&mut self, addr: u32, size: u32) {
        debug_assert!(size.is_power_of_two() && size >= 16);
        self.bar0_size = size;
        self.put(BAR0, &(addr & !(size - 1)).to_le_bytes());
    }

    /// Where BAR 0 is now and its size, if the function has one.
    pub fn bar0(&self) -> Option<(u64, u64)> {
        (self.bar0_size != 0).then(|| {
            let v = u32::from_le_bytes(self.bytes[BAR0..BAR0 + 4].try_into().unwrap_or([0; 4]));
            (u64::from(v & !0xf), u64::from(self.bar0_size))
        })
    }

    /// True if the guest enabled memory decoding.
    pub fn memory_enabled(&self) -> bool {
        self.bytes[COMMAND] & 0x2 != 0
    }

    /// Appends a capability (`body` starts after the ID and next bytes);
    /// returns its offset. `writable` marks bytes of `body` the guest may
    /// change, as (offset in body, mask).
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[(usize, u8)]) -> usize {
        let at = self.next_cap;
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.put(at + 2, body);
        for &(o, m) in writable {
            self.mask[at + 2 + o] = m;
        }
        match self.last_cap {
            None => {
                self.bytes[CAPABILITIES_POINTER] = at as u8;
                let st = u16::from_le_bytes([self.bytes[STATUS], self.bytes[STATUS + 1]])
                    | STATUS_CAP_LIST;
                self.put(STATUS, &st.to_le_bytes());
            }
            Some(prev) => self.bytes[prev + 1] = at as u8,
        }
        self.last_cap = Some(at);
        // Capabilities start on dword boundaries.
        self.next_cap = (at + 2 + body.len() + 3) & !3;
        at
    }

    /// Reads `data.len()` bytes at `offset` (past the end reads as ones).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Reads a 16-bit register.
    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    /// Writes `data` at `offset` through the write masks; BAR 0 keeps only
    /// its address bits above its size, which is how a guest sizes it.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i;
            if at >= 256 {
                break;
            }
            if (BAR0..BAR0 + 4).contains(&at) && self.bar0_size != 0 {
                let keep = !(self.bar0_size - 1) & !0xf;
                let m = keep.to_le_bytes()[at - BAR0];
                self.bytes[at] = v & m;
                continue;
            }
            let m = self.mask[at];
            self.bytes[at] = (self.bytes[at] & !m) | (v & m);
        }
    }

    /// The bytes of a capability body at `cap` (after ID and next).
    pub fn cap_body(&self, cap: usize, len: usize) -> &[u8] {
        &self.bytes[cap + 2..cap + 2 + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> PciConfig {
        PciConfig::new(PciId {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: [0x01, 0x80, 0x00],
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    fn read32(c: &PciConfig, off: usize) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_class() {
        let c = dev();
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        // Revision 1, class 01 80 00 (mass storage, other).
        assert_eq!(read32(&c, 8), 0x0180_0001);
        let mut b = [0; 2];
        c.read(0x0a, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0180);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = dev();
        c.set_bar0(0xc000_0000, 0x8000);
        assert_eq!(read32(&c, BAR0), 0xc000_0000);
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0), !(0x8000 - 1));
        assert_eq!(!(read32(&c, BAR0) & !0xf) + 1, 0x8000);
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(c.bar0(), Some((0xd000_0000, 0x8000)));
        // Unaligned low bits are not kept.
        c.write(BAR0, &0xd000_1234u32.to_le_bytes());
        assert_eq!(c.bar0(), Some((0xd000_0000, 0x8000)));
        // A BAR that does not exist reads 0 whatever is written.
        c.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0 + 4), 0);
    }

    #[test]
    fn read_only_fields_stay() {
        let mut c = dev();
        c.write(0, &[0; 4]);
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(c.read_u16(COMMAND), COMMAND_WRITABLE);
        assert!(c.memory_enabled());
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = dev();
        let a = c.add_capability(0x09, &[14, 1, 0, 0], &[]);
        let b = c.add_capability(0x11, &[0, 0], &[(1, 0xc0)]);
        assert_eq!(c.read_u16(STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(c.bytes[CAPABILITIES_POINTER] as usize, a);
        assert_eq!(c.bytes[a + 1] as usize, b);
        assert_eq!(c.bytes[b + 1], 0);
        c.write(b + 2, &[0xff, 0xff]);
        assert_eq!(c.cap_body(b, 2), &[0, 0xc0]);
    }
}
