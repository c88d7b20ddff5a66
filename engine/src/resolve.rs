//! A guest's options resolved into a [`GuestRun`]: the host's limits, the
//! image (the default one built when needed, or a given kernel and
//! initramfs checked up front), the memory the image needs, files added
//! with `--add`, and the kernel command line (a disk boot's through
//! [`crate::disk`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use image_builder::add::AddError;
use image_builder::check::CheckError;
use image_builder::ImageError;

use crate::disk::DiskError;
use crate::guest::GuestRun;

/// vCPUs allowed per host CPU (`--vcpus`), on both engines.
pub const MAX_VCPUS_PER_HOST_CPU: u32 = 4;

/// What resolving a guest's options refuses.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("--vcpus {vcpus}: this host runs {cpus} CPU(s); at most {} vCPUs ({MAX_VCPUS_PER_HOST_CPU} per host CPU: each vCPU is a host thread, and more only time-slice)", cpus * MAX_VCPUS_PER_HOST_CPU)]
    Vcpus { vcpus: u32, cpus: u32 },
    #[error("--memory {memory} MiB: this host has {total} MiB (MemTotal in /proc/meminfo)")]
    HostMemory { memory: u32, total: u64 },
    #[error("--add cannot be used with --disk: the image's root replaces the initramfs, and hvtrace adds nothing to the image")]
    AddWithDisk,
    #[error("{} does not exist or is not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("building the default guest image")]
    Build(#[source] ImageError),
    #[error("--memory {memory} MiB: this kernel and initramfs need at least {floor} MiB ({why})")]
    Memory {
        memory: u32,
        floor: u64,
        why: String,
    },
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Add(#[from] AddError),
    #[error(transparent)]
    Disk(#[from] DiskError),
}

type Result<T> = std::result::Result<T, ResolveError>;

/// The options of a guest, as the commands that boot one give them.
#[derive(Clone, Debug)]
pub struct GuestSpec<'a> {
    /// Kernel line of the default image (unused with `kernel`/`initrd`).
    pub kernel_line: &'a str,
    /// A kernel image and initramfs instead of the default image's.
    pub kernel: Option<&'a Path>,
    pub initrd: Option<&'a Path>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// Extra kernel command-line parameters.
    pub append: &'a str,
    /// Guest time follows the instructions executed (QEMU's -icount).
    pub time_transparent: bool,
    /// `--add` specs (HOST_PATH[:GUEST_PATH]).
    pub add: &'a [String],
    /// A disk image to boot, already checked ([`crate::disk::check_image`]).
    pub disk: Option<&'a Path>,
}

/// MemTotal of /proc/meminfo in MiB.
fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Refuses what this host cannot run, before anything is prepared: more
/// vCPUs than [`MAX_VCPUS_PER_HOST_CPU`] per host CPU, more guest memory
/// than the host has.
pub fn check_host_limits(vcpus: u32, memory_mib: u32) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if vcpus > cpus * MAX_VCPUS_PER_HOST_CPU {
        return Err(ResolveError::Vcpus { vcpus, cpus });
    }
    if let Some(total) = host_memory_mib() {
        if u64::from(memory_mib) > total {
            return Err(ResolveError::HostMemory {
                memory: memory_mib,
                total,
            });
        }
    }
    Ok(())
}

impl GuestSpec<'_> {
    /// Resolves the image (building it when needed) into a run
    /// description that runs `command` (none: a disk image's own boot).
    pub fn guest_run(&self, command: &[String]) -> Result<GuestRun> {
        let disk = self.disk;
        if disk.is_some() && !self.add.is_empty() {
            // The disk boot's initramfs hands over to the image's own root:
            // added files would vanish, and the image must stay untouched.
            return Err(ResolveError::AddWithDisk);
        }
        let (kernel, initrd, opened) = match (self.kernel, self.initrd) {
            (Some(k), Some(i)) => {
                for p in [k, i] {
                    if !p.is_file() {
                        return Err(ResolveError::NotAFile(p.to_path_buf()));
                    }
                }
                // Refused here, not by QEMU or a guest that never boots.
                let opened = image_builder::check::open_kernel(k)?;
                image_builder::check::check_initrd(i)?;
                (k.to_path_buf(), i.to_path_buf(), Some(opened))
            }
            _ => {
                let dir =
                    image_builder::build(self.kernel_line, true).map_err(ResolveError::Build)?;
                let initrd = match disk {
                    Some(_) => crate::disk::default_initrd(self.kernel_line)?,
                    None => dir.join("initrd.img"),
                };
                (dir.join("vmlinuz"), initrd, None)
            }
        };
        let image = match opened {
            Some(k) => k,
            // The image build recovered its symbols: a read of the cache.
            None => image_builder::check::open_kernel(&kernel)?,
        };
        let (floor, why) = image_builder::check::memory_floor_mib(&image, &initrd)?;
        if u64::from(self.memory_mib) < floor {
            return Err(ResolveError::Memory {
                memory: self.memory_mib,
                floor,
                why,
            });
        }
        // The added layer has its own bound (add.rs), which counts the base too.
        let initrd = if self.add.is_empty() {
            initrd
        } else {
            image_builder::add::combined_initrd(&initrd, self.add, self.memory_mib)?
        };
        let mut append = self.append.to_string();
        if self.time_transparent {
            // An idle vCPU must not halt: QEMU would jump guest time to the
            // next timer, a jump the instruction count cannot see.
            append.push_str(" idle=poll");
        }
        Ok(GuestRun {
            kernel,
            initrd,
            cmdline: match disk {
                Some(_) => crate::disk::kernel_cmdline(command, &append)?,
                None => crate::guest::kernel_cmdline(command, &append),
            },
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            timeout: self.timeout,
            disk: disk.map(Path::to_path_buf),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(add: &'a [String], disk: Option<&'a Path>) -> GuestSpec<'a> {
        GuestSpec {
            kernel_line: "6.1",
            kernel: None,
            initrd: None,
            vcpus: 1,
            memory_mib: 512,
            timeout: Duration::from_secs(10),
            append: "",
            time_transparent: false,
            add,
            disk,
        }
    }

    #[test]
    fn more_vcpus_than_the_host_runs_are_refused() {
        let e = check_host_limits(100_000, 64).unwrap_err();
        assert!(matches!(e, ResolveError::Vcpus { vcpus: 100_000, .. }));
        assert!(e.to_string().starts_with("--vcpus 100000: this host runs "));
        check_host_limits(1, 64).unwrap();
    }

    #[test]
    fn more_memory_than_the_host_has_is_refused() {
        if host_memory_mib().is_none() {
            return;
        }
        let e = check_host_limits(1, u32::MAX).unwrap_err();
        assert!(matches!(e, ResolveError::HostMemory { .. }), "{e}");
    }

    #[test]
    fn add_with_disk_is_refused_before_any_build() {
        let add = vec!["/bin/true".to_string()];
        let e = spec(&add, Some(Path::new("/nonexistent.img")))
            .guest_run(&[])
            .unwrap_err();
        assert!(matches!(e, ResolveError::AddWithDisk));
    }

    #[test]
    fn a_missing_kernel_or_initrd_is_named() {
        let mut s = spec(&[], None);
        s.kernel = Some(Path::new("/nonexistent/vmlinuz"));
        s.initrd = Some(Path::new("/nonexistent/initrd.img"));
        let e = s.guest_run(&["/bin/true".to_string()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/vmlinuz does not exist or is not a file"
        );
    }
}
