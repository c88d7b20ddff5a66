//! Running a guest under QEMU and watching its console: the part of `run`
//! and `record` that does not depend on tracing. The guest's `/init` prints
//! `HVTRACE-EXIT <status>` when the command ends; a kernel panic, a timeout
//! or a signal to hvtrace end the run too, and QEMU is always reaped.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// `--time-transparent`: each guest instruction is 2^ICOUNT_SHIFT ns of guest
/// time. 8 ns: TCG here runs a syscall-heavy guest at about one instruction
/// per 8-13 ns of wall time, so guest time stays near real time.
pub const ICOUNT_SHIFT: u32 = 3;

/// What to boot and how: the engine-independent description of one run.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// `--disk`: the KVM monitor attaches it itself (QEMU gets it through
    /// [`crate::run::GuestOptions::qemu_extra_args`]).
    pub disk: Option<PathBuf>,
}

impl GuestRun {
    /// The same run with another wall-time limit (`--duration`).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        GuestRun {
            timeout,
            ..self.clone()
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEnd {
    /// `/init` reported the command's exit status.
    Exited(i32),
    /// The kernel panicked; the line that said so.
    Panicked(String),
    /// The guest stopped (powered off or QEMU died) without a marker line.
    NoMarker,
    /// The kernel said it powers off (`reboot: Power down`, or without
    /// ACPI that it halts instead): the end of a
    /// `--disk` boot. Other runs report their marker line before it.
    PoweredOff,
    /// The kernel said it restarts (`reboot: Restarting system`); QEMU runs
    /// with `-no-reboot`, so this ends the run too.
    Restarted,
    /// A `--disk` boot without command stopped at its first trigger.
    Triggered,
    /// hvtrace's disk-boot `/init` could not reach the image's init; why.
    DiskInitFailed(String),
    TimedOut,
    Interrupted,
}

/// Scans console output line by line for the marker and for panics.
#[derive(Default)]
pub struct MarkerScanner {
    line: Vec<u8>,
    end: Option<GuestEnd>,
}

impl MarkerScanner {
    /// Feeds console bytes; returns the end of the run once it is known.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<&GuestEnd> {
        for &b in bytes {
            if b == b'\n' {
                self.scan_line();
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        self.end.as_ref()
    }

    fn scan_line(&mut self) {
        if self.end.is_some() {
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("HVTRACE-EXIT ") {
            if let Ok(status) = rest.trim().parse() {
                self.end = Some(GuestEnd::Exited(status));
            }
        } else if let Some(at) = line.find("Kernel panic - not syncing") {
            self.end = Some(GuestEnd::Panicked(line[at..].to_string()));
        } else if line.ends_with("reboot: Power down")
            // On hvtrace's KVM monitor, which has no ACPI to power off
            // with, the kernel halts instead: 6.12 says so, 6.1 turns the
            // request into a halt without a word.
            || line.ends_with("reboot: Power off not available: System halted instead")
            || line.ends_with("reboot: System halted")
        {
            self.end = Some(GuestEnd::PoweredOff);
        } else if line.ends_with("reboot: Restarting system") {
            self.end = Some(GuestEnd::Restarted);
        } else if let Some(why) = line.strip_prefix(DISK_INIT_FAILED) {
            self.end = Some(GuestEnd::DiskInitFailed(why.trim().to_string()));
        }
    }
}

/// How the disk-boot `/init` (`image_builder::disk_initrd`) says it failed.
pub const DISK_INIT_FAILED: &str = "hvtrace-disk-init: failed: ";

/// Encodes the guest command for `/init`: hex of the NUL-joined argv, so any
/// byte survives the kernel's command-line parser.
pub fn encode_command(argv: &[String]) -> String {
    let joined = argv.join("\0");
    joined.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The kernel command line for running `argv` with `/init`.
pub fn kernel_cmdline(argv: &[String], append: &str) -> String {
    let mut cmdline = String::from("console=ttyS0 quiet panic=-1 i8042.noaux");
    if !append.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(append.trim());
    }
    cmdline.push_str(" hvtrace.cmd=");
    cmdline.push_str(&encode_command(argv));
    cmdline
}

/// Set by SIGINT/SIGTERM once a guest runs: ends the run cleanly (QEMU
/// gets SIGTERM so plugins flush what they hold); see [`crate::interrupt`].
pub fn install_interrupt_flag() -> Arc<AtomicBool> {
    crate::interrupt::install()
}

/// The QEMU (TCG) command for a run; `extra` goes last (e.g. `-plugin`).
pub fn qemu_command(run: &GuestRun, extra: &[OsString]) -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args([
        "-M",
        "pc,accel=tcg",
        "-cpu",
        "max",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-display", "none", "-no-reboot"])
    .args(["-m", &run.memory_mib.to_string()])
    .args(["-smp", &run.vcpus.to_string()])
    .arg("-kernel")
    .arg(&run.kernel)
    .arg("-initrd")
    .arg(&run.initrd)
    .args(["-append", &run.cmdline])
    .args([
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ])
    .args(extra);
    cmd
}

/// `$HVTRACE_QEMU` or `qemu-system-x86_64` on the PATH.
pub fn qemu_binary() -> OsString {
    std::env::var_os("HVTRACE_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// Something that types on the guest's console while it runs: it sees the
/// console output as it arrives (and an empty slice at least every 100 ms)
/// and may write to the console input.
pub trait ConsoleDriver {
    fn drive(&mut self, output: &[u8], input: &mut dyn Write) -> std::io::Result<()>;
}

/// Runs QEMU to the end of the guest command, copying the console to
/// `console_out`, and always reaps QEMU before returning.
pub fn run_qemu(
    cmd: Command,
    timeout: Duration,
    interrupt: &AtomicBool,
    console_out: &mut (dyn Write + Send),
) -> anyhow::Result<GuestEnd> {
    run_qemu_driven(cmd, timeout, interrupt, console_out, None)
}

/// [`run_qemu`] with a driver typing on the guest console.
pub fn run_qemu_driven(
    mut cmd: Command,
    timeout: Duration,
    interrupt: &AtomicBool,
    console_out: &mut (dyn Write + Send),
    mut driver: Option<&mut dyn ConsoleDriver>,
) -> anyhow::Result<GuestEnd> {
    use anyhow::Context;
    // Its own process group: a terminal's Ctrl-C reaches hvtrace only, which
    // then stops QEMU in order.
    let stdin = if driver.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            // QEMU dies with hvtrace, whatever ends hvtrace (even SIGKILL);
            // if hvtrace is gone already, QEMU does not start.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                libc::_exit(127);
            }
            Ok(())
        })
    };
    cmd.process_group(0)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    crate::interrupt::guest_starting();
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "cannot start {} (install QEMU >= 10: scripts/install-deps.sh)",
            qemu_binary().to_string_lossy()
        )
    })?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + timeout;
    let mut scanner = MarkerScanner::default();
    let end = loop {
        if interrupt.load(Ordering::Relaxed) {
            break GuestEnd::Interrupted;
        }
        let now = Instant::now();
        if now >= deadline {
            break GuestEnd::TimedOut;
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        let received = match rx.recv_timeout(wait) {
            Ok(bytes) => bytes,
            Err(mpsc::RecvTimeoutError::Timeout) => Vec::new(),
            Err(mpsc::RecvTimeoutError::Disconnected) => break GuestEnd::NoMarker,
        };
        if let (Some(d), Some(input)) = (driver.as_deref_mut(), stdin.as_mut()) {
            // A guest that stopped reading its console ends the run by itself.
            let _ = d.drive(&received, input);
        }
        let _ = console_out.write_all(&received);
        if let Some(end) = scanner.feed(&received) {
            break end.clone();
        }
    };
    let _ = console_out.flush();
    drop(stdin);
    let status = stop_qemu(&mut child, &end);
    // Drain what QEMU printed while stopping (e.g. the power-off lines).
    while let Ok(bytes) = rx.recv_timeout(Duration::from_millis(200)) {
        let _ = console_out.write_all(&bytes);
    }
    let _ = reader.join();
    if let (GuestEnd::NoMarker, Some(status)) = (&end, status) {
        eprintln!("hvtrace: QEMU ended by itself: {status}");
    }
    Ok(end)
}

