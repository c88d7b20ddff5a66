//! Key latency: how long a key took to cross the whole system. The host
//! typed a byte on the guest's serial console at a known instant (an
//! [`Injection`]); the trace shows it arrive (serial interrupt), wake the
//! reading process, return from its `read`, go out through its `write`, and
//! the host saw the echo. This module follows each key through the trace's
//! events; typing the keys is the caller's business.

use std::io::Write;

use serde::Serialize;

use crate::analysis::LatencyStats;
use crate::duration::dur;
use crate::model::{Ev, Kind};

#[derive(Debug, thiserror::Error)]
pub enum LatencyError {
    #[error("the echoing process does not appear in the trace")]
    NoReader,
}

/// One key typed and (maybe) echoed, in host wall-clock ns.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Injection {
    pub typed: u64,
    pub echoed: Option<u64>,
}

/// The hops one key goes through, as offsets from the instant it was typed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Hops {
    pub typed_unix_ns: u64,
    pub serial_irq: Option<u64>,
    pub wakeup: Option<u64>,
    pub runnable: Option<u64>,
    pub scheduled: Option<u64>,
    pub read_returns: Option<u64>,
    pub write_entry: Option<u64>,
    pub write_returns: Option<u64>,
    pub echo_at_host: Option<u64>,
}

pub const HOP_NAMES: [&str; 8] = [
    "serial interrupt (irq_handler_entry ttyS0)",
    "reader woken (sched_waking)",
    "reader runnable (sched_wakeup)",
    "reader scheduled in (sched_switch)",
    "read() returns the byte",
    "write() of the echo begins",
    "write() returns",
    "echo reaches the host (leaves during write)",
];

impl Hops {
    pub fn offsets(&self) -> [Option<u64>; 8] {
        [
            self.serial_irq,
            self.wakeup,
            self.runnable,
            self.scheduled,
            self.read_returns,
            self.write_entry,
            self.write_returns,
            self.echo_at_host,
        ]
    }
}

/// Follows each injection through the trace. `events` are in trace clock
/// time; `offset` turns them into Unix ns.
pub fn follow(events: &[Ev], offset: u64, reader_tid: i32, injections: &[Injection]) -> Vec<Hops> {
    injections
        .iter()
        .map(|inj| {
            let start = inj.typed.saturating_sub(offset);
            let mut h = Hops {
                typed_unix_ns: inj.typed,
                ..Default::default()
            };
            let mut at = events.partition_point(|e| e.ts < start);
            let rel = |ts: u64| ts.saturating_sub(start);
            let mut find = |pred: &dyn Fn(&Ev) -> bool| -> Option<u64> {
                let i = events[at..].iter().position(pred)? + at;
                at = i;
                Some(rel(events[i].ts))
            };
            h.serial_irq = find(
                &|e| matches!(&e.kind, Kind::IrqEntry { name, .. } if name.starts_with("ttyS")),
            );
            h.wakeup = find(&|e| matches!(e.kind, Kind::Waking { tid } if tid == reader_tid));
            h.runnable = find(&|e| matches!(e.kind, Kind::Wakeup { tid } if tid == reader_tid));
            h.scheduled = find(
                &|e| matches!(e.kind, Kind::Switch { next_tid, .. } if next_tid == reader_tid),
            );
            h.read_returns = find(&|e| {
                e.tid == reader_tid
                    && matches!(&e.kind, Kind::SysExit { name, ret } if name == "read" && *ret == 1)
            });
            h.write_entry = find(&|e| {
                e.tid == reader_tid
                    && matches!(&e.kind, Kind::SysEntry { name, .. } if name == "write")
            });
            h.write_returns = find(&|e| {
                e.tid == reader_tid
                    && matches!(&e.kind, Kind::SysExit { name, .. } if name == "write")
            });
            h.echo_at_host = inj.echoed.map(|t| t.saturating_sub(inj.typed));
            h
        })
        .collect()
}

/// The thread that read the keys: the one that exec'd `program`, else the
/// first one whose name ends `program`.
pub fn find_reader(events: &[Ev], program: &str) -> Result<i32, LatencyError> {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Kind::Exec { tid, filename } if filename.ends_with(program) => Some(*tid),
            _ => None,
        })
        .or_else(|| {
            events
                .iter()
                .find(|e| program.ends_with(&e.comm) && e.tid > 0)
                .map(|e| e.tid)
        })
        .ok_or(LatencyError::NoReader)
}

/// Every key followed through the trace, and the statistics of each hop.
#[derive(Serialize)]
pub struct KeyLatency {
    pub trace: String,
    pub reader_tid: i32,
    pub keys: Vec<Hops>,
    /// Per hop (in order of HOP_NAMES): statistics of the offset from typing.
    pub hops: Vec<(String, Option<LatencyStats>)>,
    pub end_to_end: Option<LatencyStats>,
    pub lost: usize,
}

impl KeyLatency {
    /// Follows `injections` through `events` (trace clock time; `offset`
    /// turns them into Unix ns) as read by thread `reader_tid`.
    pub fn new(
        trace: String,
        events: &[Ev],
        offset: u64,
        reader_tid: i32,
        injections: &[Injection],
    ) -> KeyLatency {
        let keys = follow(events, offset, reader_tid, injections);
        let hops = HOP_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v: Vec<u64> = keys.iter().filter_map(|k| k.offsets()[i]).collect();
                (
                    name.to_string(),
                    (!v.is_empty()).then(|| LatencyStats::from(v)),
                )
            })
            .collect::<Vec<_>>();
        let lost = injections.iter().filter(|i| i.echoed.is_none()).count();
        KeyLatency {
            trace,
            reader_tid,
            end_to_end: hops[6].1.clone(),
            keys,
            hops,
            lost,
        }
    }

    /// The result as text: the first key hop by hop, then every hop's
    /// percentiles over all keys.
    pub fn write_text(&self, key: char, program: &str, o: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            o,
            "Key {:?} typed {} times into pid {} ({}); trace in {}",
            key,
            self.keys.len(),
            self.reader_tid,
            program,
            self.trace
        )?;
        if let Some(first) = self.keys.first() {
            writeln!(o, "\nFirst key, hop by hop (time since the key was typed):")?;
            writeln!(o, "  {:>12}  key typed on the host's serial line", "0")?;
            for (name, off) in HOP_NAMES.iter().zip(first.offsets()) {
                let t = off.map_or("not seen".to_string(), dur);
                writeln!(o, "  {t:>12}  {name}")?;
            }
        }
        writeln!(o, "\nOver {} keys (offset from typing):", self.keys.len())?;
        writeln!(
            o,
            "  {:<44} {:>10} {:>10} {:>10} {:>6}",
            "hop", "p50", "p99", "max", "seen"
        )?;
        for (name, s) in &self.hops {
            match s {
                Some(s) => writeln!(
                    o,
                    "  {name:<44} {:>10} {:>10} {:>10} {:>6}",
                    dur(s.p50_ns),
                    dur(s.p99_ns),
                    dur(s.max_ns),
                    s.count
                )?,
                None => writeln!(o, "  {name:<44} {:>10}", "not seen")?,
            }
        }
        if let Some(e) = &self.end_to_end {
            writeln!(
                o,
                "\nEnd to end: p50 {}, p99 {}, max {} ({} lost)",
                dur(e.p50_ns),
                dur(e.p99_ns),
                dur(e.max_ns),
                self.lost
            )?;
        }
        Ok(())
    }
}
