//! `hvtrace image build --rootfs debian`: a raw ext4 disk image of a
//! minimal Debian 12 with systemd, made by `mmdebstrap` from the Debian
//! mirror the host's apt already uses, then `mke2fs -d` (no loop mount).
//! Cached by content: the suite, the package list, the mirror, the date of
//! the mirror's Release file the host's apt last fetched, mmdebstrap's
//! version; `SOURCE_DATE_EPOCH` is that date, so a rebuild of the same
//! inputs is the same system.

use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::cache;
use crate::io_context::{io, IoContext};
use crate::progress::step;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Io(#[from] IoContext),
    #[error(transparent)]
    RawIo(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("mmdebstrap failed ({status}):\n{tail}")]
    Mmdebstrap { status: ExitStatus, tail: String },
    #[error("mke2fs failed: {stderr}")]
    Mke2fs { stderr: String },
    #[error("dpkg-query on the new system failed: {stderr}")]
    DpkgQuery { stderr: String },
    #[error("du printed no size")]
    NoDuSize,
    #[error("no Debian mirror for {suite} in apt's sources (/etc/apt/sources.list[.d]); hvtrace builds the disk from the mirror the host uses")]
    NoMirror { suite: String },
    #[error("apt has no Release file of {suite} from {mirror} in {} (run `apt-get update`)", lists.display())]
    NoRelease {
        suite: String,
        mirror: String,
        lists: PathBuf,
    },
    #[error("cannot read the Release date {date:?}")]
    BadDate {
        date: String,
        source: std::num::ParseIntError,
    },
}

type Result<T> = std::result::Result<T, RootfsError>;

/// The distribution release the disk holds.
const SUITE: &str = "bookworm";

/// On top of `--variant=minbase`: systemd as init, udev (device units, so
/// the serial getty does not wait 90 s for its tty) and D-Bus (so logind
/// starts): a small system with the usual services, quick to boot under TCG.
const PACKAGES: &[&str] = &["systemd", "systemd-sysv", "udev", "dbus"];

/// Bump when the image's layout changes without any input changing.
const LAYOUT_VERSION: u32 = 1;

/// The file system's size: room for the guest's writes on top of the
/// system (they go to QEMU's overlay, but the file system must have room).
const MIN_SIZE_MIB: u64 = 1024;

#[derive(Serialize)]
struct Manifest {
    suite: &'static str,
    variant: &'static str,
    packages: Vec<&'static str>,
    mirror: String,
    release_date: String,
    mmdebstrap: String,
    installed: Vec<String>,
    size_mib: u64,
    sha256: String,
    layout_version: u32,
}

