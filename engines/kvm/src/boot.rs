//! The kernel image the monitor boots, and how: a bzImage through its own
//! decompressor (KASLR as on a real boot), or an ELF vmlinux at its
//! link-time addresses (given, or extracted where KVM emulates guest code).

use std::path::{Path, PathBuf};

/// Why the kernel cannot be prepared for the monitor.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("reading {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("creating {}", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("extracting the ELF vmlinux from {}", .0.display())]
    Extract(PathBuf, #[source] guest_symbols::image::ImageError),
    #[error("writing {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("renaming {} to {}", .0.display(), .1.display())]
    Rename(PathBuf, PathBuf, #[source] std::io::Error),
}

/// The kernel image the monitor boots, and how.
#[derive(Debug, Clone)]
pub struct KvmBoot {
    /// A bzImage (booted through its own decompressor) or an ELF vmlinux.
    pub kernel: PathBuf,
    /// The bzImage's decompressor runs, so the kernel is randomized as on a
    /// real boot (KASLR) and the slide is known only once found in the
    /// running guest. False for an ELF: it runs at its link-time addresses.
    pub randomized: bool,
    /// `/dev/kvm` runs guest code natively (not an instruction emulator).
    pub native: bool,
}

impl KvmBoot {
    /// Decides how `kernel` boots on this host's KVM. A bzImage boots as a
    /// distribution's does, through its decompressor, except on a KVM that
    /// emulates guest code (KVM-PVM), where decompressing tens of MiB would
    /// take minutes: there the ELF vmlinux is extracted (cached by content)
    /// and booted at its link-time addresses, and a warning says so.
    pub fn prepare(kernel: &Path) -> Result<Self, BootError> {
        let probe = vmm::probe_native_virtualization();
        if !probe.native {
            eprintln!(
                "hvtrace: warning: {}; the guest runs in KVM's instruction emulator",
                probe.reason
            );
        }
        // A file too short for the magic is judged (and refused) by the
        // image parser later, with its own message.
        let mut magic = [0u8; 4];
        std::fs::File::open(kernel)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
            .map_err(|e| BootError::Read(kernel.to_path_buf(), e))?;
        if magic == *b"\x7fELF" {
            return Ok(KvmBoot {
                kernel: kernel.to_path_buf(),
                randomized: false,
                native: probe.native,
            });
        }
        if probe.native {
            return Ok(KvmBoot {
                kernel: kernel.to_path_buf(),
                randomized: true,
                native: true,
            });
        }
        eprintln!("hvtrace: warning: booting the ELF vmlinux extracted from {} (no decompressor, no KASLR): the emulator would take minutes to decompress it", kernel.display());
        let bytes = std::fs::read(kernel).map_err(|e| BootError::Read(kernel.to_path_buf(), e))?;
        Ok(KvmBoot {
            kernel: extracted_vmlinux(kernel, &bytes)?,
            randomized: false,
            native: false,
        })
    }
}

/// The ELF vmlinux inside the bzImage `bytes` (read from `kernel`),
/// extracted once into the cache, keyed by content.
fn extracted_vmlinux(kernel: &Path, bytes: &[u8]) -> Result<PathBuf, BootError> {
    let dir = image_builder::cache::root().join("vmlinux");
    let out = dir.join(format!("{}.elf", image_builder::cache::sha256_hex(bytes)));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(|e| BootError::CreateDir(dir.clone(), e))?;
    let elf = guest_symbols::image::extract_vmlinux(bytes)
        .map_err(|e| BootError::Extract(kernel.to_path_buf(), e))?;
    // A per-process temporary name: concurrent runs extract side by side,
    // and whichever renames last leaves the same bytes.
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, elf).map_err(|e| BootError::Write(tmp.clone(), e))?;
    std::fs::rename(&tmp, &out).map_err(|e| BootError::Rename(tmp.clone(), out.clone(), e))?;
    Ok(out)
}
