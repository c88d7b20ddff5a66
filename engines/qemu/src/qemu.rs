//! Running a guest under QEMU and watching its console: the part of `run`
//! and `record` that does not depend on tracing. The console is scanned
//! for how the run ends (`engine::guest::MarkerScanner`); a timeout or a
//! signal to hvtrace end the run too, and QEMU is always reaped.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engine::guest::{ConsoleDriver, GuestEnd, GuestRun, MarkerScanner};

/// QEMU could not be started.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start {} (install QEMU >= 10: scripts/install-deps.sh)", qemu_binary().to_string_lossy())]
    Spawn(#[source] std::io::Error),
}

/// `--time-transparent`: each guest instruction is 2^ICOUNT_SHIFT ns of guest
/// time. 8 ns: TCG here runs a syscall-heavy guest at about one instruction
/// per 8-13 ns of wall time, so guest time stays near real time.
pub const ICOUNT_SHIFT: u32 = 3;

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

/// Runs QEMU to the end of the guest command, copying the console to
/// `console_out`, and always reaps QEMU before returning.
pub fn run_qemu(
    cmd: Command,
    timeout: Duration,
    interrupt: &AtomicBool,
    console_out: &mut (dyn Write + Send),
) -> Result<GuestEnd, QemuError> {
    run_qemu_driven(cmd, timeout, interrupt, console_out, None)
}

/// [`run_qemu`] with a driver typing on the guest console.
pub fn run_qemu_driven(
    mut cmd: Command,
    timeout: Duration,
    interrupt: &AtomicBool,
    console_out: &mut (dyn Write + Send),
    mut driver: Option<&mut dyn ConsoleDriver>,
) -> Result<GuestEnd, QemuError> {
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
    engine::interrupt::guest_starting();
    let mut child = cmd.spawn().map_err(QemuError::Spawn)?;
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
            Ok(None) if Instant::now() < deadline && !engine::interrupt::hurry() => {
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