/// Builds (or finds in the cache) the Debian disk; returns the image path.
pub fn build_debian(verbose: bool) -> Result<PathBuf> {
    let mirror = host_mirror(SUITE)?;
    let release_date = release_date(&mirror, SUITE)?;
    let mmdebstrap = tool_version("mmdebstrap")?;
    let key_text = format!(
        "{LAYOUT_VERSION} {SUITE} minbase {PACKAGES:?} {mirror} {release_date} {mmdebstrap}"
    );
    let key = &cache::sha256_hex(key_text.as_bytes())[..16];
    let disks = cache::root().join("disks");
    let dir = disks.join(format!("debian-{SUITE}-{key}"));
    let image = dir.join("disk.img");
    if dir.join("manifest.json").is_file() && image.is_file() {
        return Ok(image);
    }
    let epoch = unix_time(&release_date)?;
    if verbose {
        eprintln!(
            "hvtrace: building the Debian {SUITE} disk with mmdebstrap from {mirror} (a few minutes, once: cached by content in {})",
            dir.display()
        );
    }
    let work = disks.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(format!("creating {}", work.display())))?;
    let built = make_image(&work, &mirror, epoch, key, verbose);
    let (size_mib, installed) = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let manifest = Manifest {
        suite: SUITE,
        variant: "minbase",
        packages: PACKAGES.to_vec(),
        mirror,
        release_date,
        mmdebstrap,
        installed,
        size_mib,
        sha256: cache::sha256_file(&work.join("disk.img"))?,
        layout_version: LAYOUT_VERSION,
    };
    std::fs::write(
        work.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    // Another build may have finished first; either is the same system.
    if std::fs::rename(&work, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(image)
}

/// mmdebstrap into `work/root`, then the ext4 image `work/disk.img`; the
/// root folder is removed after. Returns the size and the installed
/// packages (`name=version`).
fn make_image(
    work: &Path,
    mirror: &str,
    epoch: i64,
    key: &str,
    verbose: bool,
) -> Result<(u64, Vec<String>)> {
    let root = work.join("root");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--format=directory"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&root)
        .arg(format!("deb {mirror} {SUITE} main"))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io(
        "cannot run mmdebstrap (scripts/install-deps.sh installs it)",
    ))?;
    let pb = step(
        format!("mmdebstrap {SUITE} (minbase + {})", PACKAGES.join(", ")),
        verbose,
    );
    let mut tail = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped stderr"))
        .lines()
        .map_while(std::result::Result::ok)
    {
        if let Some(msg) = line.strip_prefix("I: ") {
            pb.set_message(format!("mmdebstrap: {msg}"));
        }
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    pb.finish_and_clear();
    if !status.success() {
        return Err(RootfsError::Mmdebstrap {
            status,
            tail: tail.join("\n"),
        });
    }
    let installed = installed_packages(&root)?;
    let used_mib = du_mib(&root)?;
    let size_mib = (used_mib * 2).max(MIN_SIZE_MIB).div_ceil(64) * 64;
    let pb = step(format!("mke2fs -t ext4 -d ({size_mib} MiB)"), verbose);
    // A UUID and hash seed from the key, and the release date as the
    // file system's clock, so the same inputs give the same image.
    let h = cache::sha256_hex(format!("uuid {key}").as_bytes());
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "debian", "-U", &uuid])
        .arg("-E")
        .arg(format!("hash_seed={uuid},root_owner=0:0"))
        .arg("-d")
        .arg(&root)
        .arg(work.join("disk.img"))
        .arg(format!("{size_mib}M"))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .output()
        .map_err(io("cannot run mke2fs (e2fsprogs)"))?;
    pb.finish_and_clear();
    if !out.status.success() {
        return Err(RootfsError::Mke2fs {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::remove_dir_all(&root).map_err(io(format!("removing {}", root.display())))?;
    Ok((size_mib, installed))
}

fn installed_packages(root: &Path) -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Package}=${Version}\\n"])
        .output()
        .map_err(io("cannot run dpkg-query"))?;
    if !out.status.success() {
        return Err(RootfsError::DpkgQuery {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn du_mib(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-s", "-m", "-x"])
        .arg(dir)
        .output()
        .map_err(io("cannot run du"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or(RootfsError::NoDuSize)
}

fn tool_version(tool: &str) -> Result<String> {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .map_err(io(format!(
            "cannot run {tool} (scripts/install-deps.sh installs it)"
        )))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The mirror the host's apt uses for `suite` (deb822 `.sources` first,
/// then the one-line format), as install-deps.sh finds it.
pub fn host_mirror(suite: &str) -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    texts.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    for text in &texts {
        if let Some(uri) = mirror_in(text, suite) {
            return Ok(uri);
        }
    }
    Err(RootfsError::NoMirror {
        suite: suite.to_string(),
    })
}

/// The URI of a `deb` source of `suite` (exactly that suite, main component)
/// in a deb822 or one-line sources file.
fn mirror_in(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        let has_main =
            field("Components").is_some_and(|c| c.split_whitespace().any(|c| c == "main"));
        if is_deb && has_suite && has_main {
            if let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next()) {
                return Some(uri.to_string());
            }
        }
    }
    text.lines().find_map(|l| {
        let words: Vec<&str> = l
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .collect();
        (words.len() >= 4 && words[0] == "deb" && words[2] == suite && words[3..].contains(&"main"))
            .then(|| words[1].to_string())
    })
}

/// The `Date:` of the suite's Release file as the host's apt last fetched
/// it (no network: apt's own list).
fn release_date(mirror: &str, suite: &str) -> Result<String> {
    // apt's file name for a URI: no scheme, '/' as '_'.
    let stem = mirror
        .split_once("://")
        .map_or(mirror, |(_, rest)| rest)
        .trim_end_matches('/')
        .replace('/', "_");
    let lists = Path::new("/var/lib/apt/lists");
    for name in ["InRelease", "Release"] {
        let path = lists.join(format!("{stem}_dists_{suite}_{name}"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(date) = text.lines().find_map(|l| l.strip_prefix("Date:")) {
                return Ok(date.trim().to_string());
            }
        }
    }
    Err(RootfsError::NoRelease {
        suite: suite.to_string(),
        mirror: mirror.to_string(),
        lists: lists.to_path_buf(),
    })
}

/// Seconds since the Epoch of a Release file's date (RFC 2822).
fn unix_time(date: &str) -> Result<i64> {
    let out = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .map_err(io("cannot run date"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|source| RootfsError::BadDate {
            date: date.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_skips_other_suites() {
        let text = "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                    Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\n";
        assert_eq!(
            mirror_in(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_in(text, "trixie"), None);
    }

    #[test]
    fn mirror_from_one_line_format() {
        let text = "# comment\ndeb [arch=amd64] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(text, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
    }
}
