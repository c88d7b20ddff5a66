//! A minimal PCI segment for guests without ACPI: a host bridge at 00:00.0
//! and the monitor's functions after it, reached by configuration
//! mechanism #1 (an address latch at 0xcf8, a data window at 0xcfc-0xcff).
//! Linux without ACPI probes exactly that (arch/x86/pci/direct.c: the latch
//! must read back what was written, and bus 0 must hold a host bridge or a
//! VGA device), then reads and assigns the BARs itself.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;

use self::config::{PciConfig, PciId};
use self::msix::MsiMessage;
use crate::devices::io::lock;
use crate::layout::{PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_DATA_PORT};

/// Errors of the PCI segment.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// KVM refused an MSI.
    #[error("KVM_SIGNAL_MSI failed: {0}")]
    SignalMsi(kvm_ioctls::Error),
    /// A device failed while handling a guest access.
    #[error("{0}")]
    Device(String),
}

/// A PCI function behind the bus: its configuration space and BAR 0.
pub trait PciFunction: Send {
    /// The configuration space.
    fn config(&self) -> &PciConfig;
    /// A configuration write (the function may react to capability
    /// changes); returns the interrupts it releases.
    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<MsiMessage>;
    /// A read at `offset` into BAR 0.
    fn bar_read(&mut self, offset: u64, data: &mut [u8]);
    /// A write at `offset` into BAR 0; returns the interrupts to send.
    fn bar_write(&mut self, offset: u64, data: &[u8]) -> Result<Vec<MsiMessage>, PciError>;
}

/// A configuration-mechanism-#1 address, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
    /// Dword-aligned register offset.
    pub register: usize,
}

impl ConfAddress {
    /// Decodes the latch; `None` while its enable bit (31) is clear.
    pub fn decode(latch: u32) -> Option<Self> {
        (latch & 0x8000_0000 != 0).then_some(ConfAddress {
            bus: (latch >> 16) as u8,
            device: ((latch >> 11) & 0x1f) as u8,
            function: ((latch >> 8) & 0x7) as u8,
            register: (latch & 0xfc) as usize,
        })
    }
}

struct BusState {
    latch: u32,
    host: PciConfig,
    /// Function 0 of devices 1, 2, ...
    functions: Vec<Box<dyn PciFunction>>,
}

/// The bus, shared by the vCPU threads.
pub struct PciBus {
    state: Mutex<BusState>,
    /// Where MSIs go; `None` leaves them to the caller (tests).
    vm: Option<Arc<VmFd>>,
}

/// The host bridge's identity: an Intel vendor ID and the host-bridge
/// class, the two things Linux's `pci_sanity_check` accepts.
const HOST_BRIDGE: PciId = PciId {
    vendor: 0x8086,
    device: 0x0d57,
    revision: 0,
    class: [0x06, 0x00, 0x00],
    subsystem_vendor: 0,
    subsystem: 0,
};

impl PciBus {
    /// A bus with the host bridge and `functions` at devices 1, 2, ...;
    /// MSIs go to `vm` through KVM_SIGNAL_MSI.
    pub fn new(functions: Vec<Box<dyn PciFunction>>, vm: Option<Arc<VmFd>>) -> Self {
        PciBus {
            state: Mutex::new(BusState {
                latch: 0,
                host: PciConfig::new(HOST_BRIDGE),
                functions,
            }),
            vm,
        }
    }

    /// True for the ports of configuration mechanism #1.
    pub fn owns_port(port: u16) -> bool {
        port == PCI_CONFIG_ADDRESS_PORT
            || (PCI_CONFIG_DATA_PORT..PCI_CONFIG_DATA_PORT + 4).contains(&port)
    }

