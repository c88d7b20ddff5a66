//! `--disk IMAGE`: boot a distribution from a raw disk image, untouched.
//!
//! The kernel boots with hvtrace's own small initramfs (the kernel
//! package's virtio and ext4 modules, busybox, an `/init` that mounts
//! `/dev/vda` and switches to the image's `/sbin/init`); the image gets no
//! file, unit or agent. QEMU attaches it with `snapshot=on`: the guest sees
//! a normal writable disk (its journal, machine-id, random seed...) and
//! every write lands in a temporary overlay QEMU deletes at exit, while
//! the image file is opened read-only.
//!
//! A command after `--` runs through what the image's systemd already
//! offers on the kernel command line: `systemd.run=` (systemd-run-generator,
//! a oneshot `kernel-command-line.service` after basic.target), with
//! `systemd.wants=multi-user.target` so the image's services start as in a
//! normal boot, and the guest powering off when the command succeeds
//! (rebooting when it fails, which ends QEMU under `-no-reboot` too).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image_builder::disk_initrd::DiskInitrdError;

/// What a disk boot refuses.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("--disk {}: cannot read it", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("--disk {}: not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("--disk {}: {len} bytes is too small for a root file system", .path.display())]
    TooSmall { path: PathBuf, len: u64 },
    #[error("--disk {}: cannot open it", .path.display())]
    Unopenable { path: PathBuf, source: io::Error },
    #[error("--disk {}: the path must be UTF-8 without commas (QEMU's -drive syntax)", .0.display())]
    PathForQemu(PathBuf),
    #[error(
        "with --disk the command goes to the image's systemd on the kernel command line \
         (systemd.run=), which cannot carry the argument {0:?} unchanged: arguments must \
         be non-empty and hold none of \" ' \\ $ % ; or control characters"
    )]
    Unquotable(String),
    #[error("with --disk the command runs as a systemd service: give its absolute path in the image (not {0:?})")]
    NotAbsolute(String),
    #[error("building the disk-boot initramfs")]
    Initrd(#[source] DiskInitrdError),
}

type Result<T> = std::result::Result<T, DiskError>;

/// `disk`, checked before anything boots: a readable regular file large
/// enough for a root file system, at a path QEMU's `-drive` can carry.
pub fn check_image(disk: &Path) -> Result<()> {
    let meta = std::fs::metadata(disk).map_err(|source| DiskError::Unreadable {
        path: disk.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(DiskError::NotAFile(disk.to_path_buf()));
    }
    if meta.len() < 1 << 20 {
        return Err(DiskError::TooSmall {
            path: disk.to_path_buf(),
            len: meta.len(),
        });
    }
    std::fs::File::open(disk).map_err(|source| DiskError::Unopenable {
        path: disk.to_path_buf(),
        source,
    })?;
    path_for_qemu(disk)
}

/// QEMU's `-drive` for the image: virtio-blk, never written.
pub fn qemu_args(disk: &Path) -> Vec<OsString> {
    let mut spec = OsString::from("file=");
    spec.push(disk);
    spec.push(",format=raw,if=virtio,snapshot=on");
    vec!["-drive".into(), spec]
}

/// The wall-time limit of the run and whether reaching it is the normal
/// end (`--duration`) rather than a timeout.
pub fn limit(duration: Option<Duration>, timeout: Duration) -> (Duration, bool) {
    match duration {
        Some(d) if d <= timeout => (d, true),
        _ => (timeout, false),
    }
}

/// QEMU's option parser splits on commas.
fn path_for_qemu(p: &Path) -> Result<()> {
    match p.to_str() {
        Some(s) if !s.contains(',') => Ok(()),
        _ => Err(DiskError::PathForQemu(p.to_path_buf())),
    }
}

/// The kernel command line of a disk boot; the command (if any) goes to
/// the image's systemd as `systemd.run=`.
pub fn kernel_cmdline(command: &[String], append: &str) -> Result<String> {
    let mut cmdline = String::from("console=ttyS0 quiet panic=-1 i8042.noaux rw");
    if !command.is_empty() {
        cmdline.push_str(" systemd.run=\"");
        cmdline.push_str(&systemd_exec_line(command)?);
        cmdline.push_str(
            "\" systemd.run_success_action=poweroff systemd.run_failure_action=reboot \
             systemd.wants=multi-user.target",
        );
    }
    if !append.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(append.trim());
    }
    Ok(cmdline)
}

