//! The fuzz targets (`guest_symbols::fuzzing`, which cargo-fuzz runs under
//! libFuzzer on nightly) run on stable, for a bounded time, over random
//! inputs and mutations of small valid seeds built here with the crate's
//! own API (plus the Debian 6.1 vmlinuz when it has been built). Every case
//! must return; a panic fails the test with what replays it.
//!
//! `HVTRACE_FUZZ_SECS`: budget per target (default 2). `HVTRACE_FUZZ_SEED`:
//! the PRNG seed (default: from the clock, and printed), so each CI run
//! explores new inputs and any failure can be replayed. A case's input
//! depends only on (seed, target, case index), not on timing.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest_symbols::bzimage::{self, Compression};
use guest_symbols::fuzzing::{Target, TARGETS};
use guest_symbols::{cache, kallsyms, Kernel, KernelImage, KernelSymbols, KernelTypes};

/// Longest random (non-mutated) input.
const MAX_RANDOM_LEN: usize = 64 << 10;
/// `image` on a whole multi-MB kernel takes seconds per case: its inputs
/// are cut to this.
const IMAGE_CAP: usize = 1 << 20;
const INTERESTING: [u64; 5] = [0, 1, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// xorshift64, seeded through splitmix64 so that nearby seeds diverge.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Random bytes, with lengths spread over every scale up to 64 KiB; a
/// quarter of them text-like, for the text parsers.
fn random(r: &mut Rng) -> Vec<u8> {
    const TEXT: &[u8] = b"0123456789abcdef xTtDdAaRrWw_.[]\t\n";
    let scale = 1 << r.below(17);
    let len = r.below(scale + 1).min(MAX_RANDOM_LEN);
    if r.below(4) == 0 {
        (0..len).map(|_| TEXT[r.below(TEXT.len())]).collect()
    } else {
        (0..len).map(|_| r.byte()).collect()
    }
}

/// One mutation, in place. Flips and overwrites are weighted up: most
/// parsers reject a truncated input at once.
fn mutate(r: &mut Rng, d: &mut Vec<u8>) {
    match r.below(11) {
        0..=2 if !d.is_empty() => {
            let i = r.below(d.len());
            d[i] ^= 1 << r.below(8);
        }
        3..=5 if !d.is_empty() => {
            let i = r.below(d.len());
            d[i] = match r.below(3) {
                0 => 0,
                1 => 0xff,
                _ => r.byte(),
            };
        }
        6 => {
            let n = r.below(d.len() + 1);
            d.truncate(n);
        }
        7 if !d.is_empty() => {
            let from = r.below(d.len());
            let n = 1 + r.below((d.len() - from).min(4096));
            let chunk = d[from..from + n].to_vec();
            let to = r.below(d.len() + 1);
            d.splice(to..to, chunk);
        }
        k @ 8..=10 => {
            // 1, 2, 4 or 8 bytes of an interesting value, mostly little-endian,
            // inserted (k == 8) or written over what is there.
            let v = INTERESTING[r.below(INTERESTING.len())];
            let w = 1 << r.below(4);
            let bytes = if r.below(4) == 0 {
                v.to_be_bytes()[8 - w..].to_vec()
            } else {
                v.to_le_bytes()[..w].to_vec()
            };
            if k == 8 {
                let to = r.below(d.len() + 1);
                d.splice(to..to, bytes);
            } else if d.len() >= w {
                let i = r.below(d.len() - w + 1);
                d[i..i + w].copy_from_slice(&bytes);
            }
        }
        _ => {}
    }
}

/// The input of case `case`: first each seed as it is, then a quarter
/// random inputs and the rest seeds under 1 to 8 stacked mutations.
fn input(seed: u64, target: &str, case: u64, seeds: &[&[u8]], cap: usize) -> Vec<u8> {
    let cut = |s: &[u8]| s[..s.len().min(cap)].to_vec();
    if let Some(s) = usize::try_from(case).ok().and_then(|i| seeds.get(i)) {
        return cut(s);
    }
    let mut r = Rng::new(seed ^ fnv(target) ^ case.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut d = if seeds.is_empty() || r.below(4) == 0 {
        random(&mut r)
    } else {
        let mut d = cut(seeds[r.below(seeds.len())]);
        for _ in 0..1 + r.below(8) {
            mutate(&mut r, &mut d);
        }
        d
    };
    d.truncate(cap);
    d
}

/// Runs one target until its budget is spent (at least one case). Returns
/// the number of cases, the time taken and, on a panic, how to replay it.
fn run(
    name: &str,
    target: Target,
    seeds: &[&[u8]],
    seed: u64,
    budget: Duration,
) -> (u64, Duration, Option<String>) {
    let cap = if name == "image" {
        IMAGE_CAP
    } else {
        usize::MAX
    };
    let start = Instant::now();
    let mut case = 0u64;
    while case == 0 || start.elapsed() < budget {
        let data = input(seed, name, case, seeds, cap);
        if let Err(e) = std::panic::catch_unwind(|| target(&data)) {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let path = std::env::temp_dir().join(format!("guest-symbols-fuzz-{name}-{case}.bin"));
            let saved = match std::fs::write(&path, &data) {
                Ok(()) => format!("saved as {}", path.display()),
                Err(e) => format!("not saved ({e})"),
            };
            let failure = format!(
                "fuzz {name}: case {case} panicked ({msg}) on a {}-byte input, {saved}; \
                 HVTRACE_FUZZ_SEED={seed} makes the same case {case} again (given the \
                 same .cache/images), or pass the file to guest_symbols::fuzzing::{name}",
                data.len()
            );
            return (case + 1, start.elapsed(), Some(failure));
        }
        case += 1;
    }
    (case, start.elapsed(), None)
}

#[test]
fn fuzz_targets_do_not_panic() {
    let secs: f64 = std::env::var("HVTRACE_FUZZ_SECS")
        .map(|s| s.trim().parse().expect("HVTRACE_FUZZ_SECS: seconds"))
        .unwrap_or(2.0);
    let budget = Duration::try_from_secs_f64(secs).expect("HVTRACE_FUZZ_SECS: seconds");
    let seed = match std::env::var("HVTRACE_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .expect("HVTRACE_FUZZ_SEED: a u64")
        }
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    eprintln!("fuzz: HVTRACE_FUZZ_SEED={seed}, {secs} s per target");
    let seeds = Seeds::build();
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let (cases, took, failure) = run(name, target, &seeds.of(name), seed, budget);
        eprintln!(
            "fuzz {name}: {cases} cases in {:.1} s, {} panics",
            took.as_secs_f64(),
            u8::from(failure.is_some())
        );
        failures.extend(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Seeds: small valid inputs, each checked to parse as far as it should (a
// seed that stopped parsing would quietly make the fuzzing shallow).

struct Seeds {
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
    fn build() -> Seeds {
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

    fn of(&self, target: &str) -> Vec<&[u8]> {
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

fn pad8(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(8), 0);
}

// --- BTF -------------------------------------------------------------------

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;

#[derive(Default)]
struct Btf {
    types: Vec<u8>,
    strs: Vec<u8>,
    last_id: u32,
}

impl Btf {
    fn str(&mut self, s: &str) -> u32 {
        if self.strs.is_empty() {
            self.strs.push(0);
        }
        if s.is_empty() {
            return 0;
        }
        let off = self.strs.len() as u32;
        self.strs.extend_from_slice(s.as_bytes());
        self.strs.push(0);
        off
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32, extra: &[u32]) -> u32 {
        let name = self.str(name);
        let info = kind << 24 | vlen | u32::from(kflag) << 31;
        for v in [name, info, st].iter().chain(extra) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        self.last_id += 1;
        self.last_id
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.ty(name, INT, 0, false, size, &[size * 8])
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.ty("", PTR, 0, false, to, &[])
    }

    /// Members: (name, type, bit offset, bitfield width or 0).
    fn composite(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let mut extra = Vec::new();
        for &(n, t, off, bits) in members {
            let n = self.str(n);
            extra.extend([n, t, if kflag { bits << 24 | off } else { off }]);
        }
        self.ty(name, kind, members.len() as u32, kflag, size, &extra)
    }

    fn finish(&self) -> Vec<u8> {
        let mut b = vec![0x9f, 0xeb, 1, 0];
        let (tl, sl) = (self.types.len() as u32, self.strs.len() as u32);
        for v in [24, 0, tl, tl, sl] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strs);
        b
    }
}

/// Nesting, an anonymous union, a bitfield, a self-referencing list, a
/// typedef cycle, and what the introspection and syscall code look up.
fn btf_blob() -> Vec<u8> {
    let mut b = Btf::default();
    let int = b.int("int", 4);
    let uint = b.int("unsigned int", 4);
    let ulong = b.int("unsigned long", 8);
    let ch = b.int("char", 1);
    let u64t = b.ty("u64", TYPEDEF, 0, false, ulong, &[]);
    let pch = b.ptr(ch);
    let ppch = b.ptr(pch);
    let comm = b.ty("", ARRAY, 0, false, 0, &[ch, int, 16]);
    let list = b.last_id + 2;
    let plist = b.ptr(list);
    let l = b.composite(
        STRUCT,
        "list_head",
        16,
        &[("next", plist, 0, 0), ("prev", plist, 64, 0)],
    );
    assert_eq!(l, list);
    let loop_a = b.last_id + 1;
    b.ty("loop_a", TYPEDEF, 0, false, loop_a + 1, &[]);
    b.ty("loop_b", TYPEDEF, 0, false, loop_a, &[]);
    let se = b.composite(
        STRUCT,
        "sched_entity",
        16,
        &[("sum_exec_runtime", u64t, 0, 0), ("vruntime", u64t, 64, 0)],
    );
    let state = b.composite(
        UNION,
        "",
        4,
        &[("state", int, 0, 0), ("__state", uint, 0, 0)],
    );
    let pulong = b.ptr(ulong);
    let mm = b.composite(
        STRUCT,
        "mm_struct",
        24,
        &[("pgd", pulong, 0, 0), ("arg_start", ulong, 64, 0)],
    );
    let pmm = b.ptr(mm);
    let task = b.composite(
        STRUCT,
        "task_struct",
        128,
        &[
            ("pid", int, 0, 0),
            ("", state, 32, 0),
            ("comm", comm, 64, 0),
            ("se", se, 192, 0),
            ("flags", uint, 320, 3),
            ("mm", pmm, 384, 0),
            ("tasks", list, 448, 0),
            ("loopy", loop_a, 576, 0),
        ],
    );
    let ptask = b.ptr(task);
    b.ty("current_task", VAR, 0, false, ptask, &[1]);
    let key = b.composite(STRUCT, "static_key", 8, &[("enabled", int, 0, 0)]);
    b.composite(
        STRUCT,
        "tracepoint",
        16,
        &[("name", pch, 0, 0), ("key", key, 64, 0)],
    );
    b.composite(
        STRUCT,
        "syscall_metadata",
        48,
        &[
            ("name", pch, 0, 0),
            ("syscall_nr", int, 64, 0),
            ("nb_args", int, 96, 0),
            ("types", ppch, 128, 0),
            ("args", ppch, 192, 0),
        ],
    );
    let (on, off) = (b.str("ON"), b.str("OFF"));
    b.ty("onoff", ENUM, 2, false, 4, &[on, 1, off, 0]);
    let arg = b.str("p");
    let proto = b.ty("", FUNC_PROTO, 1, false, int, &[arg, ptask]);
    b.ty("do_fuzz", FUNC, 0, false, proto, &[]);
    b.finish()
}

// --- A small kernel: text, rodata, notes and BTF at fixed addresses --------

const BASE: u64 = 0xffff_ffff_8100_0000;
const RODATA: u64 = BASE + 0x1000;
const NOTES: u64 = BASE + 0x2000;
const BTF_AT: u64 = BASE + 0x3000;
const BUILD_ID: [u8; 20] =
    *b"\x5e\xed\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\xfe\xed";
const BUILD_ID_HEX: &str = "5eed000102030405060708090a0b0c0d0e0ffeed";

/// The kernel's bytes from `BASE` on, its symbols, and its kallsyms tables.
struct Parts {
    image: Vec<u8>,
    notes_len: usize,
    btf_len: usize,
    symbols: Vec<(u64, u8, String)>,
    tables: Vec<u8>,
}

fn rel32(from: u64, to: u64) -> [u8; 4] {
    (to.wrapping_sub(from) as i32).to_le_bytes()
}

fn kernel_parts(btf: &[u8]) -> Parts {
    let mut img = vec![0xccu8; (BTF_AT - BASE) as usize];
    let mut put = |at: u64, b: &[u8]| {
        let o = (at - BASE) as usize;
        if img.len() < o + b.len() {
            img.resize(o + b.len(), 0);
        }
        img[o..o + b.len()].copy_from_slice(b);
    };
    let mut syms: Vec<(u64, u8, String)> = vec![(0, b'A', "fixed_percpu_data".into())];
    let mut sym = |addr: u64, kind: u8, name: &str| syms.push((addr, kind, name.to_string()));

    // Text: handlers, a tracepoint site and its out-of-line block, and a
    // compat dispatcher in the shape of `ia32_sys_call`.
    let t = |o: u64| BASE + o;
    for (o, name) in [
        (0x000, "_text"),
        (0x000, "startup_64"),
        (0x100, "__x64_sys_read"),
        (0x110, "__x64_sys_write"),
        (0x120, "__x64_sys_ni_syscall"),
        (0x130, "__ia32_sys_exit"),
        (0x140, "__ia32_compat_sys_read"),
        (0x150, "__ia32_sys_ni_syscall"),
        (0x160, "__fentry__"),
        (0x170, "__SCT__tp_func_sched_wakeup"),
        (0x180, "try_to_wake_up"),
        (0x200, "ia32_sys_call"),
        (0x240, "_etext"),
    ] {
        sym(t(o), b'T', name);
    }
    put(t(0x180), &[0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3]);
    let block = t(0x1a0);
    let mut b = vec![0x48, 0x89, 0xde, 0xe8]; // mov %rbx,%rsi; call
    b.extend(rel32(block + 8, t(0x170)));
    b.push(0xe9); // jmp back after the site
    b.extend(rel32(block + 13, t(0x185)));
    put(block, &b);
    let d = t(0x200);
    let mut c = vec![0xf3, 0x0f, 0x1e, 0xfa, 0xe8]; // endbr64; call __fentry__
    c.extend(rel32(d + 9, t(0x160)));
    c.extend([0x83, 0xfe, 0x01, 0x74, 13]); // cmp $1,%esi; je L1
    c.extend([0x81, 0xfe, 3, 0, 0, 0, 0x74, 10]); // cmp $3,%esi; je L3
    for (at, to) in [(22, 0x150), (27, 0x130), (32, 0x140)] {
        c.push(0xe9); // jmp ni / L1: jmp exit / L3: jmp compat read
        c.extend(rel32(d + at + 5, t(to)));
    }
    put(d, &c);

    // Rodata: the syscall table and metadata, both export tables, the jump
    // table, a tracepoint, the banner, then strings.
    let r = |o: u64| RODATA + o;
    let mut strings = r(0x500);
    let mut s = |put: &mut dyn FnMut(u64, &[u8]), text: &str| {
        let at = strings;
        put(at, text.as_bytes());
        put(at + text.len() as u64, &[0]);
        strings += text.len() as u64 + 1;
        at
    };
    for (o, name) in [
        (0x000, "sys_call_table"),
        (0x018, "__start_syscalls_metadata"),
        (0x028, "__stop_syscalls_metadata"),
        (0x040, "__start___ksymtab"),
        (0x04c, "__stop___ksymtab"),
        (0x050, "__start___ksymtab_gpl"),
        (0x05c, "__stop___ksymtab_gpl"),
        (0x060, "__start___jump_table"),
        (0x070, "__stop___jump_table"),
        (0x080, "__tracepoint_sched_wakeup"),
        (0x200, "linux_banner"),
        (0x800, "__end_rodata"),
    ] {
        sym(r(o), b'R', name);
    }
    for (i, h) in [0x100, 0x110, 0x120].into_iter().enumerate() {
        put(r(8 * i as u64), &t(h).to_le_bytes());
    }
    put(r(0x018), &r(0x100).to_le_bytes());
    put(r(0x020), &r(0x140).to_le_bytes());
    for (rec, name, nr, args) in [
        (
            0x100,
            "sys_read",
            0u32,
            &[
                ("unsigned int", "fd"),
                ("char *", "buf"),
                ("size_t", "count"),
            ][..],
        ),
        (0x140, "sys_write", 1, &[("unsigned int", "fd")][..]),
    ] {
        let name = s(&mut put, name);
        put(r(rec), &name.to_le_bytes());
        put(r(rec + 8), &nr.to_le_bytes());
        put(r(rec + 12), &(args.len() as u32).to_le_bytes());
        let (tys, names) = (r(rec + 0x300), r(rec + 0x320));
        put(r(rec + 16), &tys.to_le_bytes());
        put(r(rec + 24), &names.to_le_bytes());
        for (j, (ty, n)) in args.iter().enumerate() {
            let (ty, n) = (s(&mut put, ty), s(&mut put, n));
            put(tys + 8 * j as u64, &ty.to_le_bytes());
            put(names + 8 * j as u64, &n.to_le_bytes());
        }
    }
    for (e, value, name, ns) in [
        (r(0x40), 0x100, "fuzz_read", None),
        (r(0x50), 0x110, "fuzz_write", Some("FUZZ_NS")),
    ] {
        let name = s(&mut put, name);
        let ns = ns.map_or(e + 8, |n| s(&mut put, n));
        put(e, &rel32(e, t(value)));
        put(e + 4, &rel32(e + 4, name));
        put(e + 8, &rel32(e + 8, ns));
    }
    let (e, tp) = (r(0x60), r(0x80));
    put(e, &rel32(e, t(0x180)));
    put(e + 4, &rel32(e + 4, block));
    put(e + 8, &(tp + 8).wrapping_sub(e + 8).to_le_bytes());
    let tp_name = s(&mut put, "sched_wakeup");
    put(tp, &tp_name.to_le_bytes());
    put(
        r(0x200),
        b"Linux version 6.1.0-fuzz (fuzz@stable) #1 SMP\n\0",
    );

    // Notes (an unrelated one, then the build-id) and BTF.
    let mut notes = Vec::new();
    for (name, ty, desc) in [
        (&b"Linux\0"[..], 0x100u32, &b"6.1\0"[..]),
        (b"GNU\0", 3, &BUILD_ID),
    ] {
        for v in [name.len() as u32, desc.len() as u32, ty] {
            notes.extend_from_slice(&v.to_le_bytes());
        }
        for part in [name, desc] {
            notes.extend_from_slice(part);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
    }
    put(NOTES, &notes);
    put(BTF_AT, btf);
    for (at, name) in [
        (NOTES, "__start_notes"),
        (NOTES + notes.len() as u64, "__stop_notes"),
        (BTF_AT, "__start_BTF"),
        (BTF_AT + btf.len() as u64, "__stop_BTF"),
    ] {
        sym(at, b'R', name);
    }
    // A name over 127 bytes takes kallsyms' 2-byte length.
    sym(
        BTF_AT + btf.len() as u64,
        b'r',
        &format!("__fuzz_{}", "long".repeat(40)),
    );
    pad8(&mut img);
    syms.sort_by_key(|s| s.0);
    let tables = kallsyms_tables(&syms);
    Parts {
        image: img,
        notes_len: notes.len(),
        btf_len: btf.len(),
        symbols: syms,
        tables,
    }
}

impl Parts {
    /// `.text`, `.rodata` (with the kallsyms tables appended when the ELF
    /// is stripped), `.notes`, `.BTF`, `.bss`.
    fn sections(&self, kallsyms_in_rodata: bool) -> Vec<Section> {
        let at = |a: u64, len: usize| self.image[(a - BASE) as usize..][..len].to_vec();
        let mut rodata = at(RODATA, (NOTES - RODATA) as usize);
        if kallsyms_in_rodata {
            rodata.extend_from_slice(&self.tables);
        }
        vec![
            Section::new(".text", 1, 6, BASE, at(BASE, (RODATA - BASE) as usize)),
            Section::new(".rodata", 1, 2, RODATA, rodata),
            Section::new(".notes", 7, 2, NOTES, at(NOTES, self.notes_len)),
            Section::new(".BTF", 1, 2, BTF_AT, at(BTF_AT, self.btf_len)),
            Section {
                nobits: 0x4000,
                ..Section::new(".bss", 8, 3, BASE + 0x10_0000, Vec::new())
            },
        ]
    }

    /// The raw image (mapped at `_text`) with the kallsyms tables after it.
    fn raw(&self) -> Vec<u8> {
        let mut v = self.image.clone();
        v.extend_from_slice(&self.tables);
        v
    }
}

/// kallsyms tables in the pre-6.4 order with absolute per-cpu symbols:
/// offsets, relative base, num_syms, names, markers, token table and
/// index. Every printable byte is its own token, so a name is stored as
/// its bytes. `syms` must be sorted by address.
fn kallsyms_tables(syms: &[(u64, u8, String)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(addr, _, _) in syms {
        let off = if addr < BASE {
            i32::try_from(addr).unwrap()
        } else {
            -1 - i32::try_from(addr - BASE).unwrap()
        };
        v.extend_from_slice(&off.to_le_bytes());
    }
    pad8(&mut v);
    v.extend_from_slice(&BASE.to_le_bytes());
    v.extend_from_slice(&(syms.len() as u64).to_le_bytes());
    let names = v.len();
    let mut markers = Vec::new();
    for (i, (_, kind, name)) in syms.iter().enumerate() {
        if i % 256 == 0 {
            markers.push((v.len() - names) as u32);
        }
        let len = 1 + name.len();
        if len < 0x80 {
            v.push(len as u8);
        } else {
            v.extend([0x80 | (len & 0x7f) as u8, (len >> 7) as u8]);
        }
        v.push(*kind);
        v.extend_from_slice(name.as_bytes());
    }
    pad8(&mut v);
    for m in markers {
        v.extend_from_slice(&m.to_le_bytes());
    }
    pad8(&mut v);
    let table = v.len();
    let mut index = Vec::new();
    for i in 0..=255u8 {
        index.push((v.len() - table) as u16);
        if i.is_ascii_graphic() {
            v.push(i);
        } else {
            v.extend([b'~', b'a' + i % 16, b'a' + i / 16]);
        }
        v.push(0);
    }
    pad8(&mut v);
    for x in index {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

// --- ELF ---------------------------------------------------------------------

struct Section {
    name: &'static str,
    ty: u32,
    flags: u64,
    addr: u64,
    data: Vec<u8>,
    /// Size of a NOBITS section (it has no data in the file).
    nobits: u64,
}

impl Section {
    fn new(name: &'static str, ty: u32, flags: u64, addr: u64, data: Vec<u8>) -> Section {
        Section {
            name,
            ty,
            flags,
            addr,
            data,
            nobits: 0,
        }
    }

    fn size(&self) -> u64 {
        if self.ty == 8 {
            self.nobits
        } else {
            self.data.len() as u64
        }
    }
}

/// An x86-64 ELF64 header (and a program header table of `phnum` entries
/// right after it).
fn elf_header(shoff: u64, shnum: u16, shstrndx: u16, phnum: u16) -> Vec<u8> {
    let mut h = b"\x7fELF\x02\x01\x01".to_vec();
    h.resize(16, 0);
    h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&BASE.to_le_bytes()); // entry
    h.extend_from_slice(&(if phnum > 0 { 64u64 } else { 0 }).to_le_bytes());
    h.extend_from_slice(&shoff.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, phnum, 64, shnum, shstrndx] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// An ELF of these sections, one PT_LOAD over the first, and (if given) a
/// `.symtab` of global symbols, each in the section that holds its address.
fn elf(sections: &[Section], symbols: Option<&[(u64, u8, String)]>) -> Vec<u8> {
    let mut f = vec![0u8; 64 + 56];
    // (name, type, flags, addr, offset, size, link, info, entsize)
    let mut headers = vec![(0u32, 0u32, 0u64, 0u64, 0u64, 0u64, 0u32, 0u32, 0u64)];
    let mut shstr = vec![0u8];
    let mut name = |n: &str| {
        let off = shstr.len() as u32;
        shstr.extend_from_slice(n.as_bytes());
        shstr.push(0);
        off
    };
    for s in sections {
        pad8(&mut f);
        let off = f.len() as u64;
        f.extend_from_slice(&s.data);
        headers.push((name(s.name), s.ty, s.flags, s.addr, off, s.size(), 0, 0, 0));
    }
    if let Some(syms) = symbols {
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 24];
        for (addr, _, n) in syms {
            let shndx = sections
                .iter()
                .position(|s| (s.addr..=s.addr + s.size()).contains(addr))
                .map_or(0xfff1, |i| i as u16 + 1); // SHN_ABS
            let exec = sections
                .get(usize::from(shndx).wrapping_sub(1))
                .is_some_and(|s| s.flags & 4 != 0);
            symtab.extend_from_slice(&(strtab.len() as u32).to_le_bytes());
            symtab.extend([0x10 | if exec { 2 } else { 1 }, 0]); // GLOBAL FUNC/OBJECT
            symtab.extend_from_slice(&shndx.to_le_bytes());
            symtab.extend_from_slice(&addr.to_le_bytes());
            symtab.extend_from_slice(&0u64.to_le_bytes());
            strtab.extend_from_slice(n.as_bytes());
            strtab.push(0);
        }
        let strtab_index = headers.len() as u32 + 1;
        pad8(&mut f);
        headers.push((
            name(".symtab"),
            2,
            0,
            0,
            f.len() as u64,
            symtab.len() as u64,
            strtab_index,
            1,
            24,
        ));
        f.extend_from_slice(&symtab);
        headers.push((
            name(".strtab"),
            3,
            0,
            0,
            f.len() as u64,
            strtab.len() as u64,
            0,
            0,
            0,
        ));
        f.extend_from_slice(&strtab);
    }
    let n = name(".shstrtab");
    headers.push((n, 3, 0, 0, f.len() as u64, shstr.len() as u64, 0, 0, 0));
    f.extend_from_slice(&shstr);
    pad8(&mut f);
    let shoff = f.len() as u64;
    for (name, ty, flags, addr, off, size, link, info, ent) in &headers {
        for v in [name, ty] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for v in [flags, addr, off, size] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for v in [link, info] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for v in [&8u64, ent] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    }
    let shnum = headers.len() as u16;
    f[..64].copy_from_slice(&elf_header(shoff, shnum, shnum - 1, 1));
    // PT_LOAD, R+X, over the first section.
    let (_, _, _, addr, off, size, ..) = headers[1];
    let mut ph = Vec::new();
    ph.extend_from_slice(&1u32.to_le_bytes());
    ph.extend_from_slice(&5u32.to_le_bytes());
    for v in [off, addr, addr, size, size, 0x1000] {
        ph.extend_from_slice(&v.to_le_bytes());
    }
    f[64..120].copy_from_slice(&ph);
    f
}

// --- Compression -----------------------------------------------------------

fn compress(d: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        }
        Compression::Xz | Compression::Lzma => {
            let s = if c == Compression::Xz {
                xz2::stream::Stream::new_easy_encoder(1, xz2::stream::Check::Crc32)
            } else {
                xz2::stream::LzmaOptions::new_preset(1)
                    .and_then(|o| xz2::stream::Stream::new_lzma_encoder(&o))
            }
            .unwrap();
            let mut e = xz2::write::XzEncoder::new_stream(Vec::new(), s);
            e.write_all(d).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::bulk::compress(d, 3).unwrap(),
        Compression::Lz4 => {
            // The kernel's legacy framing: magic, then (size, block)*.
            let mut s = 0x184c_2102u32.to_le_bytes().to_vec();
            for chunk in d.chunks(4096) {
                let b = lz4_flex::block::compress(chunk);
                s.extend_from_slice(&(b.len() as u32).to_le_bytes());
                s.extend_from_slice(&b);
            }
            s
        }
        Compression::Bzip2 | Compression::Lzo => unreachable!("not decoded by the crate"),
    }
}

/// A bzImage (boot protocol 2.15, 64-bit) whose payload is `stream`
/// followed by the decompressed `size`.
fn bzimage_around(stream: &[u8], size: u32) -> Vec<u8> {
    const SETUP_SECTS: u8 = 3;
    const PAYLOAD_OFFSET: u32 = 0x20;
    let mut v = vec![0u8; (usize::from(SETUP_SECTS) + 1) * 512];
    v[0x1f1] = SETUP_SECTS;
    v[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    v[0x202..0x206].copy_from_slice(b"HdrS");
    v[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    v[0x236] = 1; // XLF_KERNEL_64
    v[0x248..0x24c].copy_from_slice(&PAYLOAD_OFFSET.to_le_bytes());
    v[0x24c..0x250].copy_from_slice(&(stream.len() as u32 + 4).to_le_bytes());
    v.resize(v.len() + PAYLOAD_OFFSET as usize, 0);
    v.extend_from_slice(stream);
    v.extend_from_slice(&size.to_le_bytes());
    v
}
