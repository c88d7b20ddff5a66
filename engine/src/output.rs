//! The output folder of a recording, the same on both engines: refused up
//! front when it would fail or lose data later, and cleared of an earlier
//! recording's files.

use std::path::{Path, PathBuf};

/// Why `-o DIR` cannot take this recording.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("-o {}: exists and is not a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error("-o {}: holds a trace already (kernel/metadata); pass --force to replace it, or choose another folder", .0.display())]
    HoldsATrace(PathBuf),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("-o {}: cannot write in it", path.display())]
    NotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("resolving {}", path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a recording writes in its folder, engine by engine: cleared
/// before a new one, so that nothing of an earlier recording passes for
/// this one's.
const RECORDING_DIRS: [&str; 2] = ["raw", "kernel"];
const RECORDING_FILES: [&str; 5] = [
    "plugin.json",
    "plugin-started",
    "plugin-error",
    "kvm.json",
    "probe-plan.json",
];

/// Makes `out` ready for a recording, refusing up front what would fail
/// or lose data later: a file in its place, a folder that cannot be
/// written, or one that holds a trace already (unless `force`). Returns
/// its absolute path.
pub fn prepare_output(out: &Path, force: bool) -> Result<PathBuf, OutputError> {
    check_output(out, force)?;
    let path = || out.to_path_buf();
    std::fs::create_dir_all(out).map_err(|source| OutputError::Create {
        path: path(),
        source,
    })?;
    let probe = out.join(".hvtrace-write-test");
    std::fs::write(&probe, b"").map_err(|source| OutputError::NotWritable {
        path: path(),
        source,
    })?;
    let _ = std::fs::remove_file(&probe);
    for d in RECORDING_DIRS {
        let _ = std::fs::remove_dir_all(out.join(d));
    }
    for f in RECORDING_FILES {
        let _ = std::fs::remove_file(out.join(f));
    }
    std::fs::canonicalize(out).map_err(|source| OutputError::Resolve {
        path: path(),
        source,
    })
}

/// The refusals of [`prepare_output`] that need no writing, for a run to
/// make before its other checks (and before a boot).
pub fn check_output(out: &Path, force: bool) -> Result<(), OutputError> {
    if out.exists() && !out.is_dir() {
        return Err(OutputError::NotAFolder(out.to_path_buf()));
    }
    if !force && out.join("kernel/metadata").exists() {
        return Err(OutputError::HoldsATrace(out.to_path_buf()));
    }
    Ok(())
}
