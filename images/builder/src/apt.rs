//! Fetching Debian packages with the host's own apt configuration
//! (`apt-get download`): no mirror is named here.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("`{0}` is not installed; hvtrace fetches guest packages with Debian's apt (scripts/install-deps.sh)")]
    Missing(&'static str),
    #[error("no package matching {pattern} in apt's package lists (run `apt-get update`; on Debian 12 the 6.12 kernels come from bookworm-security)")]
    NotFound { pattern: String },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A package chosen for download.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
}

fn run(cmd: &mut Command, name: &'static str) -> Result<String, AptError> {
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AptError::Missing(name),
        _ => AptError::Failed {
            cmd: format!("{cmd:?}"),
            stderr: e.to_string(),
        },
    })?;
    if !out.status.success() {
        return Err(AptError::Failed {
            cmd: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The candidate version apt would install of `name`.
pub fn candidate(name: &str) -> Result<Package, AptError> {
    let policy = run(
        Command::new("apt-cache").args(["policy", name]),
        "apt-cache",
    )?;
    let version = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| v != "(none)")
        .ok_or_else(|| AptError::NotFound {
            pattern: name.to_string(),
        })?;
    Ok(Package {
        name: name.to_string(),
        version,
    })
}

/// The newest kernel package of a line: the highest ABI/patch number among
/// the package names apt knows.
pub fn newest_kernel(line: &str) -> Result<Package, AptError> {
    let (prefix, suffix) = match line {
        "6.1" => ("linux-image-6.1.0-", "-amd64-unsigned"),
        "6.12" => ("linux-image-6.12.", "+deb12-amd64-unsigned"),
        other => {
            return Err(AptError::NotFound {
                pattern: format!("kernel line {other} (known: 6.1, 6.12)"),
            })
        }
    };
    let names = run(
        Command::new("apt-cache").args(["pkgnames", prefix]),
        "apt-cache",
    )?;
    let best = names
        .lines()
        .filter_map(|n| {
            let middle = n.strip_prefix(prefix)?.strip_suffix(suffix)?;
            middle.parse::<u32>().ok().map(|k| (k, n.to_string()))
        })
        .max();
    match best {
        Some((_, name)) => candidate(&name),
        None => Err(AptError::NotFound {
            pattern: format!("{prefix}*{suffix}"),
        }),
    }
}

/// Downloads a package's .deb into `dir` (once) and returns its path.
pub fn download(pkg: &Package, dir: &Path) -> Result<PathBuf, AptError> {
    let io = |source| AptError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // apt names files NAME_VERSION_ARCH.deb with ':' escaped as %3a.
    let stem = format!("{}_{}_", pkg.name, pkg.version.replace(':', "%3a"));
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&stem) && n.ends_with(".deb"))
            })
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    run(
        Command::new("apt-get").current_dir(dir).args([
            "download",
            "-q",
            &format!("{}={}", pkg.name, pkg.version),
        ]),
        "apt-get",
    )?;
    find().ok_or_else(|| AptError::Failed {
        cmd: format!("apt-get download {}", pkg.name),
        stderr: "no .deb appeared".into(),
    })
}

/// Extracts the members of a .deb whose paths match `patterns` (tar
/// wildcards, e.g. `./boot/vmlinuz-*`) into `dest`.
pub fn extract(deb: &Path, patterns: &[&str], dest: &Path) -> Result<(), AptError> {
    std::fs::create_dir_all(dest).map_err(|source| AptError::Io {
        path: dest.into(),
        source,
    })?;
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards {}",
        patterns
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    run(
        Command::new("sh")
            .args(["-c", &script, "sh"])
            .arg(deb)
            .arg(dest),
        "dpkg-deb",
    )?;
    Ok(())
}
