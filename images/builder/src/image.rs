//! The default guest image of a kernel line, from Debian's own packages
//! (kernel, busybox-static) plus the workload programs and `/init` built
//! here, cached by the content of its inputs.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::apt::{self, AptError};
use crate::apt_memo;
use crate::cache;
use crate::compat32;
use crate::cpio;
use crate::io_context::{io, IoContext};
use crate::progress::step;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Io(#[from] IoContext),
    #[error(transparent)]
    RawIo(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("malformed remembered apt answer {0:?}")]
    MalformedAnswer(String),
    #[error("the kernel package holds no boot/vmlinuz-*")]
    NoVmlinuz,
    #[error("building the workload programs failed ({0})")]
    Workloads(ExitStatus),
    #[error("workload program {} is missing", .0.display())]
    NoWorkload(PathBuf),
    #[error("busybox --list-full listed only {0} applets")]
    FewApplets(usize),
}

type Result<T> = std::result::Result<T, ImageError>;

/// The guest programs installed as `/bin/<name>`; `init` becomes `/init`.
pub const WORKLOADS: &[&str] = &[
    "syscalls", "pingpong", "forkexec", "deadlock", "spin", "keyecho", "storm",
];

/// Bump when the initramfs layout changes without any input changing.
const LAYOUT_VERSION: u32 = 1;

/// Read by `/bin/syscalls` on every round: a file with known content.
pub const PROBE_FILE: (&str, &[u8]) = ("etc/hvtrace-probe", b"hvtrace probe file\n");

#[derive(Serialize)]
struct Input {
    package: String,
    version: String,
    sha256: String,
}

#[derive(Serialize)]
struct Manifest {
    kernel_line: String,
    kernel_release: String,
    kernel: Input,
    busybox: Input,
    workloads: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
    layout_version: u32,
}

/// Builds (or finds in the cache) the image of a kernel line; returns its folder.
pub fn build(line: &str, verbose: bool) -> Result<PathBuf> {
    let root = cache::root();
    let debs = root.join("debs");

    let pb = step(
        format!("looking up the newest {line} kernel and busybox-static"),
        verbose,
    );
    std::fs::create_dir_all(&root).map_err(io(format!("cannot create {}", root.display())))?;
    let mut memo = apt_memo::AptMemo::open(root.join("apt-answers.json"));
    let kernel_pkg = memo_package(&mut memo, &format!("newest kernel {line}"), || {
        apt::newest_kernel(line)
    })?;
    let busybox_pkg = memo_package(&mut memo, "candidate busybox-static", || {
        apt::candidate("busybox-static")
    })?;
    pb.finish_and_clear();

    let pb = step(
        format!("fetching {} {}", kernel_pkg.name, kernel_pkg.version),
        verbose,
    );
    let kernel_deb = apt::download(&kernel_pkg, &debs)?;
    pb.set_message(format!("fetching busybox-static {}", busybox_pkg.version));
    let busybox_deb = apt::download(&busybox_pkg, &debs)?;
    pb.finish_and_clear();

    let pb = step("unpacking the kernel and busybox".into(), verbose);
    let extract_dir = root.join("extract");
    let kdir = extract_dir.join(format!("{}_{}", kernel_pkg.name, kernel_pkg.version));
    if find_vmlinuz(&kdir).is_err() {
        apt::extract(&kernel_deb, &["./boot/vmlinuz-*"], &kdir)?;
    }
    let (vmlinuz, release) = find_vmlinuz(&kdir)?;
    let bdir = extract_dir.join(format!("busybox-static_{}", busybox_pkg.version));
    let busybox = bdir.join("bin/busybox");
    if !busybox.is_file() {
        apt::extract(&busybox_deb, &["./bin/busybox"], &bdir)?;
    }
    pb.finish_and_clear();

    let pb = step("building the static workload programs".into(), verbose);
    let bins = workload_binaries(&root)?;
    pb.finish_and_clear();

    let kernel_in = Input {
        package: kernel_pkg.name,
        version: kernel_pkg.version,
        sha256: cache::sha256_file_memo(&kernel_deb)?,
    };
    let busybox_in = Input {
        package: busybox_pkg.name,
        version: busybox_pkg.version,
        sha256: cache::sha256_file_memo(&busybox_deb)?,
    };
    let mut workloads = Vec::new();
    for (name, path) in &bins {
        workloads.push((name.clone(), cache::sha256_file(path)?));
    }
    workloads.push(("compat32".into(), cache::sha256_hex(&compat32::elf())));
    let key_text = format!(
        "{LAYOUT_VERSION} {} {} {workloads:?}",
        kernel_in.sha256, busybox_in.sha256
    );
    let key = &cache::sha256_hex(key_text.as_bytes())[..16];
    let image_dir = root.join("images").join(format!("{release}-{key}"));
    if image_dir.join("manifest.json").is_file() {
        return Ok(image_dir);
    }

    let pb = step(format!("building the initramfs for {release}"), verbose);
    let initrd = build_initramfs(&busybox, &bins)?;
    let tmp = root
        .join("images")
        .join(format!(".tmp-{release}-{key}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(format!("cannot create {}", tmp.display())))?;
    std::fs::copy(&vmlinuz, tmp.join("vmlinuz")).map_err(io("copying vmlinuz"))?;
    std::fs::write(tmp.join("initrd.img"), &initrd).map_err(io("writing initrd.img"))?;
    let manifest = Manifest {
        kernel_line: line.to_string(),
        kernel_release: release.clone(),
        kernel: kernel_in,
        busybox: busybox_in,
        workloads,
        outputs: vec![
            ("vmlinuz".into(), cache::sha256_file(&tmp.join("vmlinuz"))?),
            ("initrd.img".into(), cache::sha256_hex(&initrd)),
        ],
        layout_version: LAYOUT_VERSION,
    };
    std::fs::write(
        tmp.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    // Another build may have finished first; either copy is the same image.
    if std::fs::rename(&tmp, &image_dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    prune_old_images(&root.join("images"), &release, KEEP_IMAGES);
    pb.finish_and_clear();
    Ok(image_dir)
}

/// A package lookup, asked of apt only when its inputs changed since the
/// last answer (stored as `NAME=VERSION`).
fn memo_package(
    memo: &mut apt_memo::AptMemo,
    question: &str,
    ask: impl FnOnce() -> std::result::Result<apt::Package, AptError>,
) -> Result<apt::Package> {
    let answer = memo.get_or(question, || {
        ask().map(|p| format!("{}={}", p.name, p.version))
    })?;
    let (name, version) = answer
        .split_once('=')
        .ok_or_else(|| ImageError::MalformedAnswer(answer.clone()))?;
    Ok(apt::Package {
        name: name.to_string(),
        version: version.to_string(),
    })
}

/// Images kept per kernel release; older ones (from other workload builds)
/// are removed when a new one is made.
const KEEP_IMAGES: usize = 3;

fn prune_old_images(images: &Path, release: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(images) else {
        return;
    };
    let prefix = format!("{release}-");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, old) in dirs.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(old);
    }
}

fn find_vmlinuz(dir: &Path) -> Result<(PathBuf, String)> {
    let boot = dir.join("boot");
    for entry in std::fs::read_dir(&boot).map_err(io(format!("reading {}", boot.display())))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            return Ok((path.clone(), release.to_string()));
        }
    }
    Err(ImageError::NoVmlinuz)
}

