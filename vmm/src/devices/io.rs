//! What the devices share: the answer of a port write, and the lock
//! that survives a panic on another vCPU thread.

use std::sync::Mutex;

/// What a port write asked the monitor to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoAction {
    /// Nothing beyond the device's own effect.
    None,
    /// The guest asked for a reset through the i8042 (reboot=k).
    Reset,
    /// A device failed (the VM cannot go on correctly).
    Failed(String),
}

/// Locks a device, recovering from a panic on another vCPU thread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
