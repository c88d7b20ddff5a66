//! virtio-blk over the modern virtio-pci transport (virtio 1.2, 4.1): one
//! memory BAR holding the common, ISR, device and notification structures
//! the vendor capabilities point at, and the MSI-X table and PBA.
//! Requests are served on the vCPU thread that writes the notification
//! register: the guest's I/O is synchronous with its kick, and no I/O
//! thread competes with the vCPUs for the host's cores.

use std::path::Path;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_F_VERSION_1};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::block::{handle_request, BlockError, CowDisk};
use crate::devices::pci::config::{PciConfig, PciId};
use crate::devices::pci::msix::{MsiMessage, MsixTable};
use crate::devices::pci::{PciError, PciFunction};

/// Size of the BAR: six 4 KiB pages used, rounded to a power of two.
pub const BAR_SIZE: u32 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u32 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const DEVICE_LEN: u32 = 0x20;
const NOTIFY: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
/// Vectors: configuration changes and the request queue.
const MSIX_VECTORS: u16 = 2;
/// The "no vector" value of the common configuration.
const NO_VECTOR: u16 = 0xffff;
/// Descriptors in the request queue.
const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use (the ring holds the
/// header and status besides).
const SEG_MAX: u32 = 126;
/// Device status: the device needs a reset (a request it could not parse).
const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: features accepted.
const STATUS_FEATURES_OK: u8 = 0x08;

/// virtio-pci capability types (virtio 1.2, 4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const PCI_CAP_VENDOR: u8 = 0x09;
const PCI_CAP_MSIX: u8 = 0x11;

/// Features the device offers.
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_FLUSH;

/// A modern-only virtio block device (PCI device 0x1040 + 2, revision 1).
const ID: PciId = PciId {
    vendor: 0x1af4,
    device: 0x1042,
    revision: 1,
    class: [0x01, 0x80, 0x00],
    subsystem_vendor: 0x1af4,
    subsystem: 0x0040,
};

/// The device: PCI function, transport registers, queue and disk.
pub struct VirtioBlockPci {
    config: PciConfig,
    msix_cap: usize,
    msix: MsixTable,
    mem: GuestMemoryMmap,
    disk: CowDisk,
    serial: Vec<u8>,
    queue: Queue,
    queue_vector: u16,
    config_vector: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    isr: u8,
}

fn vendor_cap(kind: u8, offset: u64, len: u32, extra: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut b = vec![cap_len, kind, 0, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    if let Some(x) = extra {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

impl VirtioBlockPci {
    /// The device on `image` (opened read-only), its BAR at `bar_addr`.
    pub fn new(image: &Path, mem: GuestMemoryMmap, bar_addr: u32) -> Result<Self, BlockError> {
        let disk = CowDisk::open(image)?;
        let mut config = PciConfig::new(ID);
        config.set_bar0(bar_addr, BAR_SIZE);
        config.add_capability(
            PCI_CAP_VENDOR,
            &vendor_cap(CAP_COMMON, COMMON, COMMON_LEN, None),
            &[],
        );
        config.add_capability(PCI_CAP_VENDOR, &vendor_cap(CAP_ISR, ISR, 4, None), &[]);
        config.add_capability(
            PCI_CAP_VENDOR,
            &vendor_cap(CAP_DEVICE, DEVICE, DEVICE_LEN, None),
            &[],
        );
        config.add_capability(
            PCI_CAP_VENDOR,
            &vendor_cap(
                CAP_NOTIFY,
                NOTIFY,
                NOTIFY_MULTIPLIER,
                Some(NOTIFY_MULTIPLIER),
            ),
            &[],
        );
        let mut msix = (MSIX_VECTORS - 1).to_le_bytes().to_vec();
        msix.extend_from_slice(&(MSIX_TABLE as u32).to_le_bytes());
        msix.extend_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        // Only the enable and function-mask bits are the guest's.
        let msix_cap = config.add_capability(PCI_CAP_MSIX, &msix, &[(1, 0xc0)]);
        let serial = image
            .file_name()
            .map(|n| n.to_string_lossy().as_bytes().to_vec())
            .unwrap_or_default();
        Ok(VirtioBlockPci {
            config,
            msix_cap,
            msix: MsixTable::new(MSIX_VECTORS),
            mem,
            disk,
            serial,
            queue: new_queue(),
            queue_vector: NO_VECTOR,
            config_vector: NO_VECTOR,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            isr: 0,
        })
    }

    /// The disk, for its overlay's size.
    pub fn disk(&self) -> &CowDisk {
        &self.disk
    }

    fn reset(&mut self) {
        self.queue = new_queue();
        self.queue_vector = NO_VECTOR;
        self.config_vector = NO_VECTOR;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        self.isr = 0;
    }

    fn device_config(&self) -> [u8; DEVICE_LEN as usize] {
        let mut b = [0u8; DEVICE_LEN as usize];
        b[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        b[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        b
    }

    fn common_read(&self, off: u64) -> u64 {
        let q = self.queue_select == 0;
        let qs = |v: u64| if q { v } else { 0 };
        match off {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => FEATURES & 0xffff_ffff,
                1 => FEATURES >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_vector),
            0x12 => 1,
            0x14 => u64::from(self.status),
            0x15 => 0,
            0x16 => u64::from(self.queue_select),
            0x18 => qs(u64::from(self.queue.size())),
            0x1a => {
                if q {
                    u64::from(self.queue_vector)
                } else {
                    u64::from(NO_VECTOR)
                }
            }
            0x1c => qs(u64::from(self.queue.ready())),
            0x1e => 0,
            0x20 => qs(self.queue.desc_table() & 0xffff_ffff),
            0x24 => qs(self.queue.desc_table() >> 32),
            0x28 => qs(self.queue.avail_ring() & 0xffff_ffff),
            0x2c => qs(self.queue.avail_ring() >> 32),
            0x30 => qs(self.queue.used_ring() & 0xffff_ffff),
            0x34 => qs(self.queue.used_ring() >> 32),
            _ => 0,
        }
    }

    fn common_write(&mut self, off: u64, v: u64) {
        let (lo, hi) = (Some(v as u32), None);
        let q = self.queue_select == 0;
        match off {
            0x00 => self.device_feature_select = v as u32,
            0x08 => self.driver_feature_select = v as u32,
            0x0c => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let m = 0xffff_ffffu64 << shift;
                self.driver_features = (self.driver_features & !m) | ((v << shift) & m);
            }
            0x10 => self.config_vector = self.vector(v as u16),
            0x14 => {
                let s = v as u8;
                if s == 0 {
                    self.reset();
                } else if s & STATUS_FEATURES_OK != 0 && self.driver_features & !FEATURES != 0 {
                    // Features the device did not offer: FEATURES_OK stays clear.
                    self.status = s & !STATUS_FEATURES_OK;
                } else {
                    self.status = s;
                }
            }
            0x16 => self.queue_select = v as u16,
            0x18 if q => self.queue.set_size(v as u16),
            0x1a if q => self.queue_vector = self.vector(v as u16),
            0x1c if q => {
                // A ring outside guest memory is refused (reads back 0).
                self.queue.set_ready(v == 1);
                if !self.queue.is_valid(&self.mem) {
                    self.queue.set_ready(false);
                }
            }
            0x20 if q => self.queue.set_desc_table_address(lo, hi),
            0x24 if q => self.queue.set_desc_table_address(None, Some(v as u32)),
            0x28 if q => self.queue.set_avail_ring_address(lo, hi),
            0x2c if q => self.queue.set_avail_ring_address(None, Some(v as u32)),
            0x30 if q => self.queue.set_used_ring_address(lo, hi),
            0x34 if q => self.queue.set_used_ring_address(None, Some(v as u32)),
            _ => {}
        }
    }

    /// A vector the table has, or "no vector" (which the driver reads back
    /// to learn that the assignment failed).
    fn vector(&self, v: u16) -> u16 {
        if v < self.msix.len() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Serves every available request; returns the interrupt to send.
    fn process_queue(&mut self) -> Result<Vec<MsiMessage>, PciError> {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 == 0 || !self.queue.ready() {
            return Ok(Vec::new());
        }
        let mem = &self.mem;
        let mut served = false;
        let mut broken = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match handle_request(&mut self.disk, &self.serial, mem, chain) {
                Ok(n) => n,
                Err(_) => {
                    broken = true;
                    0
                }
            };
            self.queue
                .add_used(mem, head, len)
                .map_err(|e| PciError::Device(format!("virtio-blk used ring: {e}")))?;
            served = true;
        }
        let mut out = Vec::new();
        if broken {
            // virtio 1.2, 2.1.1: tell the driver through a config change.
            self.status |= STATUS_NEEDS_RESET;
            self.isr |= 2;
            out.extend(self.msix.trigger(self.config_vector));
        }
        let notify = served
            && self
                .queue
                .needs_notification(mem)
                .map_err(|e| PciError::Device(format!("virtio-blk used ring: {e}")))?;
        if notify {
            self.isr |= 1;
            out.extend(self.msix.trigger(self.queue_vector));
        }
        Ok(out)
    }
}

fn new_queue() -> Queue {
    // QUEUE_SIZE is a power of two within the virtio limit: cannot fail.
    Queue::new(QUEUE_SIZE).unwrap_or_else(|_| unreachable!("queue size {QUEUE_SIZE} is valid"))
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl PciFunction for VirtioBlockPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<MsiMessage> {
        self.config.write(offset, data);
        let ctl = self.msix_cap + 2;
        if offset < ctl + 2 && ctl < offset + data.len() {
            let v = u16::from_le_bytes([
                self.config.cap_body(self.msix_cap, 2)[0],
                self.config.cap_body(self.msix_cap, 2)[1],
            ]);
            return self.msix.set_control(v);
        }
        Vec::new()
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if (COMMON..COMMON + u64::from(COMMON_LEN)).contains(&o) => {
                let v = self.common_read(o - COMMON).to_le_bytes();
                let n = data.len().min(8);
                data[..n].copy_from_slice(&v[..n]);
            }
            o if o == ISR => {
                // Reading the ISR acknowledges it.
                data[0] = std::mem::take(&mut self.isr);
            }
            o if (DEVICE..DEVICE + u64::from(DEVICE_LEN)).contains(&o) => {
                let cfg = self.device_config();
                let at = (o - DEVICE) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = cfg.get(at + i).copied().unwrap_or(0);
                }
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => {
                self.msix.read_table((o - MSIX_TABLE) as usize, data)
            }
            o if o >= MSIX_PBA => self.msix.read_pba((o - MSIX_PBA) as usize, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) -> Result<Vec<MsiMessage>, PciError> {
        match offset {
            o if (COMMON..COMMON + u64::from(COMMON_LEN)).contains(&o) => {
                self.common_write(o - COMMON, le(data))
            }
            // One queue: any write in its notification window kicks it.
            o if (NOTIFY..NOTIFY + u64::from(NOTIFY_MULTIPLIER)).contains(&o) => {
                return self.process_queue();
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => {
                return Ok(self
                    .msix
                    .write_table((o - MSIX_TABLE) as usize, data)
                    .into_iter()
                    .collect());
            }
            _ => {}
        }
        Ok(Vec::new())
    }
}
