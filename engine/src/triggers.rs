//! `hvtrace record --buffer flight-recorder --trigger SPEC`: the host side
//! of flight-recorder triggers, the same for both engines. It turns specs
//! into a trigger plan (symbols and syscall numbers of the image) for the
//! engine's trigger runtime (`record_ctf::triggers`: in the QEMU plugin, or
//! in this process for the KVM monitor), forwards SIGUSR1 to it through a
//! FIFO in the output folder (QEMU itself is never signalled), and prints
//! each snapshot the runtime logs as it happens.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use introspect::plan::ProbePlan;
use introspect::triggers::{Condition, LogEntry, Trigger, TriggerPlan};

use crate::errno::parse_errno;

/// Kernel functions of the panic/oops paths probed by `--trigger panic`
/// (present in Debian's 6.1 and 6.12 kernels): `panic` itself, and
/// `oops_begin`, where x86's `die`, `die_addr` and the page-fault oops start.
pub const PANIC_SYMBOLS: [&str; 2] = ["panic", "oops_begin"];

/// Why `--trigger`s are refused, or cannot be armed.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// A spec this kernel or these options cannot take; says which.
    #[error("{0}")]
    Spec(String),
    #[error("output path")]
    OutputPath(#[source] std::ffi::NulError),
    #[error("creating {}", .0.display())]
    Fifo(PathBuf, #[source] std::io::Error),
    #[error("writing {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("installing the SIGUSR1 handler")]
    Signal(#[source] std::io::Error),
    #[error("starting the trigger thread")]
    Thread(#[source] std::io::Error),
    #[error("{}: the output path must be UTF-8", .0.display())]
    NotUtf8(PathBuf),
}

const PLAN_FILE: &str = "trigger-plan.json";
const FIFO_FILE: &str = "trigger.fifo";
const LOG_FILE: &str = "triggers.log";

/// Triggers of one spec. `symbol` gives a link-time address by name.
pub fn parse_spec(
    spec: &str,
    plan: &ProbePlan,
    symbol: &mut dyn FnMut(&str) -> Option<u64>,
) -> Result<Vec<Trigger>, TriggerError> {
    let trig = |name: &str, cond| Trigger {
        spec: spec.to_string(),
        name: name.to_string(),
        cond,
    };
    match spec.trim() {
        "panic" => {
            let found: Vec<Trigger> = PANIC_SYMBOLS
                .iter()
                .filter_map(|&s| symbol(s).map(|link| trig(s, Condition::Enter { link })))
                .collect();
            if found.is_empty() {
                return Err(TriggerError::Spec(format!(
                    "--trigger panic: none of {PANIC_SYMBOLS:?} is in this kernel's symbols"
                )));
            }
            Ok(found)
        }
        "signal-exit" => {
            if plan.symbols.do_exit == 0 {
                return Err(TriggerError::Spec(
                    "--trigger signal-exit: do_exit is not in this kernel's symbols".into(),
                ));
            }
            Ok(vec![trig(
                "signal-exit",
                Condition::SignalExit {
                    do_exit: plan.symbols.do_exit,
                },
            )])
        }
        s => {
            let Some((name, errno)) = s.strip_prefix("syscall=").and_then(|r| r.split_once(':'))
            else {
                return Err(TriggerError::Spec(format!(
                    "--trigger {s}: expected panic, signal-exit or syscall=NAME:ERRNO"
                )));
            };
            let name = name.trim();
            let native = plan.syscalls.iter().find(|sc| sc.name == name);
            let compat = plan.compat_syscalls.iter().find(|sc| sc.name == name);
            if native.is_none() && compat.is_none() {
                return Err(TriggerError::Spec(format!(
                    "--trigger {s}: no syscall `{name}` in this kernel's syscall tables"
                )));
            }
            let Some(errno) = parse_errno(errno) else {
                return Err(TriggerError::Spec(format!(
                    "--trigger {s}: `{errno}` is not an errno name (e.g. ENOENT) or number"
                )));
            };
            let ret = -i64::from(errno);
            let mut out = Vec::new();
            // A syscall of both tables fires from 64-bit and 32-bit processes.
            if let Some(sc) = native {
                if plan.symbols.do_syscall_64 == 0 {
                    return Err(TriggerError::Spec(format!(
                        "--trigger {s}: do_syscall_64 is not in this kernel's symbols"
                    )));
                }
                out.push(trig(
                    s,
                    Condition::SyscallReturns {
                        do_syscall_64: plan.symbols.do_syscall_64,
                        nr: sc.nr,
                        ret,
                    },
                ));
            }
            if let Some(sc) = compat.filter(|_| plan.symbols.ia32_sys_call != 0) {
                out.push(trig(
                    s,
                    Condition::CompatSyscallReturns {
                        ia32_sys_call: plan.symbols.ia32_sys_call,
                        nr: sc.nr,
                        ret,
                    },
                ));
            }
            if out.is_empty() {
                return Err(TriggerError::Spec(format!("--trigger {s}: `{name}` is a compat syscall only, and ia32_sys_call is not in this kernel's symbols")));
            }
            Ok(out)
        }
    }
}

/// Triggers armed for one recording: the plan file, the SIGUSR1 forwarder
/// and the log printer.
pub struct Armed {
    plan_path: PathBuf,
    out: PathBuf,
    stop: Arc<AtomicBool>,
    /// Snapshots written so far (as the log says), for a run that ends at
    /// the first one.
    snapshots: Arc<AtomicUsize>,
    thread: Option<JoinHandle<usize>>,
    sig: Option<signal_hook::SigId>,
}

/// Removes what triggers of an earlier recording left in `out`.
fn remove_stale(out: &Path) {
    for f in [PLAN_FILE, FIFO_FILE, LOG_FILE] {
        let _ = std::fs::remove_file(out.join(f));
    }
    if let Ok(rd) = std::fs::read_dir(out) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("snapshot-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A recording's `--trigger`s, parsed and resolved against the kernel
/// before anything is written: `None` without the flight recorder
/// (`flight`, which refuses any `--trigger`).
pub fn parse(
    specs: &[String],
    flight: bool,
    plan: &ProbePlan,
    kernel: &Path,
) -> Result<Option<Vec<Trigger>>, TriggerError> {
    if !flight {
        if !specs.is_empty() {
            return Err(TriggerError::Spec(
                "--trigger needs --buffer flight-recorder".into(),
            ));
        }
        return Ok(None);
    }
    let mut image = None;
    let mut symbol = |name: &str| -> Option<u64> {
        if image.is_none() {
            let cache = image_builder::cache::root().join("symbols");
            let opts = guest_symbols::OpenOptions {
                cache_dir: Some(&cache),
                ..Default::default()
            };
            image = guest_symbols::KernelImage::open_with(kernel, &opts).ok();
        }
        image.as_ref().and_then(|k| k.symbols.addr(name))
    };
    let mut triggers: Vec<Trigger> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for spec in specs {
        if seen.insert(spec.trim().to_string()) {
            triggers.extend(parse_spec(spec, plan, &mut symbol)?);
        }
    }
    Ok(Some(triggers))
}

/// Arms parsed triggers in `out` (absolute, prepared): the request FIFO,
/// the trigger plan and the SIGUSR1 watcher; without the flight recorder
/// only clears what an earlier recording left there.
pub fn arm(parsed: Option<Vec<Trigger>>, out: &Path) -> Result<Option<Armed>, TriggerError> {
    remove_stale(out);
    let Some(triggers) = parsed else {
        return Ok(None);
    };
    let fifo = out.join(FIFO_FILE);
    let c = CString::new(fifo.as_os_str().as_bytes()).map_err(TriggerError::OutputPath)?;
    // SAFETY: mkfifo reads the NUL-terminated path it is given.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(TriggerError::Fifo(fifo, std::io::Error::last_os_error()));
    }
    let tp = TriggerPlan {
        triggers,
        request_fifo: path_string(&fifo)?,
        log: path_string(&out.join(LOG_FILE))?,
    };
    let plan_path = out.join(PLAN_FILE);
    std::fs::write(&plan_path, tp.to_json())
        .map_err(|e| TriggerError::Write(plan_path.clone(), e))?;
    let usr1 = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .map_err(TriggerError::Signal)?;
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = Arc::new(AtomicUsize::new(0));
    let thread = {
        let (stop, out, log) = (Arc::clone(&stop), out.to_path_buf(), out.join(LOG_FILE));
        let count = Arc::clone(&snapshots);
        std::thread::Builder::new()
            .name("triggers".into())
            .spawn(move || watch(&usr1, &stop, &fifo, &log, &out, &count))
            .map_err(TriggerError::Thread)?
    };
    Ok(Some(Armed {
        plan_path,
        out: out.to_path_buf(),
        stop,
        snapshots,
        thread: Some(thread),
        sig: Some(sig),
    }))
}

fn path_string(p: &Path) -> Result<String, TriggerError> {
    match p.to_str() {
        Some(s) => Ok(s.to_string()),
        None => Err(TriggerError::NotUtf8(p.to_path_buf())),
    }
}

impl Armed {
    /// The trigger plan file the engine runs.
    pub fn plan_path(&self) -> &Path {
        &self.plan_path
    }

    /// The count of snapshots written so far, updated as they are logged.
    pub fn snapshots(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.snapshots)
    }

    /// After the run: prints the snapshots not printed yet and a summary.
    pub fn finish(mut self) {
        if let Some(id) = self.sig.take() {
            signal_hook::low_level::unregister(id);
        }
        self.stop.store(true, Ordering::Release);
        let n = self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0);
        let _ = std::fs::remove_file(self.out.join(FIFO_FILE));
        if n == 0 {
            eprintln!(
                "hvtrace: record: flight recorder: no trigger fired; the newest window is in {}",
                self.out.join("kernel").display()
            );
        } else {
            eprintln!(
                "hvtrace: record: flight recorder: {n} snapshot(s) (log: {}); the newest window at the end is in {}",
                self.out.join(LOG_FILE).display(),
                self.out.join("kernel").display()
            );
        }
    }
}

/// Forwards SIGUSR1 to the plugin and prints snapshots as they are logged;
/// returns the number of snapshots printed.
fn watch(
    usr1: &AtomicBool,
    stop: &AtomicBool,
    fifo: &Path,
    log: &Path,
    out: &Path,
    count: &AtomicUsize,
) -> usize {
    let mut offset = 0u64;
    let mut partial = String::new();
    let mut printed = 0usize;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if usr1.swap(false, Ordering::AcqRel) {
            forward_usr1(fifo);
        }
        let new = print_new(log, &mut offset, &mut partial, out);
        printed += new;
        count.fetch_add(new, Ordering::AcqRel);
        if stopping {
            return printed;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn forward_usr1(fifo: &Path) {
    // Non-blocking: if the plugin has not opened the FIFO yet, opening fails
    // (ENXIO) instead of waiting.
    let res = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .and_then(|mut f| f.write_all(b"u"));
    match res {
        Ok(()) => eprintln!("hvtrace: record: SIGUSR1: asking the tracer for a snapshot"),
        Err(e) => eprintln!(
            "hvtrace: record: SIGUSR1: the tracer is not listening yet ({e}); no snapshot"
        ),
    }
}

/// Prints the complete lines appended to the log since `offset`.
fn print_new(log: &Path, offset: &mut u64, partial: &mut String, out: &Path) -> usize {
    let Ok(mut f) = std::fs::File::open(log) else {
        return 0;
    };
    let mut text = String::new();
    if f.seek(SeekFrom::Start(*offset)).is_err() || f.read_to_string(&mut text).is_err() {
        return 0;
    }
    *offset += text.len() as u64;
    partial.push_str(&text);
    let mut n = 0;
    while let Some(at) = partial.find('\n') {
        let line: String = partial.drain(..=at).collect();
        match LogEntry::parse(&line) {
            Some(e) => {
                eprintln!("hvtrace: record: {}", describe(&e, out));
                n += 1;
            }
            None => eprintln!("hvtrace: record: trigger log: {}", line.trim()),
        }
    }
    n
}

/// `HH:MM:SS.nnnnnnnnn` UTC of a time in ns since the Epoch.
fn utc(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    let d = s % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        d / 3600,
        d / 60 % 60,
        d % 60,
        ns % 1_000_000_000
    )
}

/// One line about a snapshot.
pub fn describe(e: &LogEntry, out: &Path) -> String {
    let who = match (e.cpu, e.pid, e.tid, &e.comm) {
        (Some(cpu), Some(pid), Some(tid), Some(comm)) => {
            format!(" on vCPU {cpu} in `{comm}` (pid {pid}, tid {tid})")
        }
        _ => String::new(),
    };
    let what = match e.spec.as_str() {
        "sigusr1" => "SIGUSR1 to hvtrace".to_string(),
        "signal-exit" => format!(
            "trigger signal-exit fired (exit code {:#x}: signal {})",
            e.detail,
            e.detail & 0x7f
        ),
        s if s.starts_with("syscall=") => format!("trigger {s} fired (returned {})", e.detail),
        s => format!("trigger {s} fired ({})", e.name),
    };
    let more = if e.coalesced > 0 {
        format!(
            " ({} more hit(s) while it was written share it)",
            e.coalesced
        )
    } else {
        String::new()
    };
    match &e.snapshot {
        Some(dir) => format!(
            "{what}{who} at {} UTC: snapshot {} in {dir}{more}",
            utc(e.unix_ns),
            e.n
        ),
        None => format!(
            "{what}{who} at {} UTC, but the snapshot could not be written (see {})",
            utc(e.unix_ns),
            out.join("plugin.json").display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use introspect::plan::{Symbols, Syscall};

    fn plan() -> ProbePlan {
        ProbePlan {
            symbols: Symbols {
                do_syscall_64: 0xffff_ffff_81a4_3dc0,
                do_exit: 0xffff_ffff_810a_7010,
                ..Symbols::default()
            },
            syscalls: vec![Syscall {
                nr: 257,
                name: "openat".into(),
                ..Syscall::default()
            }],
            compat_syscalls: vec![
                Syscall {
                    nr: 295,
                    name: "openat".into(),
                    ..Syscall::default()
                },
                Syscall {
                    nr: 5,
                    name: "open".into(),
                    ..Syscall::default()
                },
            ],
            ..ProbePlan::default()
        }
    }

    #[test]
    fn errno_names_and_numbers() {
        assert_eq!(parse_errno("ENOENT"), Some(2));
        assert_eq!(parse_errno("enoent"), Some(2));
        assert_eq!(parse_errno("13"), Some(13));
        assert_eq!(parse_errno("-13"), Some(13));
        assert_eq!(parse_errno("ENOTAREALERROR"), None);
        assert_eq!(parse_errno("0"), None);
    }

    #[test]
    fn specs() {
        let p = plan();
        let mut none = |_: &str| None;
        let t = parse_spec("syscall=openat:ENOENT", &p, &mut none).unwrap();
        assert_eq!(
            t[0].cond,
            Condition::SyscallReturns {
                do_syscall_64: 0xffff_ffff_81a4_3dc0,
                nr: 257,
                ret: -2
            }
        );
        // no ia32_sys_call: the native trigger only
        assert_eq!(t.len(), 1);
        let mut p32 = plan();
        p32.symbols.ia32_sys_call = 0xffff_ffff_8100_5630;
        let t = parse_spec("syscall=openat:ENOENT", &p32, &mut none).unwrap();
        assert_eq!(
            t[1].cond,
            Condition::CompatSyscallReturns {
                ia32_sys_call: 0xffff_ffff_8100_5630,
                nr: 295,
                ret: -2
            }
        );
        let t = parse_spec("syscall=open:ENOENT", &p32, &mut none).unwrap();
        assert_eq!(t.len(), 1, "open is compat-only in this plan");
        assert!(parse_spec("syscall=open:ENOENT", &p, &mut none).is_err());
        assert!(parse_spec("syscall=nosuch:ENOENT", &p, &mut none).is_err());
        assert!(parse_spec("syscall=openat:EWHAT", &p, &mut none).is_err());
        assert!(parse_spec("bogus", &p, &mut none).is_err());
        assert!(parse_spec("panic", &p, &mut none).is_err());
        let mut syms = |s: &str| (s == "panic").then_some(0xffff_ffff_81a0_1cb0);
        let t = parse_spec("panic", &p, &mut syms).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "panic");
        let t = parse_spec("signal-exit", &p, &mut none).unwrap();
        assert_eq!(
            t[0].cond,
            Condition::SignalExit {
                do_exit: 0xffff_ffff_810a_7010
            }
        );
    }

    #[test]
    fn utc_format() {
        assert_eq!(
            utc(86_400 * 1_000_000_000 + 3_723_000_000_005),
            "01:02:03.000000005"
        );
    }
}
