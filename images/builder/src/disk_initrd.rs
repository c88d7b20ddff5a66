//! The initramfs of a `--disk` boot: busybox, the kernel package's own
//! modules for virtio-pci, virtio-blk and ext4 (with their dependencies,
//! resolved by `scripts/kernel-modules.sh`, which the stock-KVM harness
//! uses too), and an `/init` that loads them, mounts `/dev/vda` and
//! switches root to the image's `/sbin/init`. It writes nothing to the
//! disk beyond what mounting it does (and QEMU keeps that in its overlay).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::apt::{self, AptError};
use crate::cache;
use crate::cpio;
use crate::image::{self, ImageError};
use crate::io_context::{io, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum DiskInitrdError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Io(#[from] IoContext),
    #[error(transparent)]
    RawIo(#[from] std::io::Error),
    #[error("parsing the image's manifest")]
    Manifest(#[source] serde_json::Error),
    #[error("the image's manifest has no {0}")]
    ManifestField(String),
    #[error("{} is missing (hvtrace image build extracts it)", .0.display())]
    NoBusybox(PathBuf),
    #[error("scripts/kernel-modules.sh failed on {} ({status})", deb.display())]
    ModulesScript { deb: PathBuf, status: ExitStatus },
}

type Result<T> = std::result::Result<T, DiskInitrdError>;

/// What the disk boot needs from the kernel package, where it is a module
/// (crc32c_generic: ext4's checksums, asked for by name at mount).
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"];

/// Bump when the layout changes without any input changing.
const LAYOUT_VERSION: u32 = 1;

/// `/init`: a busybox script. Its failure line is what
/// `guest::DISK_INIT_FAILED` matches.
const INIT: &str = r#"#!/bin/sh
# hvtrace's disk boot: load the kernel's own virtio and ext4 modules, mount
# /dev/vda as root and hand over to the image's init, which runs as pid 1.
export PATH=/bin
fail() { echo "hvtrace-disk-init: failed: $*"; poweroff -f; }
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev ||
    fail "cannot mount proc, sys and dev"
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko || fail "module $m did not load"
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -le 200 ] || fail "no /dev/vda 20 s after loading virtio_blk (is the disk attached?)"
    sleep 0.1
done
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda as ext4"
[ -e /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || fail "the disk has no /sbin/init"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#;

/// The applets `/init` uses.
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "cat",
    "sleep",
    "poweroff",
    "switch_root",
];

/// Builds (or finds in the cache) the disk-boot initramfs for the default
/// image of a kernel line; returns its path.
pub fn build(line: &str, verbose: bool) -> Result<PathBuf> {
    let image = image::build(line, verbose)?;
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.join("manifest.json")).map_err(io("reading the image's manifest"))?,
    )
    .map_err(DiskInitrdError::Manifest)?;
    let field = |a: &str, b: &str| -> Result<String> {
        manifest[a][b]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| DiskInitrdError::ManifestField(format!("{a}.{b}")))
    };
    let root = cache::root();
    let kernel = apt::Package {
        name: field("kernel", "package")?,
        version: field("kernel", "version")?,
    };
    let kernel_deb = apt::download(&kernel, &root.join("debs"))?;
    let busybox = root
        .join("extract")
        .join(format!("busybox-static_{}", field("busybox", "version")?))
        .join("bin/busybox");
    if !busybox.is_file() {
        return Err(DiskInitrdError::NoBusybox(busybox));
    }
    let helper = cache::source_tree().join("scripts/kernel-modules.sh");
    let helper_text = std::fs::read(&helper).map_err(io(format!(
        "{} is missing (hvtrace's source tree)",
        helper.display()
    )))?;
    let key_text = format!(
        "{LAYOUT_VERSION} {} {} {} {} {MODULES:?}",
        cache::sha256_file_memo(&kernel_deb)?,
        cache::sha256_file(&busybox)?,
        cache::sha256_hex(&helper_text),
        cache::sha256_hex(INIT.as_bytes()),
    );
    let key = &cache::sha256_hex(key_text.as_bytes())[..16];
    let release = manifest["kernel_release"].as_str().unwrap_or("kernel");
    let dir = root.join("disk-initrd").join(format!("{release}-{key}"));
    let initrd = dir.join("initrd.img");
    if initrd.is_file() {
        return Ok(initrd);
    }
    if verbose {
        eprintln!(
            "hvtrace: building the disk-boot initramfs for {release} (once; cached in {})",
            dir.display()
        );
    }
    let work = root
        .join("disk-initrd")
        .join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(format!("creating {}", work.display())))?;
    let result = assemble(&helper, &kernel_deb, &busybox, &work);
    let bytes = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    std::fs::write(work.join("initrd.img"), &bytes)?;
    std::fs::create_dir_all(dir.parent().expect("cache subfolder"))?;
    // Another build may have finished first; either copy is the same.
    if std::fs::rename(&work, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        let _ = std::fs::remove_dir_all(dir.join("modules"));
    }
    Ok(initrd)
}

/// Takes the modules out of the package and writes the archive.
fn assemble(helper: &Path, deb: &Path, busybox: &Path, work: &Path) -> Result<Vec<u8>> {
    let modules = work.join("modules");
    let status = Command::new("bash")
        .arg(helper)
        .arg(deb)
        .arg(&modules)
        .args(MODULES)
        .status()
        .map_err(io("cannot run bash for scripts/kernel-modules.sh"))?;
    if !status.success() {
        return Err(DiskInitrdError::ModulesScript {
            deb: deb.to_path_buf(),
            status,
        });
    }
    let order = std::fs::read_to_string(modules.join("order"))?;
    // A name with no module file is built into the kernel (6.12 has
    // virtio_pci built in, 6.1 a module): nothing to load for it.
    let names: Vec<&str> = order.lines().filter(|l| !l.is_empty()).collect();
    let mut a = cpio::NewcArchive::default();
    for d in ["bin", "lib", "lib/modules", "proc", "sys", "dev", "newroot"] {
        a.dir(d);
    }
    a.char_dev("dev/console", 0o600, 5, 1);
    a.file("bin/busybox", 0o755, &std::fs::read(busybox)?);
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox");
    }
    for name in &names {
        let ko = std::fs::read(modules.join(format!("{name}.ko")))?;
        a.file(&format!("lib/modules/{name}.ko"), 0o644, &ko);
    }
    a.file("lib/modules/order", 0o644, order.as_bytes());
    a.file("init", 0o755, INIT.as_bytes());
    Ok(cpio::gzip(&a.finish())?)
}
