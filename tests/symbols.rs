//! guest-symbols on the real Debian 6.1 and 6.12 images: every recovered
//! fact is held against something independent of the kallsyms decoder —
//! the ELF section headers, the kernel's own export tables, the image's
//! strings, and the guest's own /proc/kallsyms read inside the booted guest.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use guest_symbols::elf::KernelElf;
use guest_symbols::{extract_vmlinux, Kernel, KernelImage};

const LINES: [&str; 2] = ["6.1", "6.12"];

fn vmlinuz(line: &str) -> PathBuf {
    common::image_dir(line).join("vmlinuz")
}

fn open(line: &str) -> (Kernel, Vec<u8>) {
    let path = vmlinuz(line);
    let k = KernelImage::open(&path).expect("recover the image");
    let elf = extract_vmlinux(&std::fs::read(&path).unwrap()).expect("extract vmlinux");
    (k, elf)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hvtrace-symbols-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Section-boundary symbols the linker script defines must equal the ELF
/// section headers, which the kallsyms decoder never reads.
#[test]
fn kallsyms_agree_with_elf_sections() {
    for line in LINES {
        let (k, elf_bytes) = open(line);
        let elf = KernelElf::parse(&elf_bytes).unwrap();
        let sect = |n: &str| elf.section(n).unwrap_or_else(|| panic!("{line}: no {n}"));
        let sym = |n: &str| {
            k.symbols
                .addr(n)
                .unwrap_or_else(|| panic!("{line}: no {n}"))
        };
        let text = sect(".text");
        assert_eq!(sym("_text"), text.vaddr, "{line}");
        assert_eq!(sym("_stext"), text.vaddr, "{line}");
        assert!(sym("_etext") <= text.vaddr + text.size as u64, "{line}");
        for (start, stop, s) in [
            ("__start___ksymtab", "__stop___ksymtab", "__ksymtab"),
            (
                "__start___ksymtab_gpl",
                "__stop___ksymtab_gpl",
                "__ksymtab_gpl",
            ),
            ("__start_BTF", "__stop_BTF", ".BTF"),
            ("__start_notes", "__stop_notes", ".notes"),
        ] {
            let sh = sect(s);
            assert_eq!(sym(start), sh.vaddr, "{line} {s}");
            assert_eq!(sym(stop), sh.vaddr + sh.size as u64, "{line} {s}");
        }
        assert_eq!(sym("__init_begin") & 0xfff, 0, "{line}");
        assert_eq!(sym("_sinittext"), sect(".init.text").vaddr, "{line}");
        let bss = sect(".bss");
        assert_eq!(sym("__bss_start"), bss.vaddr, "{line}");
        // Every text symbol lies in an executable section.
        let exec: Vec<_> = elf.sections.iter().filter(|s| s.flags & 4 != 0).collect();
        let stray: Vec<_> = k
            .symbols
            .iter()
            .filter(|s| s.kind == 'T' && !s.name.starts_with("__"))
            .filter(|s| {
                !exec
                    .iter()
                    .any(|e| s.addr >= e.vaddr && s.addr <= e.vaddr + e.size as u64)
            })
            .take(5)
            .collect();
        assert!(
            stray.is_empty(),
            "{line}: text symbols outside text: {stray:?}"
        );
        // The symbol counts DESIGN.md gives for these kernel lines.
        let (lo, hi) = if line == "6.1" {
            (90_000, 100_000)
        } else {
            (155_000, 175_000)
        };
        assert!(
            (lo..hi).contains(&k.symbols.len()),
            "{line}: {}",
            k.symbols.len()
        );
        // The banner the image prints, found by its own bytes, and the release
        // the package is named after.
        let needle = format!("{}\n", k.banner);
        assert!(
            elf_bytes
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "{line}: banner {:?} not in the image",
            k.banner
        );
        assert!(
            k.release.starts_with(line) && k.release.ends_with("-amd64"),
            "{}",
            k.release
        );
        let id = k.build_id.as_deref().unwrap_or_default();
        assert_eq!(id.len(), 40, "{line}: build-id {id:?}");
    }
}

/// The kernel's export tables (`__ksymtab*`, position-relative entries the
/// module loader reads) name ~10k symbols with their addresses: each must
/// be in the recovered table at exactly that address.
#[test]
fn every_exported_symbol_matches_kallsyms() {
    for line in LINES {
        let (k, _) = open(line);
        let exports = &k.symbols.exports;
        assert!(exports.len() > 8_000, "{line}: {} exports", exports.len());
        assert!(exports.iter().any(|e| e.gpl) && exports.iter().any(|e| !e.gpl));
        let mut by_name: HashMap<&str, Vec<u64>> = HashMap::new();
        for s in k.symbols.iter() {
            by_name.entry(&s.name).or_default().push(s.addr);
        }
        let bad: Vec<_> = exports
            .iter()
            .filter(|e| {
                !by_name
                    .get(e.name.as_str())
                    .is_some_and(|a| a.contains(&e.addr))
            })
            .take(5)
            .collect();
        assert!(bad.is_empty(), "{line}: exports not in kallsyms: {bad:?}");
        for name in ["_printk", "kfree", "schedule"] {
            let e = exports.iter().find(|e| e.name == name).unwrap();
            assert_eq!(
                k.symbols.by_name(name).map(|s| s.kind),
                Some('T'),
                "{line}: {name}"
            );
            let at = k.symbols.by_addr(e.addr + 1).unwrap();
            assert_eq!((at.symbol.addr, at.offset), (e.addr, 1), "{line}: {name}");
            assert!(at.size > 1);
        }
    }
}

#[test]
fn syscall_table_has_the_kernels_argument_names() {
    for line in LINES {
        let (k, _) = open(line);
        let t = &k.syscalls;
        let args = |nr: u32| -> Vec<String> {
            let s = t
                .by_nr(nr)
                .unwrap_or_else(|| panic!("{line}: no syscall {nr}"));
            s.args
                .as_ref()
                .unwrap()
                .iter()
                .map(|a| a.name.clone())
                .collect()
        };
        assert_eq!(t.by_nr(0).unwrap().name, "read");
        assert_eq!(args(0), ["fd", "buf", "count"]);
        assert_eq!(t.by_nr(1).unwrap().name, "write");
        assert_eq!(t.by_nr(257).unwrap().name, "openat");
        assert_eq!(args(257), ["dfd", "filename", "flags", "mode"]);
        let execve = t.by_nr(59).unwrap();
        assert_eq!(execve.name, "execve");
        assert_eq!(args(59), ["filename", "argv", "envp"]);
        assert_eq!(execve.args.as_ref().unwrap()[0].type_name, "const char *");
        // Each handler is the symbol kallsyms names `__x64_sys_<name>`.
        for s in &t.entries {
            assert_eq!(k.symbols.addr(&s.handler_symbol), Some(s.handler));
        }
        // sys_call_table holds one pointer per syscall up to NR_syscalls.
        let size = k.symbols.size_of("sys_call_table").unwrap();
        assert_eq!(size % 8, 0);
        assert!(t.entries.last().unwrap().nr < (size / 8) as u32);
        assert!(t.entries.len() > 350, "{line}: {}", t.entries.len());
    }
}

#[test]
fn btf_layouts_for_introspection() {
    for line in LINES {
        let (k, _) = open(line);
        let ty = &k.types;
        let comm = ty.member("task_struct", "comm").unwrap();
        assert_eq!((comm.size, comm.type_name.as_str()), (16, "char[16]"));
        let (state, m) = ty.member_any("task_struct", &["__state", "state"]).unwrap();
        assert_eq!((state, m.size), ("__state", 4));
        assert_eq!(ty.member("task_struct", "pid").unwrap().size, 4);
        assert_eq!(
            ty.member_offset("task_struct", "tgid"),
            ty.member_offset("task_struct", "pid").map(|p| p + 4)
        );
        assert_eq!(ty.member("mm_struct", "pgd").unwrap().size, 8);
        assert_eq!(ty.struct_size("list_head"), Some(16));
        assert_eq!(ty.struct_size("pt_regs"), Some(21 * 8));
        assert_eq!(ty.member_offset("pt_regs", "di"), Some(14 * 8));
        // init_task is a task_struct: the next symbol is at least that far.
        let ts = ty.struct_size("task_struct").unwrap();
        assert!(k.symbols.size_of("init_task").unwrap() >= ts, "{line}");
        if line == "6.12" {
            assert_eq!(ty.member_offset("pcpu_hot", "current_task"), Some(0));
            assert!(k.symbols.addr("pcpu_hot").is_some());
        } else {
            assert!(ty.has_var("current_task") || k.symbols.addr("current_task").is_some());
        }
    }
}

/// Tracepoint sites from `__jump_table`: every `sched_wakeup` site lies in
/// the wakeup path, and the register found in the out-of-line block (moved
/// into %rsi for the probe call) is the one the instruction right before
/// the site stores TASK_RUNNING through: `movl $0, __state(%reg)`, the
/// `WRITE_ONCE(p->__state, TASK_RUNNING)` of ttwu_do_wakeup, read
/// independently of the block. The CLI lists the same sites.
#[test]
fn sched_wakeup_sites_name_the_woken_task_register() {
    for line in LINES {
        let (k, elf_bytes) = open(line);
        let space = KernelElf::parse(&elf_bytes).unwrap().address_space();
        let state = k.types.member_offset("task_struct", "__state").unwrap();
        let sites: Vec<_> = k
            .tracepoint_sites
            .iter()
            .filter(|t| t.tracepoint == "sched_wakeup")
            .collect();
        assert!(!sites.is_empty(), "{line}: no sched_wakeup site");
        for t in &sites {
            let func = k.symbols.by_addr(t.addr).unwrap().symbol.name.clone();
            assert!(
                ["ttwu_do_wakeup", "try_to_wake_up", "ttwu_do_activate"].contains(&func.as_str()),
                "{line}: site {:#x} in {func}",
                t.addr
            );
            let reg = t
                .first_arg
                .unwrap_or_else(|| panic!("{line}: {t:?} without register"));
            assert!(reg < 8 && state < 0x80, "{line}: {t:?}");
            let before = space.read(&elf_bytes, t.addr - 7, 7).unwrap();
            assert_eq!(
                before,
                [0xc7, 0x40 | reg, state as u8, 0, 0, 0, 0],
                "{line}: {t:?} in {func}: not preceded by movl $0, {state:#x}(reg {reg})"
            );
        }
        // the other tracepoints are found too (hundreds of each kernel)
        let names: std::collections::BTreeSet<&str> = k
            .tracepoint_sites
            .iter()
            .map(|t| t.tracepoint.as_str())
            .collect();
        assert!(names.len() > 300, "{line}: {} tracepoints", names.len());
        assert!(names.contains("sched_switch") && names.contains("sched_waking"));

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvtrace"))
            .args(["symbols", "--tracepoints", "--no-cache"])
            .arg(vmlinuz(line))
            .output()
            .unwrap();
        assert!(out.status.success());
        let listed: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("sched_wakeup"))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect();
        let want: Vec<String> = sites.iter().map(|t| format!("{:016x}", t.addr)).collect();
        assert_eq!(listed, want, "{line}");
    }
}

