//! The QEMU engine behind the seam (`engine::seam::Engine`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::guest::{ConsoleDriver, GuestEnd, GuestRun};
use engine::seam::{Engine, EngineError, RecordOptions, Recorded, Recording};
use introspect::ProbePlan;
use ltt_writer::RelaydConfig;

use crate::plugin::{self, PluginError, PluginOptions};
use crate::qemu::{self, QemuError};
use crate::summary::{self, QemuRun};

/// Why the QEMU engine could not prepare or run a recording.
#[derive(Debug, thiserror::Error)]
pub enum SeamError {
    #[error("preparing the probe plan")]
    Plan(#[source] engine::plan::PlanError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
}

/// QEMU TCG, with the hvtrace plugin when it records.
pub struct QemuEngine {
    /// QEMU's arguments beyond the run's (serial capture, disk, -icount).
    extra: Vec<OsString>,
    plugin: Option<PathBuf>,
    instruction_clock_shift: Option<u32>,
}

impl QemuEngine {
    /// For untraced runs.
    pub fn new(extra: Vec<OsString>) -> Self {
        QemuEngine {
            extra,
            plugin: None,
            instruction_clock_shift: None,
        }
    }

    /// For recordings: the plugin given, or else found
    /// ([`plugin::locate_plugin`]).
    pub fn tracing(
        extra: Vec<OsString>,
        plugin: Option<PathBuf>,
        instruction_clock_shift: Option<u32>,
    ) -> Result<Self, SeamError> {
        let plugin = match plugin {
            Some(p) => p,
            None => plugin::locate_plugin()?,
        };
        Ok(QemuEngine {
            extra,
            plugin: Some(plugin),
            instruction_clock_shift,
        })
    }
}

impl Engine for QemuEngine {
    fn prepare(&mut self, kernel: &Path) -> Result<ProbePlan, EngineError> {
        Ok(engine::plan::build_plan(kernel).map_err(SeamError::Plan)?)
    }

    fn out_dir(&self, out_abs: &Path) -> Result<String, EngineError> {
        Ok(plugin::path_str(out_abs)
            .map_err(SeamError::from)?
            .to_string())
    }

    fn configure(&self, plan: &mut ProbePlan, o: &RecordOptions, relayd: Option<&RelaydConfig>) {
        plugin::configure(
            plan,
            &PluginOptions {
                buffer: o.buffer,
                flight_mib: o.flight_mib,
                subbuf_size: o.subbuf_size,
                num_subbuf: o.num_subbuf,
                raw: o.keep_raw,
                relayd,
                instruction_clock_shift: self.instruction_clock_shift,
            },
        );
    }

    fn record(
        &mut self,
        r: Recording<'_>,
        interrupt: &Arc<AtomicBool>,
        driver: Option<&mut dyn ConsoleDriver>,
    ) -> Result<Recorded, EngineError> {
        let run = r.run;
        let plugin = self.plugin.as_deref().unwrap_or(Path::new(""));
        let mut extra = self.extra.clone();
        extra.extend(
            plugin::plugin_args(
                plugin,
                &r.plan_path,
                r.triggers.as_ref().map(|t| t.plan_path()),
            )
            .map_err(SeamError::from)?,
        );
        let baseline = if r.options.baseline {
            let cmd = qemu::qemu_command(run, &self.extra);
            let t = Instant::now();
            let end = qemu::run_qemu(cmd, run.timeout, interrupt, &mut std::io::sink())
                .map_err(SeamError::from)?;
            Some((t.elapsed(), end))
        } else {
            None
        };
        let cmd = qemu::qemu_command(run, &extra);
        let t1 = Instant::now();
        // A disk boot without a command may end at the first trigger's snapshot.
        let until_trigger = engine::stop::StopOnSnapshot::wanted(
            r.disk_without_command,
            r.triggers.as_ref(),
            interrupt,
        );
        let stop = until_trigger.as_ref().map_or(&**interrupt, |u| u.flag());
        let end = qemu::run_qemu_driven(cmd, r.limit.0, stop, &mut std::io::stderr(), driver)
            .map_err(SeamError::from)?;
        let end = until_trigger.map_or(end.clone(), |u| u.finish(end));
        let wall = t1.elapsed();

        let normal_end = engine::outcome::normal_end(&end, r.disk, r.limit.1);
        let incomplete = summary::print_qemu(&QemuRun {
            out: r.out,
            out_abs: r.out_abs,
            wall,
            prep: r.prep,
            baseline: baseline.as_ref(),
            end: &end,
            normal_end,
        });
        if let Some(t) = r.triggers {
            t.finish();
        }
        Ok(Recorded { end, incomplete })
    }

    fn run(
        &mut self,
        run: &GuestRun,
        limit: Duration,
        interrupt: &AtomicBool,
    ) -> Result<GuestEnd, EngineError> {
        let cmd = qemu::qemu_command(run, &self.extra);
        Ok(
            qemu::run_qemu(cmd, limit, interrupt, &mut std::io::stderr())
                .map_err(SeamError::from)?,
        )
    }
}
