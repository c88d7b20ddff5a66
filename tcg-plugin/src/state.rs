//! What the plugin's callbacks share: the global state set once at
//! install, and the notes that end up in plugin.json.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use introspect::runtime::StatedumpGate;
use introspect::{Kernel, ProbePlan};

use crate::clock::TraceClock;
use crate::sample::Sampler;
use crate::slots::Slot;

/// Read-only after install, shared by all vCPU threads.
pub(crate) struct Global {
    pub(crate) plan: ProbePlan,
    pub(crate) kernel: OnceLock<Kernel>,
    pub(crate) strings: Vec<u8>,
    pub(crate) slots: Box<[Slot]>,
    pub(crate) statedump: StatedumpGate,
    pub(crate) clock: TraceClock,
    /// Wall time at the trace clock's zero.
    pub(crate) epoch_unix_ns: u64,
    pub(crate) hits: AtomicU64,
    pub(crate) reg_names: Mutex<Vec<String>>,
    pub(crate) notes: Mutex<Vec<String>>,
    pub(crate) writer: Mutex<Option<ltt_writer::TraceWriter>>,
    pub(crate) producers: Mutex<Vec<Option<ltt_writer::Producer>>>,
    pub(crate) sampler: Option<Sampler>,
}

pub(crate) static G: OnceLock<Global> = OnceLock::new();

/// `e` and its sources, as anyhow's `{:#}` prints them.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) fn note(s: String) {
    if let Some(g) = G.get() {
        if let Ok(mut n) = g.notes.lock() {
            if n.len() < 200 {
                n.push(s);
            }
        }
    }
}

pub(crate) fn now_ns(g: &Global) -> u64 {
    g.clock.now_ns()
}
