//! `hvtrace run`: boot the image, run one command in the guest, exit with
//! its status.

use anyhow::{bail, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use engine::guest::{GuestEnd, GuestRun};
use engine::resolve::GuestSpec;
use engine::seam::Engine;
use engine_kvm::seam::KvmEngine;
use engine_qemu::qemu;
use engine_qemu::seam::QemuEngine;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// QEMU's TCG binary translator (runs anywhere; the tracing engine here).
    Qemu,
    /// hvtrace's own KVM monitor (needs hardware virtualization to be fast).
    Kvm,
    /// `kvm` where /dev/kvm runs guest code natively, else `qemu`.
    Auto,
}

/// The options every command that boots a guest shares.
#[derive(clap::Args, Debug, Clone)]
pub struct GuestOptions {
    /// Engine that runs the guest.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Kernel line of the default image (ignored with --kernel/--initrd).
    #[arg(long, default_value = "6.1", value_parser = ["6.1", "6.12"])]
    pub kernel_line: String,
    /// Kernel image (bzImage or ELF vmlinux) instead of the default image's.
    #[arg(long, requires = "initrd")]
    pub kernel: Option<PathBuf>,
    /// Initramfs to go with --kernel (it must contain hvtrace's /init).
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub memory: u32,
    /// Give up after this many seconds of wall time (the guest is stopped).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub timeout: u64,
    /// Extra kernel command-line parameters (e.g. `nokaslr`).
    #[arg(long, default_value = "")]
    pub append: String,
    /// Write the guest's second serial port (/dev/ttyS1) to this file: a
    /// way to take bulk output out of the guest without the console.
    #[arg(long)]
    pub capture: Option<PathBuf>,
    /// QEMU engine: guest time follows the instructions the guest executes
    /// (QEMU's -icount), so the tracer's own time is invisible to the
    /// guest and the trace's timestamps are the guest's time. All vCPUs
    /// then share one host thread, and the guest polls when idle.
    #[arg(long)]
    pub time_transparent: bool,
    /// Put a host file or folder into the guest (repeatable), at GUEST_PATH
    /// or else at its absolute host path. A dynamically linked program
    /// brings its interpreter and the shared libraries its dynamic section
    /// names. The files are appended to the initramfs as a second archive
    /// (cached by content); the image is not rebuilt.
    #[arg(long = "add", value_name = "HOST_PATH[:GUEST_PATH]")]
    pub add: Vec<String>,
    #[command(flatten)]
    pub disk: crate::disk::DiskOptions,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub guest: GuestOptions,
    /// The command to run in the guest, after `--` (optional with --disk).
    #[arg(last = true, required_unless_present = "disk", value_name = "CMD")]
    pub command: Vec<String>,
}

impl GuestOptions {
    /// Resolves the image (building it when needed) into a run description.
    pub fn guest_run(&self, command: &[String]) -> Result<GuestRun> {
        engine::resolve::check_host_limits(self.vcpus, self.memory)?;
        let spec = GuestSpec {
            kernel_line: &self.kernel_line,
            kernel: self.kernel.as_deref(),
            initrd: self.initrd.as_deref(),
            vcpus: self.vcpus,
            memory_mib: self.memory,
            timeout: Duration::from_secs(self.timeout),
            append: &self.append,
            time_transparent: self.time_transparent,
            add: &self.add,
            disk: self.disk.image()?,
        };
        Ok(spec.guest_run(command)?)
    }

    /// QEMU arguments that follow from these options beyond [`GuestRun`].
    pub fn qemu_extra_args(&self) -> Vec<OsString> {
        let mut extra = Vec::new();
        if let Some(path) = &self.capture {
            let mut spec = OsString::from("file:");
            spec.push(path);
            extra.push("-serial".into());
            extra.push(spec);
        }
        extra.extend(self.disk.qemu_args());
        if self.time_transparent {
            extra.push("-icount".into());
            extra.push(format!("shift={},sleep=off", qemu::ICOUNT_SHIFT).into());
        }
        extra
    }

    /// The instruction clock's shift of a time-transparent run.
    pub fn instruction_clock_shift(&self) -> Option<u32> {
        self.time_transparent.then_some(qemu::ICOUNT_SHIFT)
    }

    /// Refuses options the KVM engine cannot honour.
    pub fn check_for_kvm(&self) -> Result<()> {
        if self.time_transparent {
            bail!(
                "--time-transparent needs the QEMU engine (--backend qemu): under KVM the guest's clocks \
                 run on the host's TSC, which keeps running while the monitor handles an exit. \
                 `hvtrace record --backend kvm` reports the tracer time the guest could see instead"
            );
        }
        Ok(())
    }
}

impl GuestOptions {
    /// [`engine::outcome::outcome`], or for a `--disk` boot
    /// [`engine::outcome::disk_outcome`].
    pub fn outcome(
        &self,
        end: GuestEnd,
        limit: (Duration, bool),
        timeout: Duration,
    ) -> Result<i32> {
        if self.disk.disk.is_some() {
            Ok(engine::outcome::disk_outcome(end, limit, timeout)?)
        } else {
            Ok(engine::outcome::outcome(end, timeout)?)
        }
    }
}

/// Picks the engine, saying why when it was asked to choose.
pub fn choose_backend(requested: Backend) -> Result<Backend> {
    match requested {
        Backend::Auto => {
            let (native, why) = hvtrace_backend::native_kvm(
                &image_builder::cache::root(),
                env!("CARGO_PKG_VERSION"),
            );
            let chosen = if native { Backend::Kvm } else { Backend::Qemu };
            eprintln!("hvtrace: backend {chosen:?} ({why})");
            Ok(chosen)
        }
        other => Ok(other),
    }
}

pub fn run(args: RunArgs) -> Result<i32> {
    let interrupt = engine::interrupt::install();
    // The inputs first: a bad image is the same error on every host.
    let run = args.guest.guest_run(&args.command)?;
    let mut engine: Box<dyn Engine> = match choose_backend(args.guest.backend)? {
        Backend::Qemu => Box::new(QemuEngine::new(args.guest.qemu_extra_args())),
        Backend::Kvm => {
            args.guest.check_for_kvm()?;
            // The KVM monitor's `run` writes no --capture file.
            Box::new(KvmEngine::new(None))
        }
        Backend::Auto => unreachable!("choose_backend resolves auto"),
    };
    let limit = args.guest.disk.limit(run.timeout);
    let end = engine
        .run(&run, limit.0, &interrupt)
        .map_err(anyhow::Error::from_boxed)?;
    args.guest.outcome(end, limit, run.timeout)
}
