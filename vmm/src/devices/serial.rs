//! The 16550 UART on COM1 (vm-superio), raising IRQ 4 through an irqfd (or
//! nothing, without an in-kernel irqchip), writing to a host writer.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Errors of the serial console.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Creating the interrupt eventfd failed.
    #[error("cannot create the serial interrupt eventfd: {0}")]
    EventFd(std::io::Error),
    /// Queueing input failed.
    #[error("cannot queue serial input: {0:?}")]
    Input(vm_superio::serial::Error<std::io::Error>),
}

/// The serial interrupt: an eventfd that KVM turns into IRQ 4 (irqfd).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), std::io::Error> {
        self.0.write(1)
    }
}

/// Where the guest's console output goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// The UART as the monitor holds it.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
}

impl SerialConsole {
    /// A console writing to `out`; `irq` is the eventfd to register as irqfd.
    pub fn new(out: ConsoleOut) -> Result<(Self, EventFd), SerialError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let clone = evt.try_clone().map_err(SerialError::EventFd)?;
        Ok((
            SerialConsole {
                uart: Serial::new(IrqTrigger(evt), out),
            },
            clone,
        ))
    }

    /// Register read.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Register write (output bytes go to the writer; errors of the host
    /// writer are not the guest's business and are dropped).
    pub fn write(&mut self, offset: u8, v: u8) {
        let _ = self.uart.write(offset, v);
        if offset == 0 {
            let _ = self.uart.writer_mut().flush();
        }
    }

    /// Queues host input for the guest; returns how many bytes fitted.
    pub fn inject(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        self.uart
            .enqueue_raw_bytes(bytes)
            .map_err(SerialError::Input)
    }
}
