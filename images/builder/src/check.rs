//! The checks a user's own kernel and initramfs pass before anything
//! boots, the same for every subcommand and engine: a kernel is opened as
//! `record` opens it (its symbols recovered, cached by content), so an
//! empty, foreign, truncated or corrupt file is refused with the message
//! `record` gives; an initramfs must be a cpio archive or a compressed
//! stream Linux unpacks.

use std::path::{Path, PathBuf};

use crate::io_context::{io, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("recovering symbols of {}", kernel.display())]
    Symbols {
        kernel: PathBuf,
        source: guest_symbols::image::ImageError,
    },
    #[error(transparent)]
    Io(#[from] IoContext),
    #[error("the initramfs {} is empty", initrd.display())]
    EmptyInitrd { initrd: PathBuf },
    #[error("{} is not an initramfs: neither a cpio archive nor a compressed one ({known})", initrd.display())]
    NotInitrd { initrd: PathBuf, known: String },
}

type Result<T> = std::result::Result<T, CheckError>;

/// Recovers the symbols of `kernel` (through the cache of `.cache/symbols`).
pub fn open_kernel(kernel: &Path) -> Result<guest_symbols::Kernel> {
    let cache = crate::cache::root().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    let opts = guest_symbols::OpenOptions {
        cache_dir: Some(&cache),
        ..Default::default()
    };
    guest_symbols::KernelImage::open_with(kernel, &opts).map_err(|source| CheckError::Symbols {
        kernel: kernel.to_path_buf(),
        source,
    })
}

/// Magic numbers of what Linux's initramfs unpacker takes: newc cpio
/// (with and without CRC) and the decompressors of a distribution kernel.
const INITRAMFS_MAGICS: [(&[u8], &str); 8] = [
    (b"070701", "cpio"),
    (b"070702", "cpio"),
    (&[0x1f, 0x8b], "gzip"),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
    (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
    (b"BZh", "bzip2"),
    (&[0x5d, 0, 0], "lzma"),
];

/// Refuses an initramfs Linux would not unpack (by its first bytes).
pub fn check_initrd(initrd: &Path) -> Result<()> {
    let mut head = [0u8; 6];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(initrd)
            .map_err(io(format!("opening the initramfs {}", initrd.display())))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(io(format!("reading {}", initrd.display()))(e).into()),
            }
        }
        n
    };
    if n == 0 {
        return Err(CheckError::EmptyInitrd {
            initrd: initrd.to_path_buf(),
        });
    }
    if !INITRAMFS_MAGICS
        .iter()
        .any(|(m, _)| head[..n].starts_with(m))
    {
        return Err(CheckError::NotInitrd {
            initrd: initrd.to_path_buf(),
            known: INITRAMFS_MAGICS
                .iter()
                .map(|(_, name)| *name)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}

/// Guest memory a kernel and initramfs need beyond their own: page
/// tables, slabs and the guest command. Measured with the 6.1 image under
/// QEMU: 104 MiB boots and runs `/bin/true`, 96 MiB dies "deadlocked on
/// memory" (its kernel, initramfs and unpacked initramfs take 71 MiB).
const RUN_MARGIN_MIB: u64 = 32;

/// What `--memory` must at least be for this kernel and initramfs: the
/// kernel's memory image (`_text` to `_end`), the initramfs as loaded and
/// unpacked, and [`RUN_MARGIN_MIB`]. Returns it with the message that
/// explains it.
pub fn memory_floor_mib(kernel: &guest_symbols::Kernel, initrd: &Path) -> Result<(u64, String)> {
    const MIB: u64 = 1 << 20;
    let image = match (kernel.symbols.addr("_text"), kernel.symbols.addr("_end")) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => 0,
    };
    let bytes = std::fs::read(initrd).map_err(io(format!("reading {}", initrd.display())))?;
    let packed = bytes.len() as u64;
    let unpacked = if bytes.starts_with(&[0x1f, 0x8b]) && bytes.len() >= 4 {
        // gzip's trailer: the unpacked size modulo 2^32.
        let tail: [u8; 4] = bytes[bytes.len() - 4..].try_into().unwrap_or_default();
        u64::from(u32::from_le_bytes(tail)).max(packed)
    } else if bytes.starts_with(b"0707") {
        packed
    } else {
        // Other compressors keep no size: a usual ratio.
        2 * packed
    };
    let floor = (image + packed + unpacked).div_ceil(MIB) + RUN_MARGIN_MIB;
    let why = format!(
        "the kernel's memory image takes {} MiB, the initramfs {} MiB and {} MiB unpacked, plus {RUN_MARGIN_MIB} MiB to run",
        image.div_ceil(MIB),
        packed.div_ceil(MIB),
        unpacked.div_ceil(MIB)
    );
    Ok((floor, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_is_recognised_by_its_first_bytes() {
        let dir = std::env::temp_dir().join(format!("hvtrace-initrd-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        // The heads of a newc archive and of a gzip stream.
        let cpio = write("a.cpio", b"070701000000000000000000");
        assert!(check_initrd(&cpio).is_ok());
        let gz = write("a.gz", &[0x1f, 0x8b, 0x08, 0, 0, 0]);
        assert!(check_initrd(&gz).is_ok());
        let empty = write("empty", b"");
        let e = format!("{:#}", check_initrd(&empty).unwrap_err());
        assert!(e.contains("is empty"), "{e}");
        let elf = write("ls", b"\x7fELF\x02\x01\x01");
        let e = format!("{:#}", check_initrd(&elf).unwrap_err());
        assert!(e.contains("not an initramfs"), "{e}");
        assert!(check_initrd(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