/// The command as an `ExecStart=` line inside the kernel's double quotes:
/// an argument with a space is single-quoted (systemd unquotes it); what
/// neither the kernel nor systemd could carry unchanged is refused.
fn systemd_exec_line(command: &[String]) -> Result<String> {
    let mut words = Vec::new();
    for arg in command {
        if arg.is_empty()
            || arg
                .chars()
                .any(|c| matches!(c, '"' | '\'' | '\\' | '$' | '%' | ';') || c.is_control())
        {
            return Err(DiskError::Unquotable(arg.clone()));
        }
        if arg.contains(' ') {
            words.push(format!("'{arg}'"));
        } else {
            words.push(arg.clone());
        }
    }
    if !command[0].starts_with('/') {
        return Err(DiskError::NotAbsolute(command[0].clone()));
    }
    Ok(words.join(" "))
}

/// The disk initramfs (hvtrace's own, with the kernel package's modules)
/// of a kernel line's default image, built when needed.
pub fn default_initrd(line: &str) -> Result<PathBuf> {
    image_builder::disk_initrd::build(line, true).map_err(DiskError::Initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_goes_to_systemd_run_quoted() {
        let argv: Vec<String> = ["/bin/sh", "-c", "sleep 1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let line = kernel_cmdline(&argv, "").unwrap();
        assert!(line.contains("systemd.run=\"/bin/sh -c 'sleep 1'\" "));
        assert!(line.contains("systemd.run_success_action=poweroff"));
    }

    #[test]
    fn unquotable_arguments_are_refused() {
        for bad in ["a\"b", "it's", "$HOME", "%n", ""] {
            let argv = vec!["/bin/echo".to_string(), bad.to_string()];
            assert!(kernel_cmdline(&argv, "").is_err(), "{bad:?}");
        }
        assert!(kernel_cmdline(&["echo".to_string()], "").is_err());
    }

    #[test]
    fn images_are_checked_before_the_boot() {
        let dir = std::env::temp_dir().join(format!("hvtrace-disk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            check_image(&dir.join("missing.img")),
            Err(DiskError::Unreadable { .. })
        ));
        assert!(matches!(check_image(&dir), Err(DiskError::NotAFile(_))));
        let small = dir.join("small.img");
        std::fs::write(&small, [0u8; 4096]).unwrap();
        assert!(matches!(
            check_image(&small),
            Err(DiskError::TooSmall { len: 4096, .. })
        ));
        let comma = dir.join("a,b.img");
        std::fs::File::create(&comma)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert!(matches!(
            check_image(&comma),
            Err(DiskError::PathForQemu(_))
        ));
        let good = dir.join("good.img");
        std::fs::File::create(&good)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        check_image(&good).unwrap();
        let args = qemu_args(&good);
        assert_eq!(args[0], "-drive");
        assert!(args[1]
            .to_str()
            .unwrap()
            .ends_with("good.img,format=raw,if=virtio,snapshot=on"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duration_within_the_timeout_is_the_normal_end() {
        let t = Duration::from_secs(60);
        assert_eq!(
            limit(Some(Duration::from_secs(5)), t),
            (Duration::from_secs(5), true)
        );
        assert_eq!(limit(Some(Duration::from_secs(90)), t), (t, false));
        assert_eq!(limit(None, t), (t, false));
    }

    #[test]
    fn no_command_boots_as_is() {
        let line = kernel_cmdline(&[], "systemd.unit=rescue.target").unwrap();
        assert!(!line.contains("systemd.run"));
        assert!(line.ends_with("rw systemd.unit=rescue.target"));
    }
}