/// Ends QEMU: a guest that reported its status powers off by itself; any
/// other end gets SIGTERM (QEMU runs its exit path, plugins flush), then
/// SIGKILL if it lingers or a second signal to hvtrace asks to hurry.
/// Returns QEMU's exit status once reaped.
fn stop_qemu(child: &mut Child, end: &GuestEnd) -> Option<std::process::ExitStatus> {
    // A guest that reported its status, powered off or restarted is shutting
    // down by itself; QEMU exits when it is done.
    if !matches!(
        end,
        GuestEnd::Exited(_) | GuestEnd::PoweredOff | GuestEnd::Restarted
    ) {
        signal(child, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline && !crate::interrupt::hurry() => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => break,
        }
    }
    signal(child, libc::SIGKILL);
    child.wait().ok()
}

fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // The pid is our unreaped child, so it cannot have been recycled.
    // SAFETY: kill takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_across_chunks() {
        let mut s = MarkerScanner::default();
        assert!(s.feed(b"boot\r\nHVTRACE-EX").is_none());
        assert_eq!(s.feed(b"IT 42\r\n"), Some(&GuestEnd::Exited(42)));
    }

    #[test]
    fn panic_line_ends_the_run() {
        let mut s = MarkerScanner::default();
        let end = s.feed(b"[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root\n");
        assert!(matches!(end, Some(GuestEnd::Panicked(l)) if l.contains("VFS")));
    }

    #[test]
    fn power_off_and_restart_end_a_disk_boot() {
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[   62.137323] reboot: Power down\r\n"),
            Some(&GuestEnd::PoweredOff)
        );
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[  255.774733] reboot: Power off not available: System halted instead\r\n"),
            Some(&GuestEnd::PoweredOff)
        );
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[ 9.1] reboot: System halted\n"),
            Some(&GuestEnd::PoweredOff)
        );
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[ 9.1] reboot: Restarting system\n"),
            Some(&GuestEnd::Restarted)
        );
        let mut s = MarkerScanner::default();
        let end = s.feed(b"hvtrace-disk-init: failed: no /dev/vda\n");
        assert_eq!(end, Some(&GuestEnd::DiskInitFailed("no /dev/vda".into())));
    }

    #[test]
    fn marker_comes_before_the_power_off() {
        let mut s = MarkerScanner::default();
        let end = s.feed(b"HVTRACE-EXIT 3\n[ 5.0] reboot: Power down\n");
        assert_eq!(end, Some(&GuestEnd::Exited(3)));
    }

    #[test]
    fn command_encoding_keeps_every_byte() {
        let argv = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$i\" > x; ' \\".into(),
        ];
        let hex = encode_command(&argv);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let back: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2], argv[2].as_bytes());
    }
}
