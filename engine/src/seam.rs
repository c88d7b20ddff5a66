//! The seam between the CLI and the two engines (the KVM monitor in
//! `engine-kvm`, QEMU TCG with the plugin in `engine-qemu`): `record`,
//! `run` and `latency` are written once against [`Engine`].
//!
//! A recording goes: [`Engine::prepare`] reads the kernel image into a
//! probe plan; the CLI completes the plan with what both engines share
//! (event classes, `--probe`, `--mode`, the statedump's exec, the output
//! folder, `--trigger`); [`Engine::configure`] adds what this engine's
//! tracer reads from the plan; the plan is written; [`Engine::record`]
//! runs the guest to its end, writes the per-vCPU streams and the run
//! report (`plugin.json` or `kvm.json`) and prints the summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use introspect::userprobe::ResolvedProbe;
use introspect::ProbePlan;
use ltt_writer::RelaydConfig;

use crate::buffers::{BufferMode, Mode};
use crate::guest::{ConsoleDriver, GuestEnd, GuestRun};
use crate::triggers::Armed;

/// An engine's failure, with its own error's chain of causes.
pub type EngineError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `record`'s tracing options, the same for both engines.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub mode: Mode,
    pub freq: u32,
    pub buffer: BufferMode,
    pub flight_mib: u64,
    pub subbuf_size: u64,
    pub num_subbuf: u32,
    pub keep_raw: bool,
    /// First run the same guest untraced, and report the slowdown.
    pub baseline: bool,
}

/// A recording as the CLI prepared it: everything that can be refused is
/// checked, the plan is written, the output folder made.
pub struct Recording<'a> {
    pub plan: ProbePlan,
    /// `--probe`s, resolved with the image's kallsyms.
    pub user: Vec<ResolvedProbe>,
    pub run: &'a GuestRun,
    /// The run's wall-time limit, and whether reaching it is a normal end
    /// (`--duration`).
    pub limit: (Duration, bool),
    /// The output folder as given, and resolved; the plan's file in it.
    pub out: &'a Path,
    pub out_abs: &'a Path,
    pub plan_path: PathBuf,
    pub options: &'a RecordOptions,
    pub relayd: Option<RelaydConfig>,
    /// `--trigger`s, armed: the engine finishes them after its summary.
    pub triggers: Option<Armed>,
    /// A `--disk` boot.
    pub disk: bool,
    /// A `--disk` boot without command: it may end at the first
    /// trigger's snapshot.
    pub disk_without_command: bool,
    /// Time spent preparing (symbols), for the summary.
    pub prep: Duration,
}

/// How a recording ended.
pub struct Recorded {
    pub end: GuestEnd,
    /// Why the trace is incomplete, if the engine's writer says it is.
    pub incomplete: Option<String>,
}

/// One engine: what `record`, `run` and `latency` need of it.
pub trait Engine {
    /// Reads what the engine needs of the kernel image; its probe plan.
    fn prepare(&mut self, kernel: &Path) -> Result<ProbePlan, EngineError>;

    /// The output folder as the plan names it for this engine's tracer.
    fn out_dir(&self, out_abs: &Path) -> Result<String, EngineError> {
        Ok(out_abs.to_string_lossy().into_owned())
    }

    /// Adds to `plan` what this engine's tracer reads from it.
    fn configure(&self, _plan: &mut ProbePlan, _o: &RecordOptions, _r: Option<&RelaydConfig>) {}

    /// Runs the recording to the guest's end: the trace and the run
    /// report written, the summary printed.
    fn record(
        &mut self,
        r: Recording<'_>,
        interrupt: &Arc<AtomicBool>,
        driver: Option<&mut dyn ConsoleDriver>,
    ) -> Result<Recorded, EngineError>;

    /// Runs the guest untraced to its end within `limit` (`hvtrace run`).
    fn run(
        &mut self,
        run: &GuestRun,
        limit: Duration,
        interrupt: &AtomicBool,
    ) -> Result<GuestEnd, EngineError>;
}