    /// An IN from one of [`Self::owns_port`]'s ports.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        let mut s = lock(&self.state);
        if port == PCI_CONFIG_ADDRESS_PORT && data.len() == 4 {
            data.copy_from_slice(&s.latch.to_le_bytes());
            return;
        }
        data.fill(0xff);
        if port < PCI_CONFIG_DATA_PORT {
            return;
        }
        let Some(a) = ConfAddress::decode(s.latch) else {
            return;
        };
        let offset = a.register + usize::from(port - PCI_CONFIG_DATA_PORT);
        if let Some(f) = s.function(a) {
            f.read(offset, data);
        }
    }

    /// An OUT to one of [`Self::owns_port`]'s ports.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), PciError> {
        let msgs = {
            let mut s = lock(&self.state);
            if port == PCI_CONFIG_ADDRESS_PORT {
                // Only a dword write sets the latch (a byte at 0xcfb is
                // how Linux probes for mechanism #2, not an address).
                if let Ok(b) = <[u8; 4]>::try_from(data) {
                    s.latch = u32::from_le_bytes(b) & 0x80ff_fffc;
                }
                return Ok(());
            }
            if port < PCI_CONFIG_DATA_PORT {
                return Ok(());
            }
            let Some(a) = ConfAddress::decode(s.latch) else {
                return Ok(());
            };
            let offset = a.register + usize::from(port - PCI_CONFIG_DATA_PORT);
            match (a.bus, a.function, a.device) {
                (0, 0, 0) => {
                    s.host.write(offset, data);
                    Vec::new()
                }
                (0, 0, d) => match s.functions.get_mut(usize::from(d) - 1) {
                    Some(f) => f.config_write(offset, data),
                    None => Vec::new(),
                },
                _ => Vec::new(),
            }
        };
        self.send(&msgs)
    }

    /// A read of guest-physical `addr`; false if no BAR holds it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let mut s = lock(&self.state);
        for f in s.functions.iter_mut() {
            if let Some(off) = bar_offset(f.config(), addr, data.len()) {
                f.bar_read(off, data);
                return true;
            }
        }
        false
    }

    /// A write of guest-physical `addr`: `Ok(false)` if no BAR holds it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<bool, PciError> {
        let msgs = {
            let mut s = lock(&self.state);
            let mut hit = None;
            for f in s.functions.iter_mut() {
                if let Some(off) = bar_offset(f.config(), addr, data.len()) {
                    hit = Some(f.bar_write(off, data)?);
                    break;
                }
            }
            match hit {
                Some(m) => m,
                None => return Ok(false),
            }
        };
        self.send(&msgs)?;
        Ok(true)
    }

    fn send(&self, msgs: &[MsiMessage]) -> Result<(), PciError> {
        let Some(vm) = &self.vm else {
            return Ok(());
        };
        for m in msgs {
            let msi = kvm_msi {
                address_lo: m.address as u32,
                address_hi: (m.address >> 32) as u32,
                data: m.data,
                ..Default::default()
            };
            vm.signal_msi(msi).map_err(PciError::SignalMsi)?;
        }
        Ok(())
    }
}

impl BusState {
    /// The configuration space `a` names, if a function is there.
    fn function(&mut self, a: ConfAddress) -> Option<&PciConfig> {
        match (a.bus, a.function, a.device) {
            (0, 0, 0) => Some(&self.host),
            (0, 0, d) => self.functions.get(usize::from(d) - 1).map(|f| f.config()),
            _ => None,
        }
    }
}

/// The offset of `[addr, addr + len)` in the function's BAR 0, if it lies
/// wholly inside and the guest enabled memory decoding.
fn bar_offset(c: &PciConfig, addr: u64, len: usize) -> Option<u64> {
    let (base, size) = c.bar0()?;
    (c.memory_enabled() && base != 0 && addr >= base && addr + len as u64 <= base + size)
        .then(|| addr - base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf1_address_decode() {
        assert_eq!(ConfAddress::decode(0x0000_0800), None);
        assert_eq!(
            ConfAddress::decode(0x8001_0a0e),
            Some(ConfAddress {
                bus: 1,
                device: 1,
                function: 2,
                register: 0x0c,
            })
        );
        let a = ConfAddress::decode(0x8000_f8fc).unwrap_or_else(|| unreachable!());
        assert_eq!((a.device, a.function, a.register), (31, 0, 0xfc));
    }

    fn out32(bus: &PciBus, port: u16, v: u32) {
        bus.pio_write(port, &v.to_le_bytes()).expect("pio");
    }

    fn in32(bus: &PciBus, port: u16) -> u32 {
        let mut b = [0; 4];
        bus.pio_read(port, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn linux_type1_probe_and_sanity_check() {
        let bus = PciBus::new(Vec::new(), None);
        // pci_check_type1: a byte to 0xcfb is not an address; the dword
        // latch reads back what was written.
        bus.pio_write(0xcfb, &[1]).expect("pio");
        out32(&bus, 0xcf8, 0x8000_0000);
        assert_eq!(in32(&bus, 0xcf8), 0x8000_0000);
        // pci_sanity_check: class of 00:00.0 is a host bridge.
        out32(&bus, 0xcf8, 0x8000_0008);
        let mut class = [0u8; 2];
        bus.pio_read(0xcfe, &mut class);
        assert_eq!(u16::from_le_bytes(class), 0x0600);
        // Vendor of 00:00.0, and nothing at 00:01.0 or on bus 1.
        out32(&bus, 0xcf8, 0x8000_0000);
        assert_eq!(in32(&bus, 0xcfc) & 0xffff, 0x8086);
        out32(&bus, 0xcf8, 0x8000_0800);
        assert_eq!(in32(&bus, 0xcfc), u32::MAX);
        out32(&bus, 0xcf8, 0x8001_0000);
        assert_eq!(in32(&bus, 0xcfc), u32::MAX);
        // The host bridge's identity cannot be overwritten.
        out32(&bus, 0xcf8, 0x8000_0000);
        out32(&bus, 0xcfc, 0);
        assert_eq!(in32(&bus, 0xcfc), 0x0d57_8086);
    }
}
