//! Opening a kernel image of any supported kind and recovering everything.

use std::path::Path;

use crate::btf::{BtfError, KernelTypes};
use crate::bzimage::{self, BzImageError, Compression};
use crate::elf::{build_id_from_notes, AddressSpace, ElfError, KernelElf};
use crate::kallsyms::{self, KallsymsError, Layout};
use crate::symbols::{KernelSymbols, Symbol, SymbolSource, SystemMapError};
use crate::syscalls;
use crate::syscalls32;
use crate::tracepoints;
use crate::{cache, ksymtab};

// The types live apart so that the cache, which stores them, does not
// import this module, which uses the cache.
pub use crate::kernel::{ImageFormat, Kernel};

/// Largest input file accepted.
pub const MAX_INPUT: u64 = 1 << 30;
const MAX_BANNER: usize = 512;

/// Errors of opening a kernel image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("empty file")]
    Empty,
    #[error("input larger than {MAX_INPUT} bytes")]
    TooLarge,
    #[error(transparent)]
    BzImage(#[from] BzImageError),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("not a Linux kernel image")]
    Kallsyms(#[from] KallsymsError),
    #[error(transparent)]
    SystemMap(#[from] SystemMapError),
    #[error("bzImage payload is not an ELF vmlinux")]
    PayloadNotElf,
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
}

/// Options of [`KernelImage::open_with`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions<'a> {
    /// Build-id cache folder; `None` disables the cache.
    pub cache_dir: Option<&'a Path>,
    /// A System.map to use instead of the image's own tables.
    pub system_map: Option<&'a Path>,
}

/// Entry points for opening kernel images.
pub struct KernelImage;

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    let io = |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_INPUT {
        return Err(ImageError::TooLarge);
    }
    std::fs::read(path).map_err(io)
}

impl KernelImage {
    /// Opens a bzImage, ELF vmlinux, compressed vmlinux or raw image.
    pub fn open(path: impl AsRef<Path>) -> Result<Kernel, ImageError> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Opens with a cache folder and/or a System.map. With a cache, a
    /// second open of the same file is a cache read.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions<'_>) -> Result<Kernel, ImageError> {
        let bytes = read(path.as_ref())?;
        let key = cache::content_key(&bytes);
        if opts.system_map.is_none() {
            if let Some(dir) = opts.cache_dir {
                if let Some(k) = cache::load_by_content(dir, &key)? {
                    return Ok(k);
                }
            }
        }
        let map = match opts.system_map {
            Some(p) => Some(String::from_utf8_lossy(&read(p)?).into_owned()),
            None => None,
        };
        let k = analyze(&bytes, map.as_deref(), true)?;
        if let (Some(dir), None) = (opts.cache_dir, opts.system_map) {
            cache::store(dir, Some(&key), &k)?;
        }
        Ok(k)
    }

    /// Analyzes an image already in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kernel, ImageError> {
        analyze(bytes, None, true)
    }
}

/// Decompresses a bzImage's payload and returns the ELF vmlinux alone (the
/// relocation table that follows it in the payload is cut off).
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut out = bzimage::payload(bzimage)?.decompress()?;
    if !out.starts_with(b"\x7fELF") {
        return Err(ImageError::PayloadNotElf);
    }
    let elf = KernelElf::parse(&out)?;
    out.truncate(elf.elf_len);
    Ok(out)
}

/// [`extract_vmlinux`] from one file to another.
pub fn extract_vmlinux_to(bzimage: &Path, out: &Path) -> Result<(), ImageError> {
    let elf = extract_vmlinux(&read(bzimage)?)?;
    std::fs::write(out, elf).map_err(|source| ImageError::Io {
        path: out.display().to_string(),
        source,
    })
}

fn analyze(bytes: &[u8], map: Option<&str>, outer: bool) -> Result<Kernel, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bzimage::is_bzimage(bytes) {
        let p = bzimage::payload(bytes)?;
        let data = p.decompress()?;
        if !data.starts_with(b"\x7fELF") {
            return Err(ImageError::PayloadNotElf);
        }
        let mut k = analyze(&data, map, false)?;
        k.format = ImageFormat::BzImage(p.compression);
        return Ok(k);
    }
    if bytes.starts_with(b"\x7fELF") {
        return analyze_elf(bytes, map);
    }
    if let Some(c) = Compression::detect(bytes).filter(|_| outer) {
        let data = bzimage::decompress(bytes, c, None)?;
        let mut k = analyze(&data, map, false)?;
        k.format = ImageFormat::Compressed(c);
        return Ok(k);
    }
    analyze_raw(bytes, map)
}

fn from_raw(syms: Vec<kallsyms::RawSymbol>) -> KernelSymbols {
    let v = syms
        .into_iter()
        .map(|s| Symbol {
            addr: s.addr,
            kind: char::from(s.kind),
            name: s.name,
        })
        .collect();
    KernelSymbols::new(v, SymbolSource::Kallsyms)
}

fn analyze_elf(data: &[u8], map: Option<&str>) -> Result<Kernel, ImageError> {
    let elf = KernelElf::parse(data)?;
    let space = elf.address_space();
    let mut layout = None;
    let symbols = if let Some(m) = map {
        KernelSymbols::parse_system_map(m)?
    } else if !elf.symtab.is_empty() {
        let v = elf
            .symtab
            .iter()
            .map(|s| Symbol {
                addr: s.addr,
                kind: char::from(s.kind),
                name: s.name.clone(),
            })
            .collect();
        KernelSymbols::new(v, SymbolSource::ElfSymtab)
    } else {
        let k = match elf.section_data(data, ".rodata").map(kallsyms::recover) {
            Some(Ok(k)) => k,
            _ => kallsyms::recover(data)?,
        };
        layout = Some(k.layout);
        from_raw(k.symbols)
    };
    let btf = elf.section_data(data, ".BTF").map(<[u8]>::to_vec);
    let notes = elf.section_data(data, ".notes").map(<[u8]>::to_vec);
    finish(data, &space, symbols, btf, notes, layout)
}

