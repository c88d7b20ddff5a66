//! `hvtrace latency`: how long a key takes to cross the whole system. The
//! host types a byte on the guest's serial console at a known instant; the
//! trace shows it arrive (serial interrupt), wake the reading process, return
//! from its `read`, go out through its `write`, and the host sees the echo.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::guest::ConsoleDriver;
use crate::report::{self, model::Ev, model::Kind, LatencyStats};

#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub guest: crate::run::GuestOptions,
    /// The byte to type (one ASCII character other than `q`).
    #[arg(long, default_value = "k")]
    pub key: char,
    /// Repetitions.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub count: u32,
    /// Pause between an echo and the next key, in milliseconds. A key that
    /// arrives before the program is back in its read (its echo's write may
    /// outlast the echo itself) has no wake-up hop.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Trace folder (default: a fresh folder under the system's temp dir).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The guest program that echoes its console (must print "keyecho: ready"
    /// when it starts reading, and end on `q`).
    #[arg(last = true, value_name = "CMD", default_values_t = vec!["/bin/keyecho".to_string()])]
    pub command: Vec<String>,
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One key typed and (maybe) echoed, in host wall-clock ns.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Injection {
    pub typed: u64,
    pub echoed: Option<u64>,
}

/// Types the key `count` times, each after the previous echo, then `q`.
pub struct KeyTyper {
    key: u8,
    count: u32,
    interval: Duration,
    ready: bool,
    tail: Vec<u8>,
    next_at: u64,
    pending: Option<u64>,
    pub injections: Vec<Injection>,
    quit_sent: bool,
}

const READY: &[u8] = b"keyecho: ready";
/// An echo not seen by then counts as lost, and the next key goes.
const ECHO_TIMEOUT_NS: u64 = 5_000_000_000;

impl KeyTyper {
    pub fn new(key: u8, count: u32, interval: Duration) -> Self {
        KeyTyper {
            key,
            count,
            interval,
            ready: false,
            tail: Vec::new(),
            next_at: 0,
            pending: None,
            injections: Vec::new(),
            quit_sent: false,
        }
    }
}

impl ConsoleDriver for KeyTyper {
    fn drive(&mut self, output: &[u8], input: &mut dyn Write) -> std::io::Result<()> {
        let now = now_unix_ns();
        if !self.ready {
            self.tail.extend_from_slice(output);
            if self.tail.windows(READY.len()).any(|w| w == READY) {
                self.ready = true;
                // Let the program reach its first read.
                self.next_at = now + 200_000_000;
            } else {
                let keep = self.tail.len().saturating_sub(READY.len());
                self.tail.drain(..keep);
            }
            return Ok(());
        }
        if let Some(typed) = self.pending {
            if output.contains(&self.key) {
                self.injections.push(Injection {
                    typed,
                    echoed: Some(now),
                });
                self.pending = None;
                self.next_at = now + self.interval.as_nanos() as u64;
            } else if now - typed > ECHO_TIMEOUT_NS {
                self.injections.push(Injection {
                    typed,
                    echoed: None,
                });
                self.pending = None;
            }
            return Ok(());
        }
        if (self.injections.len() as u32) < self.count {
            if now >= self.next_at {
                let typed = now_unix_ns();
                input.write_all(&[self.key])?;
                input.flush()?;
                self.pending = Some(typed);
            }
        } else if !self.quit_sent {
            input.write_all(b"q")?;
            input.flush()?;
            self.quit_sent = true;
        }
        Ok(())
    }
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

#[derive(Serialize)]
struct Output {
    trace: String,
    reader_tid: i32,
    keys: Vec<Hops>,
    /// Per hop (in order of HOP_NAMES): statistics of the offset from typing.
    hops: Vec<(String, Option<LatencyStats>)>,
    end_to_end: Option<LatencyStats>,
    lost: usize,
}

pub fn run(args: LatencyArgs) -> Result<i32> {
    if !args.key.is_ascii() || args.key == 'q' {
        bail!("--key must be one ASCII character other than q");
    }
    if args.guest.disk.disk.is_some() {
        bail!(
            "--disk is for `run` and `record`: latency types on the console of hvtrace's own image"
        );
    }
    let dir = match &args.output {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("hvtrace-latency-{}", std::process::id())),
    };
    let record = crate::cmd_record::RecordArgs::for_command(
        args.guest.clone(),
        dir.clone(),
        args.command.clone(),
    );
    let mut typer = KeyTyper::new(
        args.key as u8,
        args.count,
        Duration::from_millis(args.interval_ms),
    );
    let status = crate::cmd_record::run_driven(record, Some(&mut typer))?;
    if status != 0 {
        bail!("{} exited with status {status}", args.command.join(" "));
    }

    let (trace, events, _) = report::build(&dir)?;
    let reader = events
        .iter()
        .find_map(|e| match &e.kind {
            Kind::Exec { tid, filename } if filename.ends_with(&args.command[0]) => Some(*tid),
            _ => None,
        })
        .or_else(|| {
            events
                .iter()
                .find(|e| args.command[0].ends_with(&e.comm) && e.tid > 0)
                .map(|e| e.tid)
        })
        .context("the echoing process does not appear in the trace")?;
    let keys = follow(&events, trace.clock_offset_ns, reader, &typer.injections);
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
    let lost = typer
        .injections
        .iter()
        .filter(|i| i.echoed.is_none())
        .count();
    let out = Output {
        trace: dir.display().to_string(),
        reader_tid: reader,
        end_to_end: hops[6].1.clone(),
        keys,
        hops,
        lost,
    };
    let mut o = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut o, &out)?;
        writeln!(o)?;
        return Ok(0);
    }
    writeln!(
        o,
        "Key {:?} typed {} times into pid {} ({}); trace in {}",
        args.key,
        typer.injections.len(),
        reader,
        args.command[0],
        out.trace
    )?;
    if let Some(first) = out.keys.first() {
        writeln!(o, "\nFirst key, hop by hop (time since the key was typed):")?;
        writeln!(o, "  {:>12}  key typed on the host's serial line", "0")?;
        for (name, off) in HOP_NAMES.iter().zip(first.offsets()) {
            let t = off.map_or("not seen".to_string(), report::dur);
            writeln!(o, "  {t:>12}  {name}")?;
        }
    }
    writeln!(o, "\nOver {} keys (offset from typing):", out.keys.len())?;
    writeln!(
        o,
        "  {:<44} {:>10} {:>10} {:>10} {:>6}",
        "hop", "p50", "p99", "max", "seen"
    )?;
    for (name, s) in &out.hops {
        match s {
            Some(s) => writeln!(
                o,
                "  {name:<44} {:>10} {:>10} {:>10} {:>6}",
                report::dur(s.p50_ns),
                report::dur(s.p99_ns),
                report::dur(s.max_ns),
                s.count
            )?,
            None => writeln!(o, "  {name:<44} {:>10}", "not seen")?,
        }
    }
    if let Some(e) = &out.end_to_end {
        writeln!(
            o,
            "\nEnd to end: p50 {}, p99 {}, max {} ({} lost)",
            report::dur(e.p50_ns),
            report::dur(e.p99_ns),
            report::dur(e.max_ns),
            out.lost
        )?;
    }
    Ok(0)
}
