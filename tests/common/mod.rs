//! Shared helpers of the end-to-end tests: guest images come from the
//! project's own `hvtrace image build`, never from files placed by hand.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Path of the `hvtrace` binary cargo built for these tests.
pub fn hvtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hvtrace"))
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds (or reuses from the cache) the default image of a kernel line
/// ("6.1" or "6.12") and returns its folder, which holds `vmlinuz`,
/// `initrd.img` and `manifest.json`.
pub fn image_dir(line: &str) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = hvtrace()
        .args(["image", "build", "--kernel-line", line])
        .output()
        .expect("run hvtrace image build");
    assert!(
        out.status.success(),
        "hvtrace image build --kernel-line {line} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let last = stdout
        .lines()
        .last()
        .expect("image build printed its folder");
    PathBuf::from(last.trim())
}

/// Where this host can run hvtrace's KVM monitor at full speed.
#[derive(Debug, Clone)]
pub enum KvmHost {
    /// `/dev/kvm` runs guest code natively (VT-x/AMD-V): run hvtrace here.
    Native,
    /// No hardware virtualization, but QEMU >= 10 whose TCG emulates SVM:
    /// run hvtrace inside `scripts/stock-kvm.sh`'s L1 guest.
    StockKvm,
    /// Neither; the reason.
    Unavailable(String),
}

fn qemu_major() -> Option<u32> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split("version ").nth(1)?;
    v.split('.').next()?.trim().parse().ok()
}

/// The verdict for this host, found once per test binary.
pub fn kvm_host() -> KvmHost {
    static HOST: std::sync::OnceLock<KvmHost> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let kvm = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm");
        let why_not_native = match kvm {
            Ok(_) => {
                let p = vmm::probe_native_virtualization();
                if p.native {
                    return KvmHost::Native;
                }
                p.reason
            }
            Err(e) => format!("/dev/kvm: {e}"),
        };
        match qemu_major() {
            Some(v) if v >= 10 => KvmHost::StockKvm,
            Some(v) => KvmHost::Unavailable(format!(
                "{why_not_native}; QEMU {v} cannot host a stock KVM (TCG's nested SVM needs QEMU >= 10)"
            )),
            None => KvmHost::Unavailable(format!("{why_not_native}; no qemu-system-x86_64")),
        }
    })
    .clone()
}

/// `hvtrace` on a KVM that runs guest code at full speed: here with
/// hardware virtualization, else inside the stock-KVM harness (whose exit
/// status, stdout, stderr and written files are the command's own). None,
/// after printing "skipped: ..." with the reason, when neither exists.
pub fn hvtrace_on_kvm() -> Option<Command> {
    on_kvm(&[])
}

/// [`hvtrace_on_kvm`] where hvtrace can reach this host's loopback, with
/// the address it reaches it by: 127.0.0.1 natively, QEMU's user-mode
/// gateway 10.0.2.2 from the stock-KVM harness's L1 (`--net`).
pub fn hvtrace_on_kvm_with_host_loopback() -> Option<(Command, &'static str)> {
    let host = match kvm_host() {
        KvmHost::StockKvm => "10.0.2.2",
        _ => "127.0.0.1",
    };
    Some((on_kvm(&["--net"])?, host))
}

fn on_kvm(harness_args: &[&str]) -> Option<Command> {
    match kvm_host() {
        KvmHost::Native => Some(hvtrace()),
        KvmHost::StockKvm => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stock-kvm.sh");
            let mut c = Command::new(script);
            // A test's guest runs for about a minute: a hung L1 costs at
            // most this much of the suite (the harness says so and why).
            c.args(["--timeout", "420"])
                .args(harness_args)
                .arg("--hvtrace")
                .arg(env!("CARGO_BIN_EXE_hvtrace"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_hvtrace"));
            Some(c)
        }
        KvmHost::Unavailable(why) => {
            println!("skipped: no KVM that runs guest code natively ({why})");
            None
        }
    }
}

/// [`hvtrace_on_kvm`] for a test that runs one guest there, with the
/// machine lock held shared for as long as the guard lives.
pub fn hvtrace_on_kvm_locked() -> Option<(Command, MachineGuard)> {
    let cmd = hvtrace_on_kvm()?;
    Some((cmd, machine_lock(false)))
}

/// Held shared by tests that run a guest in the stock-KVM harness (QEMU
/// TCG on every core) and exclusively by those whose guest runs in this
/// host's emulating /dev/kvm (KVM-PVM) against a wall-clock timeout: those
/// would reach less far in their time with an L1 beside them.
pub fn machine_lock(exclusive: bool) -> MachineGuard {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    if exclusive {
        MachineGuard::Exclusive(LOCK.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        MachineGuard::Shared(LOCK.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// See [`machine_lock`].
pub enum MachineGuard {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(std::sync::RwLockWriteGuard<'static, ()>),
}

/// `text` (a guest console and hvtrace's stderr in one stream) without
/// hvtrace's own lines, which may land in the middle of a console line
/// (seen: "s<hvtrace: record: trigger ...>tatus=137").
pub fn without_hvtrace_lines(text: &str) -> String {
    let mut console = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("hvtrace: ") {
        console.push_str(&rest[..at]);
        rest = rest[at..].split_once('\n').map_or("", |(_, after)| after);
    }
    console.push_str(rest);
    console
}