/// Builds the workload programs statically (or takes them from
/// `$HVTRACE_WORKLOADS_DIR`) and returns (name, path) for init and each workload.
fn workload_binaries(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let names = std::iter::once("init").chain(WORKLOADS.iter().copied());
    let dir = match std::env::var_os("HVTRACE_WORKLOADS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let target = root.join("workloads-target");
            let triple = "x86_64-unknown-linux-gnu";
            let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .current_dir(cache::source_tree())
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "-p",
                    "workloads",
                    "--target",
                    triple,
                ])
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env(
                    "RUSTFLAGS",
                    "-C target-feature=+crt-static -C strip=debuginfo",
                )
                .status()
                .map_err(io("cannot run cargo to build the workload programs"))?;
            if !status.success() {
                return Err(ImageError::Workloads(status));
            }
            target.join(triple).join("release")
        }
    };
    names
        .map(|n| {
            let p = dir.join(n);
            if p.is_file() {
                Ok((n.to_string(), p))
            } else {
                Err(ImageError::NoWorkload(p))
            }
        })
        .collect()
}

fn build_initramfs(busybox: &Path, bins: &[(String, PathBuf)]) -> Result<Vec<u8>> {
    let mut a = cpio::NewcArchive::default();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root",
    ] {
        a.dir(d);
    }
    a.char_dev("dev/console", 0o600, 5, 1);
    a.char_dev("dev/null", 0o666, 1, 3);
    a.file("bin/busybox", 0o755, &std::fs::read(busybox)?);
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io("cannot run busybox --list-full on the host"))?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox" && !l.contains(".."))
        .collect();
    applets.sort();
    applets.dedup();
    if applets.len() < 50 {
        return Err(ImageError::FewApplets(applets.len()));
    }
    for applet in &applets {
        if !WORKLOADS.iter().any(|w| applet.ends_with(&format!("/{w}"))) {
            a.symlink(applet, "/bin/busybox");
        }
    }
    for (name, path) in bins {
        let data = std::fs::read(path)?;
        if name == "init" {
            a.file("init", 0o755, &data);
        } else {
            a.file(&format!("bin/{name}"), 0o755, &data);
        }
    }
    a.file("bin/compat32", 0o755, &compat32::elf());
    a.file(PROBE_FILE.0, 0o644, PROBE_FILE.1);
    a.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    Ok(cpio::gzip(&a.finish())?)
}