/// `hvtrace symbols`: System.map text sorted by address, the same from the
/// cache, and a usable `--syscalls`/`--types` output.
#[test]
fn cli_prints_system_map_and_caches_by_build_id() {
    let path = vmlinuz("6.1");
    let cache = temp_dir("cache");
    let run = |extra: &[&str]| {
        let out = common::hvtrace()
            .arg("symbols")
            .arg(&path)
            .arg("--cache")
            .arg(&cache)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let t0 = std::time::Instant::now();
    let cold = run(&[]);
    let cold_t = t0.elapsed();
    let t1 = std::time::Instant::now();
    let warm = run(&[]);
    let warm_t = t1.elapsed();
    assert_eq!(cold, warm);
    assert!(
        warm_t < cold_t,
        "cache hit {warm_t:?} not faster than {cold_t:?}"
    );
    let entries = std::fs::read_dir(cache.join("by-build-id"))
        .unwrap()
        .count();
    assert_eq!(entries, 1);
    let mut last = 0u64;
    for l in cold.lines() {
        let mut f = l.split(' ');
        let (a, t, n) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        assert_eq!(a.len(), 16, "{l}");
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{l}"
        );
        let addr = u64::from_str_radix(a, 16).unwrap();
        assert!(addr >= last, "not sorted at {l}");
        last = addr;
        assert!(t.len() == 1 && !n.is_empty() && f.next().is_none(), "{l}");
    }
    let sc = run(&["--syscalls"]);
    assert!(
        sc.lines().any(|l| l
            .starts_with("257 openat(int dfd, const char * filename, int flags, umode_t mode)")),
        "{sc}"
    );
    let types: serde_json::Value = serde_json::from_str(&run(&["--types"])).unwrap();
    assert_eq!(
        types["structs"]["task_struct"]["members"]["comm"]["size"],
        16
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

/// The other input kinds give the same table as the bzImage: the extracted
/// ELF vmlinux, a gzip-compressed vmlinux, a raw `objcopy -O binary`-style
/// image (sections laid out from `_text`), and a System.map.
#[test]
fn elf_compressed_raw_and_system_map_inputs_agree() {
    use guest_symbols::{ImageFormat, OpenOptions, SymbolSource};
    use std::io::Write;
    let (k, elf_bytes) = open("6.1");
    let same = |other: &Kernel, what: &str| {
        assert_eq!(other.symbols.len(), k.symbols.len(), "{what}");
        assert!(other.symbols.iter().eq(k.symbols.iter()), "{what}");
        assert_eq!(other.build_id, k.build_id, "{what}");
        assert_eq!(other.release, k.release, "{what}");
    };
    let e = KernelImage::from_bytes(&elf_bytes).unwrap();
    assert_eq!(e.format, ImageFormat::Elf);
    same(&e, "elf");
    assert_eq!(e.syscalls.entries, k.syscalls.entries);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&elf_bytes).unwrap();
    let g = KernelImage::from_bytes(&gz.finish().unwrap()).unwrap();
    assert_eq!(
        g.format,
        ImageFormat::Compressed(guest_symbols::bzimage::Compression::Gzip)
    );
    same(&g, "gzip");

    let elf = KernelElf::parse(&elf_bytes).unwrap();
    let text = k.symbols.addr("_text").unwrap();
    let mut raw = Vec::new();
    for s in elf
        .sections
        .iter()
        .filter(|s| !s.nobits && s.flags & 2 != 0 && s.vaddr >= text)
    {
        let at = (s.vaddr - text) as usize;
        if raw.len() < at + s.size {
            raw.resize(at + s.size, 0);
        }
        raw[at..at + s.size].copy_from_slice(&elf_bytes[s.offset..s.offset + s.size]);
    }
    let r = KernelImage::from_bytes(&raw).unwrap();
    assert_eq!(r.format, ImageFormat::Raw);
    same(&r, "raw");
    assert_eq!(r.syscalls.entries, k.syscalls.entries);
    assert_eq!(
        r.types.struct_size("task_struct"),
        k.types.struct_size("task_struct")
    );

    let dir = temp_dir("sysmap");
    let map = dir.join("System.map");
    let mut text_map = Vec::new();
    k.symbols.write_system_map(&mut text_map).unwrap();
    std::fs::write(&map, &text_map).unwrap();
    let opts = OpenOptions {
        cache_dir: None,
        system_map: Some(&map),
    };
    let m = KernelImage::open_with(vmlinuz("6.1"), &opts).unwrap();
    assert_eq!(m.symbols.source, Some(SymbolSource::SystemMap));
    same(&m, "System.map");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Corrupted real images: errors, never panics (the library is called
/// in-process, so a panic fails the test).
#[test]
fn corrupted_real_image_gives_errors() {
    let data = std::fs::read(vmlinuz("6.1")).unwrap();
    let payload = guest_symbols::bzimage::payload(&data).unwrap();
    let p_start = payload.data.as_ptr() as usize - data.as_ptr() as usize;
    let mut seed = 0x853c_49e6_748f_ea9bu64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for _ in 0..3 {
        let cut = p_start + rnd() % (data.len() - p_start);
        assert!(
            KernelImage::from_bytes(&data[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    for _ in 0..3 {
        let mut d = data.clone();
        let at = p_start + 64 + rnd() % (payload.data.len() - 128);
        d[at] ^= 1 << (rnd() % 8);
        assert!(
            KernelImage::from_bytes(&d).is_err(),
            "bit flip at {at} went unnoticed"
        );
    }
    assert!(KernelImage::from_bytes(&[]).is_err());
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    assert!(KernelImage::from_bytes(&elf).is_err());
    assert!(KernelImage::from_bytes(&data[..4096]).is_err());
}

fn parse_kallsyms(text: &str) -> Vec<(u64, char, String)> {
    let mut v: Vec<_> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.contains('['))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let a = u64::from_str_radix(f.next()?, 16).ok()?;
            let t = f.next()?.chars().next()?;
            Some((a, t, f.next()?.to_string()))
        })
        .collect();
    v.sort();
    v
}

/// Boots the kernel with `nokaslr` and reads its /proc/kallsyms as root:
/// the core kernel's symbols (lines without `[module]`) must equal the
/// recovered table exactly — names, addresses and type letters.
fn guest_kallsyms_equals_recovered(line: &str) {
    let dir = temp_dir(&format!("kallsyms-{line}"));
    let capture = dir.join("kallsyms.txt");
    let out = common::hvtrace()
        .args([
            "run",
            "--backend",
            "qemu",
            "--kernel-line",
            line,
            "--append",
            "nokaslr",
        ])
        .arg("--capture")
        .arg(&capture)
        .args(["--", "/bin/sh", "-c", "cat /proc/kallsyms > /dev/ttyS1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guest = parse_kallsyms(&std::fs::read_to_string(&capture).unwrap());
    assert!(
        guest.len() > 50_000,
        "{line}: only {} lines captured",
        guest.len()
    );
    assert!(
        guest.iter().any(|s| s.0 != 0),
        "{line}: addresses hidden (kptr_restrict?)"
    );
    let k = KernelImage::open(vmlinuz(line)).unwrap();
    let mut ours: Vec<_> = k
        .symbols
        .iter()
        .map(|s| (s.addr, s.kind, s.name.clone()))
        .collect();
    ours.sort();
    let missing: Vec<_> = guest
        .iter()
        .filter(|s| ours.binary_search(s).is_err())
        .take(10)
        .collect();
    let extra: Vec<_> = ours
        .iter()
        .filter(|s| guest.binary_search(s).is_err())
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && guest.len() == ours.len(),
        "{line}: guest {} vs recovered {}; missing {missing:x?}; extra {extra:x?}",
        guest.len(),
        ours.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guest_proc_kallsyms_equals_recovered_table_6_1() {
    guest_kallsyms_equals_recovered("6.1");
}

#[test]
fn guest_proc_kallsyms_equals_recovered_table_6_12() {
    guest_kallsyms_equals_recovered("6.12");
}

/// The 32-bit (compat) table recovered from `ia32_sys_call`'s compare tree
/// holds the i386 ABI's numbers (fixed since Linux 1.0), each handler
/// being the kallsyms symbol of that name, and the native metadata's
/// argument names; the CLI prints it.
#[test]
fn compat_syscall_table_has_the_i386_numbers() {
    for line in LINES {
        let (k, _) = open(line);
        let t = &k.compat_syscalls;
        let abi = "1 exit 3 read 4 write 5 open 6 close 11 execve 20 getpid 102 socketcall 190 vfork 252 exit_group";
        let words: Vec<&str> = abi.split(' ').collect();
        for pair in words.chunks(2) {
            let (nr, name) = (pair[0].parse::<u32>().unwrap(), pair[1]);
            let s = t
                .by_nr(nr)
                .unwrap_or_else(|| panic!("{line}: no compat syscall {nr}"));
            assert_eq!(s.name, name, "{line}: compat {nr}");
        }
        // i386 has no syscall 17 (`break`), 31 (`stty`) nor 222
        for nr in [17, 31, 222] {
            assert!(t.by_nr(nr).is_none(), "{line}: compat {nr} is implemented?");
        }
        let open_args: Vec<&str> = t
            .by_nr(5)
            .unwrap()
            .args
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(open_args, ["filename", "flags", "mode"]);
        let dispatcher = k.symbols.addr("ia32_sys_call").unwrap();
        for s in &t.entries {
            assert_eq!(
                k.symbols.addr(&s.handler_symbol),
                Some(s.handler),
                "{line}: {s}"
            );
            assert!(
                s.handler_symbol.starts_with("__ia32_"),
                "{line}: {}",
                s.handler_symbol
            );
            assert_ne!(s.handler, dispatcher);
        }
        assert!(t.entries.len() > 350, "{line}: {}", t.entries.len());
        let out = common::hvtrace()
            .args(["symbols", "--syscalls", "--compat"])
            .arg(vmlinuz(line))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l == "20 getpid()"), "{line}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("5 open(const char * filename")),
            "{line}"
        );
    }
}
