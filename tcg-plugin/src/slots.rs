//! Per-vCPU state reached from trap callbacks without locks: one slot per
//! vCPU, only ever touched by the thread running that vCPU (QEMU runs a
//! vCPU's callbacks on its own thread; with round-robin TCG all vCPUs share
//! one thread, still never concurrently), and by the exit hook once all
//! vCPUs have stopped.

use std::cell::UnsafeCell;
use std::fs::File;
use std::io::{BufWriter, Write};

use introspect::codec::{encode, MAX_RECORD};
use introspect::{Record, VcpuState};

use crate::vcpu::QemuVcpu;

/// Everything one vCPU's traps use.
pub struct VcpuRuntime {
    pub ctx: QemuVcpu,
    pub state: VcpuState,
    pub rec: Record,
    pub out: Option<BufWriter<File>>,
    pub producer: Option<ltt_writer::Producer>,
    pub ctf_errors: u64,
    pub first_ctf_error: Option<ltt_writer::ProduceError>,
    pub events: u64,
    /// Nanoseconds spent in trap callbacks (decode + write).
    pub busy_ns: u64,
    /// Host time of the last sample (sample mode).
    pub last_sample_ns: u64,
    pub write_errors: u64,
    pub by_kind: [u64; 16],
    /// Events written, by `Record::event_tag`.
    pub by_event: [u64; 16],
}

impl VcpuRuntime {
    /// Appends the record in `self.rec` to this vCPU's stream (no allocation:
    /// the writer's buffer was allocated when the vCPU started).
    pub fn emit(&mut self) {
        self.events += 1;
        if let Some(c) = self.by_event.get_mut(usize::from(self.rec.event_tag())) {
            *c += 1;
        }
        if let Some(w) = self.out.as_mut() {
            let mut buf = [0u8; MAX_RECORD];
            let n = encode(&self.rec, &mut buf);
            if w.write_all(&buf[..n]).is_err() {
                self.write_errors += 1;
            }
        }
        if let Some(p) = self.producer.as_mut() {
            if let Err(e) = crate::ctf::emit(p, &self.rec) {
                self.ctf_errors += 1;
                if self.first_ctf_error.is_none() {
                    self.first_ctf_error = Some(e);
                }
            }
        }
    }

    /// Flushes the stream.
    pub fn flush(&mut self) {
        if let Some(w) = self.out.as_mut() {
            if w.flush().is_err() {
                self.write_errors += 1;
            }
        }
    }
}

/// One vCPU's slot.
pub struct Slot(UnsafeCell<Option<VcpuRuntime>>);

// SAFETY: a slot is only accessed by the thread running its vCPU, or by the
// exit hook after every vCPU stopped (see the module comment).
unsafe impl Sync for Slot {}

impl Slot {
    pub fn empty() -> Self {
        Self(UnsafeCell::new(None))
    }

    /// The slot's content.
    ///
    /// # Safety
    /// Only the thread running this vCPU (or the exit hook once all vCPUs
    /// stopped) may call this, and not re-entrantly.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut Option<VcpuRuntime> {
        // SAFETY: exclusivity is the caller's contract.
        unsafe { &mut *self.0.get() }
    }
}
