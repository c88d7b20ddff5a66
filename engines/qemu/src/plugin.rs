//! The TCG plugin's side of a recording on the host: where the plugin is,
//! what the probe plan tells it beyond the probes (buffers, relayd, the
//! instruction clock), and the `-plugin` argument that hands QEMU the
//! plan file (and the trigger plan's).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use engine::buffers::BufferMode;
use introspect::ProbePlan;
use ltt_writer::RelaydConfig;

/// Why the plugin cannot be handed to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    CurrentExe(#[from] std::io::Error),
    #[error("the TCG plugin is not built (looked for {0:?}); build it with `cargo build -p hvtrace-tcg` (same profile as hvtrace)")]
    NotBuilt(Vec<PathBuf>),
    #[error("{}: paths given to QEMU must be UTF-8 without commas", .0.display())]
    Path(PathBuf),
}

/// The plugin: `$HVTRACE_TCG_PLUGIN`, or `libhvtrace_tcg.so` next to the
/// hvtrace binary (cargo puts both in `target/<profile>/`; test binaries
/// live one level down in `deps/`).
pub fn locate_plugin() -> Result<PathBuf, PluginError> {
    if let Some(p) = std::env::var_os("HVTRACE_TCG_PLUGIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("libhvtrace_tcg.so");
        if cand.is_file() {
            return Ok(cand);
        }
        tried.push(cand);
    }
    Err(PluginError::NotBuilt(tried))
}

/// A path as QEMU's option parser takes it.
pub fn path_str(p: &Path) -> Result<&str, PluginError> {
    match p.to_str() {
        Some(s) if !s.contains(',') => Ok(s),
        _ => Err(PluginError::Path(p.to_path_buf())),
    }
}

/// What the plugin reads from the plan besides the probes.
pub struct PluginOptions<'a> {
    pub buffer: BufferMode,
    pub flight_mib: u64,
    pub subbuf_size: u64,
    pub num_subbuf: u32,
    /// `--keep-raw`: also the raw record streams.
    pub raw: bool,
    pub relayd: Option<&'a RelaydConfig>,
    /// `--time-transparent`: the instruction clock's shift.
    pub instruction_clock_shift: Option<u32>,
}

/// Puts `o` into the plan the plugin reads.
pub fn configure(plan: &mut ProbePlan, o: &PluginOptions) {
    plan.buffer = match o.buffer {
        BufferMode::Lossless => "lossless",
        BufferMode::Discard => "discard",
        BufferMode::FlightRecorder => "flight-recorder",
    }
    .into();
    plan.flight_bytes = o.flight_mib * (1 << 20);
    plan.subbuf_size = o.subbuf_size;
    plan.num_subbuf = o.num_subbuf;
    plan.raw = o.raw;
    if let Some(c) = o.relayd {
        plan.relayd = c.endpoint.to_string();
        plan.relayd_session = c.session.clone();
        plan.relayd_hostname = c.hostname.clone();
    }
    plan.instruction_clock_shift = o.instruction_clock_shift;
}

/// QEMU's `-plugin` option for `plugin` with the plan file at
/// `plan_path`, and the trigger plan's with `--trigger`.
pub fn plugin_args(
    plugin: &Path,
    plan_path: &Path,
    triggers: Option<&Path>,
) -> Result<[OsString; 2], PluginError> {
    let mut arg = OsString::from(format!(
        "{},plan={}",
        path_str(plugin)?,
        path_str(plan_path)?
    ));
    if let Some(t) = triggers {
        arg.push(format!(",triggers={}", path_str(t)?));
    }
    Ok(["-plugin".into(), arg])
}
