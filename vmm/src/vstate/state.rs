//! The observable state of a vCPU thread.

/// Observable state of a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    /// Created, thread not yet running guest code.
    Created = 0,
    /// In or around KVM_RUN.
    Running = 1,
    /// Parked by pause() or a handler's `Action::Pause`.
    Paused = 2,
    /// Thread has left its loop.
    Stopped = 3,
}

impl VcpuState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => VcpuState::Created,
            1 => VcpuState::Running,
            2 => VcpuState::Paused,
            _ => VcpuState::Stopped,
        }
    }
}
