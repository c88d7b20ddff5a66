//! `hvtrace latency`: how long a key takes to cross the whole system. The
//! host types a byte on the guest's serial console at a known instant, then
//! `hvtrace_report::latency` follows it through the trace: serial
//! interrupt, the reader's wake-up, its `read` and `write`, the echo.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hvtrace_report::latency::{find_reader, Injection, KeyLatency};

use engine::guest::ConsoleDriver;

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
    let record = crate::record_args::RecordArgs::for_command(
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

    let (trace, events, _) = hvtrace_report::build(&dir)
        .with_context(|| format!("reading the trace in {}", dir.display()))?;
    let reader = find_reader(&events, &args.command[0])?;
    let out = KeyLatency::new(
        dir.display().to_string(),
        &events,
        trace.clock_offset_ns,
        reader,
        &typer.injections,
    );
    let mut o = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut o, &out)?;
        writeln!(o)?;
        return Ok(0);
    }
    out.write_text(args.key, &args.command[0], &mut o)?;
    Ok(0)
}
