//! The fuzz targets' seeds: small valid inputs built with the crate's own
//! API (and the Debian 6.1 vmlinuz when it has been built).

mod btf;
mod image;

use std::path::Path;

use guest_symbols::bzimage::{self, Compression};
use guest_symbols::{cache, kallsyms, Kernel, KernelImage, KernelSymbols, KernelTypes};

use btf::btf_blob;
use image::{bzimage_around, compress, elf, elf_header, kernel_parts, BUILD_ID_HEX};

// ---------------------------------------------------------------------------
// Seeds: small valid inputs, each checked to parse as far as it should (a
// seed that stopped parsing would quietly make the fuzzing shallow).

pub struct Seeds {
    system_map: Vec<Vec<u8>>,
    btf: Vec<u8>,
    /// A bare ELF header, an ELF with a symtab, a stripped ELF whose
    /// `.rodata` holds kallsyms tables.
    elves: Vec<Vec<u8>>,
    /// A raw image (kallsyms over the whole file) and its tables alone.
    raw: Vec<Vec<u8>>,
    /// The symtab ELF in every codec, bare and inside a bzImage.
    streams: Vec<Vec<u8>>,
    bzimages: Vec<Vec<u8>>,
    cache: Vec<Vec<u8>>,
    /// The first 256 KiB and the whole of the Debian 6.1 vmlinuz.
    vmlinuz: Vec<Vec<u8>>,
}

impl Seeds {
    pub fn build() -> Seeds {
        let btf = btf_blob();
        let t = KernelTypes::parse(btf.clone()).expect("BTF seed parses");
        assert_eq!(
            t.member_offset("task_struct", "se.sum_exec_runtime"),
            Some(24)
        );
        assert_eq!(t.member_offset("task_struct", "__state"), Some(4));
        assert_eq!(t.member("task_struct", "flags").unwrap().bit_size, Some(3));
        assert!(t.has_var("current_task"));

        let k = kernel_parts(&btf);
        let with_symtab = elf(&k.sections(false), Some(&k.symbols));
        let stripped = elf(&k.sections(true), None);
        let raw = k.raw();
        for (what, bytes) in [
            ("ELF", &with_symtab),
            ("stripped ELF", &stripped),
            ("raw", &raw),
        ] {
            let kernel = KernelImage::from_bytes(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            check_kernel(what, &kernel);
        }
        let recovered = kallsyms::recover(&k.tables).expect("kallsyms seed");
        assert_eq!(recovered.symbols.len(), k.symbols.len());

        let mut streams = Vec::new();
        let mut bzimages = Vec::new();
        for c in [
            Compression::Gzip,
            Compression::Xz,
            Compression::Lzma,
            Compression::Zstd,
            Compression::Lz4,
        ] {
            let s = compress(&with_symtab, c);
            assert_eq!(Compression::detect(&s), Some(c));
            let img = bzimage_around(&s, with_symtab.len() as u32);
            let p = bzimage::payload(&img).expect("bzImage seed");
            assert_eq!(p.decompress().expect("bzImage seed payload"), with_symtab);
            streams.push(s);
            bzimages.push(img);
        }
        check_kernel("bzImage", &KernelImage::from_bytes(&bzimages[0]).unwrap());

        let kernels = [&with_symtab, &raw].map(|b| KernelImage::from_bytes(b).unwrap());
        let cache = kernels.iter().map(cache_blob).collect();
        let mut maps = vec![b"0000000000000000 A fixed_percpu_data\n\
                              ffffffff81000000 T _text\n\
                              ffffffff81000000 T startup_64\n\
                              ffffffff81000100 t do_fuzz\n\
                              ffffffff82000000 D jiffies\n\
                              ffffffffc0000000 t mod_init\t[fuzz_mod]\n"
            .to_vec()];
        let mut listing = Vec::new();
        kernels[0].symbols.write_system_map(&mut listing).unwrap();
        maps.push(listing);
        for m in &maps {
            KernelSymbols::parse_system_map(std::str::from_utf8(m).unwrap()).expect("map seed");
        }

        let vmlinuz = match vmlinuz_6_1() {
            Some((path, bytes)) => {
                eprintln!("fuzz: seeds include {} ({} bytes)", path, bytes.len());
                vec![bytes[..bytes.len().min(256 << 10)].to_vec(), bytes]
            }
            None => {
                eprintln!("fuzz: no .cache/images/6.1.*/vmlinuz, synthetic seeds only");
                Vec::new()
            }
        };
        Seeds {
            system_map: maps,
            btf,
            elves: vec![elf_header(0, 0, 0, 0), with_symtab, stripped],
            raw: vec![raw, k.tables],
            streams,
            bzimages,
            cache,
            vmlinuz,
        }
    }

    pub fn of(&self, target: &str) -> Vec<&[u8]> {
        fn all<'a>(v: &[&'a Vec<Vec<u8>>]) -> Vec<&'a [u8]> {
            v.iter().flat_map(|s| s.iter().map(Vec::as_slice)).collect()
        }
        match target {
            "btf" => vec![self.btf.as_slice()],
            "bzimage" => all(&[&self.streams, &self.bzimages, &self.vmlinuz]),
            "cache" => all(&[&self.cache]),
            "elf" => all(&[&self.elves, &self.vmlinuz]),
            "image" => all(&[
                &self.elves,
                &self.raw,
                &self.streams,
                &self.bzimages,
                &self.vmlinuz,
            ]),
            "kallsyms" => all(&[&self.raw, &self.vmlinuz]),
            "system_map" => all(&[&self.system_map]),
            // A new target gets random inputs until it is given seeds here.
            _ => Vec::new(),
        }
    }
}

