//! The KVM engine behind the seam (`engine::seam::Engine`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use engine::guest::{ConsoleDriver, GuestEnd, GuestRun};
use engine::seam::{Engine, EngineError, Recorded, Recording};
use introspect::ProbePlan;

use crate::monitor::run_until;
use crate::record::{self, Prepared, RecordError};

/// hvtrace's own KVM monitor.
#[derive(Default)]
pub struct KvmEngine {
    /// `--capture`: the guest's second serial port to this file.
    capture: Option<PathBuf>,
    /// The kernel made ready by [`Engine::prepare`], less its plan.
    prepared: Option<Prepared>,
}

impl KvmEngine {
    pub fn new(capture: Option<PathBuf>) -> Self {
        KvmEngine {
            capture,
            prepared: None,
        }
    }
}

impl Engine for KvmEngine {
    fn prepare(&mut self, kernel: &Path) -> Result<ProbePlan, EngineError> {
        let mut p = Prepared::of(kernel)?;
        let plan = std::mem::take(&mut p.plan);
        self.prepared = Some(p);
        Ok(plan)
    }

    fn record(
        &mut self,
        r: Recording<'_>,
        interrupt: &Arc<AtomicBool>,
        driver: Option<&mut dyn ConsoleDriver>,
    ) -> Result<Recorded, EngineError> {
        let trigger_plan =
            record::trigger_plan(r.triggers.as_ref().map(|a| a.plan_path()), &r.plan)
                .map_err(RecordError::from)?;
        let Some(mut prepared) = self.prepared.take() else {
            return Err("the KVM engine records a kernel it prepared".into());
        };
        prepared.plan = r.plan;
        // --duration: the run's wall-time limit, reaching it a normal end.
        let run = r.run.with_timeout(r.limit.0);
        let end = record::record(
            record::Recording {
                prepared,
                user: r.user,
                triggers: trigger_plan,
                run: &run,
                out: r.out,
                out_abs: r.out_abs,
                options: r.options,
                relayd: r.relayd,
                capture: self.capture.as_deref(),
                prep: r.prep,
            },
            interrupt,
            driver,
        )?;
        if let Some(a) = r.triggers {
            a.finish();
        }
        if !engine::outcome::normal_end(&end, r.disk, r.limit.1) {
            eprintln!(
                "hvtrace: record: the run ended early ({end:?}); the trace in {} holds everything up to that point",
                r.out.display()
            );
        }
        Ok(Recorded {
            end,
            incomplete: None,
        })
    }

    fn run(
        &mut self,
        run: &GuestRun,
        limit: Duration,
        interrupt: &AtomicBool,
    ) -> Result<GuestEnd, EngineError> {
        Ok(run_until(
            &run.with_timeout(limit),
            self.capture.as_deref(),
            interrupt,
        )?)
    }
}