fn analyze_raw(data: &[u8], map: Option<&str>) -> Result<Kernel, ImageError> {
    let k = kallsyms::recover(data)?;
    let layout = Some(k.layout);
    let symbols = from_raw(k.symbols);
    let base = symbols
        .addr("_text")
        .or_else(|| symbols.addr("startup_64"))
        .ok_or(KallsymsError::NoAddresses)?;
    let space = AddressSpace::linear(base, data.len());
    let symbols = match map {
        Some(m) => KernelSymbols::parse_system_map(m)?,
        None => symbols,
    };
    let range = |a: &str, b: &str| -> Option<Vec<u8>> {
        let (s, e) = (symbols.addr(a)?, symbols.addr(b)?);
        let len = usize::try_from(e.checked_sub(s)?).ok()?;
        Some(space.read(data, s, len)?.to_vec())
    };
    let btf = range("__start_BTF", "__stop_BTF");
    let notes = range("__start_notes", "__stop_notes");
    let mut k = finish(data, &space, symbols, btf, notes, layout)?;
    k.format = ImageFormat::Raw;
    Ok(k)
}

fn finish(
    data: &[u8],
    space: &AddressSpace,
    mut symbols: KernelSymbols,
    btf: Option<Vec<u8>>,
    notes: Option<Vec<u8>>,
    kallsyms_layout: Option<Layout>,
) -> Result<Kernel, ImageError> {
    symbols.exports = ksymtab::exports(data, space, &symbols);
    let types = match btf.map(KernelTypes::parse) {
        Some(Ok(t)) => t,
        Some(Err(BtfError::BadHeader)) | None => KernelTypes::default(),
        Some(Err(_)) => KernelTypes::default(),
    };
    let build_id = notes
        .as_deref()
        .and_then(build_id_from_notes)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect());
    let banner = symbols
        .addr("linux_banner")
        .and_then(|a| space.cstr(data, a, MAX_BANNER))
        .or_else(|| find_banner(data))
        .unwrap_or_default()
        .trim_end()
        .to_string();
    let release = banner.split_whitespace().nth(2).unwrap_or("").to_string();
    let types_ref = (!types.is_empty()).then_some(&types);
    let syscalls = syscalls::recover(data, space, &symbols, types_ref).unwrap_or_default();
    let meta = syscalls::metadata(data, space, &symbols, types_ref);
    let compat_syscalls = syscalls32::recover(data, space, &symbols, &meta);
    let tracepoint_sites = tracepoints::recover(data, space, &symbols, &types);
    Ok(Kernel {
        symbols,
        types,
        syscalls,
        compat_syscalls,
        release,
        banner,
        build_id,
        format: ImageFormat::Elf,
        kallsyms_layout,
        tracepoint_sites,
    })
}

fn find_banner(data: &[u8]) -> Option<String> {
    let pat = b"Linux version ";
    let mut from = 0;
    while let Some(i) = data[from..].windows(pat.len()).position(|w| w == pat) {
        let at = from + i;
        let rest = &data[at..data.len().min(at + MAX_BANNER)];
        let end = rest.iter().position(|&b| b == 0)?;
        if rest.get(pat.len()).is_some_and(u8::is_ascii_digit) {
            return String::from_utf8(rest[..end].to_vec()).ok();
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_with_symtab_uses_it() {
        let k = KernelImage::from_bytes(&crate::elf::tests::tiny_elf(62)).unwrap();
        assert_eq!(k.symbols.source, Some(SymbolSource::ElfSymtab));
        assert_eq!(k.symbols.addr("jiffies"), Some(0xffff_ffff_8100_1000));
        assert_eq!(k.format, ImageFormat::Elf);
        assert!(k.types.is_empty() && k.syscalls.entries.is_empty());
    }

    #[test]
    fn rejects_what_is_not_a_kernel() {
        assert!(matches!(
            KernelImage::from_bytes(&[]),
            Err(ImageError::Empty)
        ));
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(matches!(
            KernelImage::from_bytes(&noise),
            Err(ImageError::Kallsyms(_))
        ));
        let mut arm = crate::elf::tests::tiny_elf(183);
        assert!(matches!(
            KernelImage::from_bytes(&arm),
            Err(ImageError::Elf(ElfError::NotX86_64(183)))
        ));
        arm.truncate(70);
        assert!(KernelImage::from_bytes(&arm).is_err());
        // A bzImage whose payload decompresses to something that is not an ELF.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, b"not an elf").unwrap();
        let stream = e.finish().unwrap();
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x236] = 1;
        img[0x24c..0x250].copy_from_slice(&(stream.len() as u32 + 4).to_le_bytes());
        img.extend_from_slice(&stream);
        img.extend_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            KernelImage::from_bytes(&img),
            Err(ImageError::PayloadNotElf)
        ));
        assert!(matches!(
            extract_vmlinux(&img),
            Err(ImageError::PayloadNotElf)
        ));
        assert!(KernelImage::open("/nonexistent/vmlinuz").is_err());
    }
}
