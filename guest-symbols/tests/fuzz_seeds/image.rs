//! Small kernel images: kallsyms tables, ELF files with and without a
//! symbol table, compressed streams, a bzImage around them.

use std::io::Write;

use guest_symbols::bzimage::Compression;

const BASE: u64 = 0xffff_ffff_8100_0000;
const RODATA: u64 = BASE + 0x1000;
const NOTES: u64 = BASE + 0x2000;
const BTF_AT: u64 = BASE + 0x3000;
const BUILD_ID: [u8; 20] =
    *b"\x5e\xed\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\xfe\xed";
pub(super) const BUILD_ID_HEX: &str = "5eed000102030405060708090a0b0c0d0e0ffeed";

/// The kernel's bytes from `BASE` on, its symbols, and its kallsyms tables.
pub(super) struct Parts {
    pub(super) image: Vec<u8>,
    notes_len: usize,
    btf_len: usize,
    pub(super) symbols: Vec<(u64, u8, String)>,
    pub(super) tables: Vec<u8>,
}

fn rel32(from: u64, to: u64) -> [u8; 4] {
    (to.wrapping_sub(from) as i32).to_le_bytes()
}

pub(super) fn kernel_parts(btf: &[u8]) -> Parts {
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
    pub(super) fn sections(&self, kallsyms_in_rodata: bool) -> Vec<Section> {
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
    pub(super) fn raw(&self) -> Vec<u8> {
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

pub(super) struct Section {
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
pub(super) fn elf_header(shoff: u64, shnum: u16, shstrndx: u16, phnum: u16) -> Vec<u8> {
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
pub(super) fn elf(sections: &[Section], symbols: Option<&[(u64, u8, String)]>) -> Vec<u8> {
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

pub(super) fn compress(d: &[u8], c: Compression) -> Vec<u8> {
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
pub(super) fn bzimage_around(stream: &[u8], size: u32) -> Vec<u8> {
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

fn pad8(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(8), 0);
}
