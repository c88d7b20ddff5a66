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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hvtrace-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_file_in_the_folder_s_place_is_refused() {
        let dir = scratch("file");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("out");
        std::fs::write(&file, b"x").unwrap();
        let e = check_output(&file, true).unwrap_err();
        assert!(matches!(e, OutputError::NotAFolder(_)));
        assert!(prepare_output(&file, true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_earlier_trace_needs_force_and_is_then_cleared() {
        let dir = scratch("trace");
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        std::fs::create_dir_all(dir.join("raw")).unwrap();
        std::fs::write(dir.join("kernel/metadata"), b"/* CTF 1.8 */").unwrap();
        std::fs::write(dir.join("plugin.json"), b"{}").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let e = prepare_output(&dir, false).unwrap_err();
        assert!(matches!(e, OutputError::HoldsATrace(_)));
        assert!(e
            .to_string()
            .ends_with("pass --force to replace it, or choose another folder"));
        let abs = prepare_output(&dir, true).unwrap();
        assert!(abs.is_absolute());
        assert!(!dir.join("kernel").exists() && !dir.join("raw").exists());
        assert!(!dir.join("plugin.json").exists());
        // What the recording does not write stays.
        assert!(dir.join("notes.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_folder_is_created() {
        let dir = scratch("new").join("a/b");
        let abs = prepare_output(&dir, false).unwrap();
        assert!(abs.is_dir());
        assert!(!abs.join(".hvtrace-write-test").exists());
        std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
    }
}
