//! User probes evaluated: on a guest built from page tables in a byte
//! buffer, and on random memory (never a panic, bounded reads).

mod support;

use std::cell::Cell;

use introspect::kernel::Kernel;
use introspect::paging::translate;
use introspect::plan::Offsets;
use introspect::userprobe::{
    FieldKind, FieldValue, ProbeSpec, ResolvedProbe, MAX_DEREF, MAX_FIELDS, STR_MAX,
};
use introspect::{MemError, Reg, VcpuContext};
use support::{RandomGuest, Rng};

const CR3: u64 = 0x1000;
const PHYS: usize = 4 << 20;

struct PagedGuest {
    phys: Vec<u8>,
    next_table: u64,
    next_page: u64,
    regs: [u64; Reg::ALL.len()],
    reads: Cell<u64>,
}

impl PagedGuest {
    fn new() -> Self {
        Self {
            phys: vec![0; PHYS],
            next_table: 0x2000,
            next_page: 0x10_0000,
            regs: [0; Reg::ALL.len()],
            reads: Cell::new(0),
        }
    }
    fn phys_u64(&self, pa: u64) -> Option<u64> {
        let a = usize::try_from(pa).ok()?;
        let b = self.phys.get(a..a + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
    /// Maps the page of `va` (if not yet) and returns the physical address of `va`.
    fn map(&mut self, va: u64) -> u64 {
        let mut table = CR3;
        for level in (2..=4u32).rev() {
            let e = table + ((va >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let mut v = self.phys_u64(e).unwrap();
            if v & 1 == 0 {
                v = self.next_table | 3;
                self.next_table += 0x1000;
                self.phys[e as usize..e as usize + 8].copy_from_slice(&v.to_le_bytes());
            }
            table = v & !0xfff;
        }
        let e = table + ((va >> 12) & 0x1ff) * 8;
        let mut v = self.phys_u64(e).unwrap();
        if v & 1 == 0 {
            v = self.next_page | 3;
            self.next_page += 0x1000;
            self.phys[e as usize..e as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
        (v & !0xfff) | (va & 0xfff)
    }
    fn write(&mut self, va: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let pa = self.map(va + i as u64);
            self.phys[pa as usize] = *b;
        }
    }
    fn write_u64(&mut self, va: u64, v: u64) {
        self.write(va, &v.to_le_bytes());
    }
    fn set(&mut self, r: Reg, v: u64) {
        self.regs[r as usize] = v;
    }
}

impl VcpuContext for PagedGuest {
    fn read_reg(&self, reg: Reg) -> u64 {
        match reg {
            Reg::Cr3 => CR3,
            _ => self.regs[reg as usize],
        }
    }
    fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get() + 1);
        let mut done = 0;
        while done < buf.len() {
            let a = va.wrapping_add(done as u64);
            let t = translate(&|pa| self.phys_u64(pa), CR3, a, false)
                .map_err(|_| MemError::Unmapped(a))?;
            let n = ((0x1000 - (a & 0xfff)) as usize).min(buf.len() - done);
            self.read_phys(t.pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
    fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let a = usize::try_from(pa).map_err(|_| MemError::OutOfRange(pa))?;
        let src = self
            .phys
            .get(a..a + buf.len())
            .ok_or(MemError::OutOfRange(pa))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn vcpu_index(&self) -> u32 {
        0
    }
}

const SLIDE: u64 = 0x1000_0000;
const JIFFIES: u64 = 0xffff_ffff_8200_0000;
const PERCPU: u64 = 0xffff_8880_0010_0000;
const TASK: u64 = 0xffff_8880_0020_0000;
const STRUCT: u64 = 0xffff_8880_0030_0100;
const FILENAME: u64 = 0xffff_8880_0040_0ffa; // crosses a page boundary
const UNMAPPED: u64 = 0xffff_8880_0666_0000;
const EDGE: u64 = 0xffff_8880_0050_0ffd; // "ab" then an unmapped page
const LONG: u64 = 0xffff_8880_0060_0000;
const STACK: u64 = 0xffff_c900_0001_3f00;

fn kernel() -> Kernel {
    Kernel {
        page_offset_base: 0,
        slide: SLIDE,
        init_task: 0,
        off: Offsets {
            task_pid: 0x10,
            task_tgid: 0x14,
            task_prio: 0x18,
            task_state: 0x1c,
            task_state_size: 4,
            task_comm: 0x40,
            percpu_current_task: 0x20,
            ..Offsets::default()
        },
        ..Kernel::default()
    }
}

/// The guest of an `openat(AT_FDCWD, "/etc/passwd", 0x8241)` by pid 40,
/// tid 42, "myprog", with a struct whose fields are known.
fn guest() -> PagedGuest {
    let mut g = PagedGuest::new();
    g.write_u64(PERCPU + 0x20, TASK);
    g.write(TASK + 0x10, &42u32.to_le_bytes());
    g.write(TASK + 0x14, &40u32.to_le_bytes());
    g.write(TASK + 0x40, b"myprog\0\0\0\0\0\0\0\0\0\0");
    g.write(FILENAME, b"/etc/passwd\0");
    g.write_u64(STRUCT, FILENAME);
    g.write(STRUCT + 8, &0x8241u32.to_le_bytes());
    g.write(STRUCT + 0xc, &(-5i16).to_le_bytes());
    g.write(STRUCT + 0xe, &[0xff]);
    g.write_u64(STRUCT + 0x10, UNMAPPED);
    g.write_u64(STRUCT + 0x18, STRUCT); // a pointer to itself
    g.write_u64(STRUCT + 0x20, EDGE);
    g.write_u64(STRUCT + 0x28, LONG);
    g.write(EDGE, b"ab");
    g.write(LONG, &[b'z'; 300]);
    g.write_u64(JIFFIES + SLIDE, 0x1_2345_6789);
    g.write_u64(JIFFIES + SLIDE + 8, 0xdead_beef);
    for (i, v) in [0xffff_ffff_8123_4567u64, 7, 8, 9].iter().enumerate() {
        g.write_u64(STACK + 8 * i as u64, *v);
    }
    g.set(Reg::GsBase, PERCPU);
    g.set(Reg::Rdi, -100i64 as u64);
    g.set(Reg::Rsi, FILENAME);
    g.set(Reg::Rdx, STRUCT);
    g.set(Reg::Rcx, 0x1234_5678_9abc_def0);
    g.set(Reg::Rsp, STACK);
    g
}

fn probe(spec: &str) -> ResolvedProbe {
    let syms = |s: &str| match s {
        "do_sys_openat2" | "f" => Some(0xffff_ffff_8130_0000),
        "jiffies" => Some(JIFFIES),
        _ => None,
    };
    ProbeSpec::parse(spec)
        .unwrap()
        .resolve(syms)
        .unwrap()
        .with_slide(SLIDE)
}

fn run(g: &PagedGuest, spec: &str) -> Vec<FieldValue> {
    let p = probe(spec);
    let mut out = [FieldValue::EMPTY; MAX_FIELDS];
    let n = p.fetch(g, &kernel(), &mut out);
    assert_eq!(n, p.len());
    out[..n].to_vec()
}

fn int(v: &FieldValue) -> Option<i64> {
    v.valid.then_some(v.as_i64())
}

fn text(v: &FieldValue) -> Option<&str> {
    v.valid.then(|| v.as_str())
}

#[test]
fn the_openat_example() {
    let g = guest();
    let spec = "myopen=do_sys_openat2 dfd=arg1:s32 path=+0(arg2):string flags=+8(arg3):u32 who=$comm pid=$pid tid=$tid";
    let p = probe(spec);
    let kinds: Vec<(&str, FieldKind)> = p.fields().collect();
    assert_eq!(
        kinds,
        [
            ("dfd", FieldKind::Signed(32)),
            ("path", FieldKind::String),
            ("flags", FieldKind::Unsigned(32)),
            ("who", FieldKind::String),
            ("pid", FieldKind::Signed(32)),
            ("tid", FieldKind::Signed(32)),
        ]
    );
    let v = run(&g, spec);
    assert_eq!(int(&v[0]), Some(-100));
    assert_eq!(text(&v[1]), Some("/etc/passwd"));
    assert_eq!(int(&v[2]), Some(0x8241));
    assert_eq!(text(&v[3]), Some("myprog"));
    assert_eq!(int(&v[4]), Some(40));
    assert_eq!(int(&v[5]), Some(42));
    // the current task is read once for the three task fields
    g.reads.set(0);
    run(&g, "e=f who=$comm pid=$pid tid=$tid");
    assert!(g.reads.get() <= 6, "{} reads", g.reads.get());
}

#[test]
fn types_truncate_and_extend() {
    let g = guest();
    let v = run(
        &g,
        "e=f a=%di:u8 b=%di:s8 c=%di:x16 d=%cx:u32 e=%cx:s64 f=+0xc(%dx):s16 g=+0xc(%dx):u16 h=+0xe(%dx):s8 i=+0xe(%dx):u8 j=\\0x1ff:u8",
    );
    let want = [
        0x9c,
        -100,
        0xff9c,
        0x9abc_def0,
        0x1234_5678_9abc_def0,
        -5,
        0xfffb,
        -1,
        0xff,
        0xff,
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(int(&v[i]), Some(*w), "field {i}");
    }
}

#[test]
fn nested_reads_cycles_symbols_and_stack() {
    let g = guest();
    let cycle = format!(
        "c={}%dx{}",
        "+0x18(".repeat(MAX_DEREF - 1),
        ")".repeat(MAX_DEREF - 1)
    );
    let v = run(
        &g,
        &format!(
            "e=do_sys_openat2 {cycle}:x64 s=+0(+0(+0x18(+0x18(%dx)))):string p=+0(+0x18(%dx)):string j=@jiffies j8=@jiffies+8:u32 \
             st=$stack s0=$stack0 s2=$stack2 a7=arg7 a8=$arg8:u8 reg=%si:string"
        ),
    );
    assert_eq!(int(&v[0]), Some(STRUCT as i64));
    assert_eq!(text(&v[1]), Some("/etc/passwd"));
    // `+0(P):string` is the string at P: here the pointer's own bytes
    assert!(v[2].valid);
    assert_eq!(v[2].as_bytes(), &FILENAME.to_le_bytes()[..3]);
    assert_eq!(int(&v[3]), Some(0x1_2345_6789));
    assert_eq!(int(&v[4]), Some(0xdead_beef));
    assert_eq!(int(&v[5]), Some(STACK as i64));
    assert_eq!(int(&v[6]), Some(0xffff_ffff_8123_4567u64 as i64));
    assert_eq!(int(&v[7]), Some(8));
    assert_eq!(int(&v[8]), Some(7));
    assert_eq!(int(&v[9]), Some(8));
    assert_eq!(text(&v[10]), Some("/etc/passwd"));
    // without the slide, @jiffies is read at its link address: unmapped
    let p = ProbeSpec::parse("e=f j=@jiffies")
        .unwrap()
        .resolve(|_| Some(JIFFIES))
        .unwrap();
    let mut out = [FieldValue::EMPTY; 1];
    p.fetch(&g, &kernel(), &mut out);
    assert!(!out[0].valid);
}

#[test]
fn unreadable_values_are_marked() {
    let mut g = guest();
    let v = run(
        &g,
        "e=f a=+0(+0x10(%dx)) b=+0(+0x10(%dx)):string c=+4(+0x10(%dx)):s32 d=+0(+0x20(%dx)):string \
         l=+0(+0x28(%dx)):string n=+0(%ax):string ok=+8(%dx):u32",
    );
    for (i, f) in v[..4].iter().enumerate() {
        if i == 3 {
            continue;
        }
        assert!(!f.valid, "field {i}");
        assert_eq!((f.int, f.len), (0, 0));
        assert_eq!(f.as_str(), "");
    }
    // a string that runs into an unmapped page ends there
    assert_eq!(text(&v[3]), Some("ab"));
    // a long string is cut to the buffer
    assert_eq!(v[4].len as usize, STR_MAX - 1);
    assert!(v[4].as_bytes().iter().all(|&c| c == b'z'));
    assert!(!v[5].valid, "NULL pointer");
    assert_eq!(int(&v[6]), Some(0x8241));

    // no usable per-CPU base: task fields are marked, the others still read
    g.set(Reg::GsBase, 0x1234);
    let v = run(&g, "e=f who=$comm pid=$pid tid=$tid ok=+8(%dx):u32");
    assert!(v[..3].iter().all(|f| !f.valid && f.int == 0 && f.len == 0));
    assert_eq!(int(&v[3]), Some(0x8241));
    // a current-task pointer into unmapped memory
    g.set(Reg::GsBase, PERCPU);
    g.write_u64(PERCPU + 0x20, UNMAPPED);
    let v = run(&g, "e=f who=$comm pid=$pid");
    assert!(!v[0].valid && !v[1].valid);
}

#[test]
fn short_buffers_and_reuse() {
    let g = guest();
    let p = probe("e=f a=%di b=+0(%si):string c=%cx");
    let mut out = [FieldValue::EMPTY; 2];
    assert_eq!(p.fetch(&g, &kernel(), &mut out), 2);
    assert_eq!(text(&out[1]), Some("/etc/passwd"));
    // a reused buffer holds no leftovers of the previous event
    let q = probe("e=f a=%di b=+0(+0x20(%dx)):string");
    q.fetch(&g, &kernel(), &mut out);
    assert_eq!(out[1].as_bytes(), b"ab");
    assert!(out[1].bytes[2..].iter().all(|&c| c == 0));
    assert_eq!(p.fetch(&g, &kernel(), &mut []), 0);
    assert!(probe("bare=do_sys_openat2").is_empty());
}

// ---------------------------------------------------------------------------
// Random memory and random specs.

/// `pick` on the shared PRNG.
fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[(rng.next() % xs.len() as u64) as usize]
}

fn random_expr(rng: &mut Rng, depth: u32) -> String {
    let atoms = [
        "%di",
        "%si",
        "%dx",
        "%cx",
        "%ax",
        "%sp",
        "%bp",
        "%r8",
        "%r15",
        "%ip",
        "arg1",
        "arg2",
        "arg6",
        "arg9",
        "$stack",
        "$stack5",
        "@jiffies",
        "@jiffies+0x40",
        "@0xffff888000001000",
        "\\7",
    ];
    if depth == 0 || rng.next() % 3 == 0 {
        return pick(rng, &atoms).to_string();
    }
    let sign = if rng.next() % 4 == 0 { "-" } else { "+" };
    let off = rng.next() % 0x2000;
    format!("{sign}{off:#x}({})", random_expr(rng, depth - 1))
}

#[test]
fn random_memory_never_panics_and_reads_are_bounded() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let types = ["", ":u8", ":s16", ":x32", ":s64", ":string", ":u64"];
    let mut valid = 0u64;
    for _ in 0..3000 {
        let nfields = 1 + (rng.next() % MAX_FIELDS as u64) as usize;
        let mut spec = String::from("fuzz=do_sys_openat2");
        for i in 0..nfields {
            let e = match rng.next() % 10 {
                0 => "$comm".to_string(),
                1 => "$pid".to_string(),
                2 => "$tid:u16".to_string(),
                _ => format!("{}{}", random_expr(&mut rng, 7), pick(&mut rng, &types)),
            };
            spec.push_str(&format!(" f{i}={e}"));
        }
        let p = ProbeSpec::parse(&spec)
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
            .resolve(|_| Some(0xffff_ffff_8100_0000 | (rng.0 & 0xff_f000)))
            .unwrap()
            .with_slide(rng.next() & 0x3fe0_0000);
        let mut regs = [0u64; Reg::ALL.len()];
        for r in regs.iter_mut() {
            *r = match rng.next() % 3 {
                0 => 0xffff_8880_0000_0000 | (rng.next() & 0xffff_ffff),
                1 => rng.next() & 0x7fff_ffff_ffff,
                _ => rng.next(),
            };
        }
        let g = RandomGuest {
            seed: rng.next(),
            regs,
            reads: Cell::new(0),
            overrides: Default::default(),
        };
        let mut k = kernel();
        k.off.percpu_current_task = rng.next() % 0x4000;
        k.off.task_comm = rng.next() % 0x4000;
        let mut out = [FieldValue::EMPTY; MAX_FIELDS];
        assert_eq!(p.fetch(&g, &k, &mut out), nfields);
        // at most MAX_DEREF reads per field (+1: a string's second page),
        // and the current task once
        let bound = nfields as u64 * (MAX_DEREF as u64 + 1) + 6;
        assert!(
            g.reads.get() <= bound,
            "{} reads > {bound}: {spec}",
            g.reads.get()
        );
        for (f, (_, kind)) in out.iter().zip(p.fields()) {
            assert!(usize::from(f.len) < STR_MAX);
            if !f.valid {
                assert_eq!((f.int, f.len), (0, 0));
            }
            if let Some(bits @ 8..=32) = kind.bits() {
                if kind != FieldKind::Signed(bits) {
                    assert!(f.int < 1 << bits);
                }
            }
            valid += u64::from(f.valid);
        }
    }
    assert!(valid > 1000, "random memory yields some readable values");
}

#[test]
fn random_text_never_panics_the_parser() {
    let mut rng = Rng(1234567);
    let alphabet: Vec<char> = "e=f+-0x1()%$@\\:;arg stackcommpidtid_u8s64 string é\t"
        .chars()
        .collect();
    for _ in 0..50_000 {
        let len = (rng.next() % 40) as usize;
        let mut s: String = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        if rng.next() % 2 == 0 {
            s.insert_str(0, "e=f x=");
        }
        if let Ok(p) = ProbeSpec::parse(&s) {
            assert!(p.fields.len() <= MAX_FIELDS);
            assert!(p.fields.iter().all(|f| f.fetch.derefs.len() <= MAX_DEREF));
        }
    }
}