/// The first `.cache/images/6.1.*/vmlinuz` of the workspace, if built.
fn vmlinuz_6_1() -> Option<(String, Vec<u8>)> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let images = workspace.join(".cache/images");
    let mut dirs: Vec<_> = std::fs::read_dir(images)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("6.1."))
        })
        .collect();
    dirs.sort();
    dirs.iter().find_map(|d| {
        let p = d.join("vmlinuz");
        Some((p.display().to_string(), std::fs::read(&p).ok()?))
    })
}

fn cache_blob(k: &Kernel) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("guest-symbols-fuzz-cache-{}", std::process::id()));
    let path = cache::store(&dir, Some("seed"), k).expect("store a cache entry");
    let blob = std::fs::read(path).expect("read the cache entry back");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(cache::decode(&blob).is_some(), "cache seed decodes");
    blob
}

/// What every synthetic kernel must yield, whichever way it is packaged.
fn check_kernel(what: &str, k: &Kernel) {
    let read = k
        .syscalls
        .by_nr(0)
        .unwrap_or_else(|| panic!("{what}: syscall 0"));
    assert_eq!(read.name, "read", "{what}");
    assert_eq!(read.args.as_ref().map(Vec::len), Some(3), "{what}");
    assert_eq!(k.syscalls.entries.len(), 2, "{what}");
    let compat: Vec<_> = k
        .compat_syscalls
        .entries
        .iter()
        .map(|s| (s.nr, s.name.as_str()))
        .collect();
    assert_eq!(compat, [(1, "exit"), (3, "read")], "{what}");
    assert_eq!(k.symbols.exports.len(), 2, "{what}");
    assert_eq!(k.symbols.exports[1].namespace, "FUZZ_NS", "{what}");
    assert_eq!(k.tracepoint_sites.len(), 1, "{what}");
    assert_eq!(k.tracepoint_sites[0].first_arg, Some(3), "{what}");
    assert_eq!(k.build_id.as_deref(), Some(BUILD_ID_HEX), "{what}");
    assert_eq!(k.release, "6.1.0-fuzz", "{what}");
    assert_eq!(
        k.types.member_offset("task_struct", "se.sum_exec_runtime"),
        Some(24),
        "{what}"
    );
}
