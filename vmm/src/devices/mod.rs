//! Devices: the legacy port-I/O ones (the 16550 serial console, the
//! i8042) and, for a disk, a PCI segment with a virtio block device.

pub mod i8042;
pub mod io;
pub mod pci;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex};

pub(crate) use io::lock;
pub use io::IoAction;

use crate::layout::{I8042_COMMAND_PORT, I8042_DATA_PORT, SERIAL2_PORT_BASE, SERIAL_PORT_BASE};

/// Port-I/O devices of a VM, shared by its vCPU threads.
pub struct PioBus {
    serial: Arc<Mutex<serial::SerialConsole>>,
    serial2: Option<Arc<Mutex<serial::SerialConsole>>>,
    i8042: Mutex<i8042::I8042>,
    pci: Option<Arc<pci::PciBus>>,
}

impl PioBus {
    /// A bus with the serial console (COM1), optionally COM2, and an i8042.
    pub fn new(
        serial: Arc<Mutex<serial::SerialConsole>>,
        serial2: Option<Arc<Mutex<serial::SerialConsole>>>,
    ) -> Self {
        PioBus {
            serial,
            serial2,
            i8042: Mutex::new(i8042::I8042::default()),
            pci: None,
        }
    }

    /// Adds a PCI segment (its configuration ports and BARs).
    pub fn with_pci(mut self, pci: Arc<pci::PciBus>) -> Self {
        self.pci = Some(pci);
        self
    }

    /// Handles an MMIO read; false if no device claims `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.pci.as_ref().is_some_and(|p| p.mmio_read(addr, data))
    }

    /// Handles an MMIO write; `Ok(false)` if no device claims `addr`.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<bool, pci::PciError> {
        match &self.pci {
            Some(p) => p.mmio_write(addr, data),
            None => Ok(false),
        }
    }

    /// Handles an IN; unclaimed ports read as all ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        if (SERIAL_PORT_BASE..SERIAL_PORT_BASE + 8).contains(&port) && data.len() == 1 {
            data[0] = lock(&self.serial).read((port - SERIAL_PORT_BASE) as u8);
        } else if let (Some(s2), true) = (&self.serial2, is_com2(port, data.len())) {
            data[0] = lock(s2).read((port - SERIAL2_PORT_BASE) as u8);
        } else if (port == I8042_DATA_PORT || port == I8042_COMMAND_PORT) && data.len() == 1 {
            data[0] = lock(&self.i8042).read(port);
        } else if let (Some(p), true) = (&self.pci, pci::PciBus::owns_port(port)) {
            p.pio_read(port, data);
        } else {
            data.fill(0xff);
        }
    }

    /// Handles an OUT; unclaimed ports are ignored.
    pub fn write(&self, port: u16, data: &[u8]) -> IoAction {
        if (SERIAL_PORT_BASE..SERIAL_PORT_BASE + 8).contains(&port) && data.len() == 1 {
            lock(&self.serial).write((port - SERIAL_PORT_BASE) as u8, data[0]);
            IoAction::None
        } else if let (Some(s2), true) = (&self.serial2, is_com2(port, data.len())) {
            lock(s2).write((port - SERIAL2_PORT_BASE) as u8, data[0]);
            IoAction::None
        } else if (port == I8042_DATA_PORT || port == I8042_COMMAND_PORT) && data.len() == 1 {
            lock(&self.i8042).write(port, data[0])
        } else if let (Some(p), true) = (&self.pci, pci::PciBus::owns_port(port)) {
            match p.pio_write(port, data) {
                Ok(()) => IoAction::None,
                Err(e) => IoAction::Failed(e.to_string()),
            }
        } else {
            IoAction::None
        }
    }
}

fn is_com2(port: u16, len: usize) -> bool {
    (SERIAL2_PORT_BASE..SERIAL2_PORT_BASE + 8).contains(&port) && len == 1
}
