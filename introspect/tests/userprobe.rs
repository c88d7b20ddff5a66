//! User probes: the spec grammar (accepted and refused, with each message),
//! evaluation on a guest built from page tables in a byte buffer, and
//! evaluation on random memory (never a panic, bounded reads).

mod support;

use std::cell::Cell;

use introspect::kernel::Kernel;
use introspect::paging::translate;
use introspect::plan::Offsets;
use introspect::userprobe::{
    check_unique_events, FieldKind, FieldSpec, FieldValue, ProbeSpec, ResolvedProbe, MAX_DEREF,
    MAX_FIELDS, STR_MAX,
};
use introspect::{MemError, Reg, VcpuContext};
use support::{RandomGuest, Rng};

fn show(f: &FieldSpec) -> String {
    format!(
        "{}={:?}{:?}:{:?}",
        f.name, f.fetch.base, f.fetch.derefs, f.kind
    )
}

#[test]
fn accepted_specs() {
    let deep = format!("d={}%di{}", "+8(".repeat(MAX_DEREF), ")".repeat(MAX_DEREF));
    let deep_spec = format!("e=f {deep}");
    let table: Vec<(&str, &str, u64, Vec<&str>)> = vec![
        (
            "myopen=do_sys_openat2 dfd=arg1 path=+0(arg2):string flags=+8(arg3):u32 who=$comm pid=$pid",
            "do_sys_openat2",
            0,
            vec![
                "dfd=Reg(Rdi)[]:Unsigned(64)",
                "path=Reg(Rsi)[0]:String",
                "flags=Reg(Rdx)[8]:Unsigned(32)",
                "who=Comm[]:String",
                "pid=Pid[]:Signed(32)",
            ],
        ),
        (
            "k=vfs_read+0x10 a=%di b=%rax c=%r13 d=%ip e=$stack f=$stack3 g=-8(%bp):s32 h=+0x10(+8(%di)):x16 t=$tid:u64",
            "vfs_read",
            0x10,
            vec![
                "a=Reg(Rdi)[]:Unsigned(64)",
                "b=Reg(Rax)[]:Unsigned(64)",
                "c=Reg(R13)[]:Unsigned(64)",
                "d=Reg(Rip)[]:Unsigned(64)",
                "e=Reg(Rsp)[]:Unsigned(64)",
                "f=Reg(Rsp)[24]:Unsigned(64)",
                "g=Reg(Rbp)[-8]:Signed(32)",
                "h=Reg(Rdi)[8, 16]:Hex(16)",
                "t=Tid[]:Unsigned(64)",
            ],
        ),
        (
            "j=foo.isra.0+12 i=@jiffies j=@init_task+0x18:u32 n=@init_task-16:s8 k=@0x1000 l=\\42 m=+u0(%si):string s=%si:string",
            "foo.isra.0",
            12,
            vec![
                "i=Symbol(\"jiffies\")[0]:Unsigned(64)",
                "j=Symbol(\"init_task\")[24]:Unsigned(32)",
                "n=Symbol(\"init_task\")[-16]:Signed(8)",
                "k=Imm(4096)[0]:Unsigned(64)",
                "l=Imm(42)[]:Unsigned(64)",
                "m=Reg(Rsi)[0]:String",
                "s=Reg(Rsi)[]:String",
            ],
        ),
        (
            "  e=f   %di  %si:s32 arg7 $arg8:x64 a6=$arg6 ",
            "f",
            0,
            vec![
                "arg1=Reg(Rdi)[]:Unsigned(64)",
                "arg2=Reg(Rsi)[]:Signed(32)",
                "arg3=Reg(Rsp)[8]:Unsigned(64)",
                "arg4=Reg(Rsp)[16]:Hex(64)",
                "a6=Reg(R9)[]:Unsigned(64)",
            ],
        ),
        (
            "e=f a=arg4:u8 b=arg5:u16 c=arg3:s64 d=$stack0:x32",
            "f",
            0,
            vec![
                "a=Reg(Rcx)[]:Unsigned(8)",
                "b=Reg(R8)[]:Unsigned(16)",
                "c=Reg(Rdx)[]:Signed(64)",
                "d=Reg(Rsp)[0]:Hex(32)",
            ],
        ),
        (&deep_spec, "f", 0, vec!["d=Reg(Rdi)[8, 8, 8, 8, 8, 8, 8, 8]:Unsigned(64)"]),
        ("bare=schedule", "schedule", 0, vec![]),
    ];
    for (spec, sym, off, want) in table {
        let p = ProbeSpec::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(p.symbol, sym, "{spec}");
        assert_eq!(p.offset, off, "{spec}");
        let got: Vec<String> = p.fields.iter().map(show).collect();
        assert_eq!(got, want, "{spec}");
        assert_eq!(spec.parse::<ProbeSpec>().as_ref(), Ok(&p));
    }
}

#[test]
fn refused_specs_say_what_is_wrong() {
    let long = format!("{}=f", "a".repeat(65));
    let nine = format!("e=f x={}%di{}", "+0(".repeat(9), ")".repeat(9));
    let eight_and_sym = format!("e=f x={}@jiffies{}", "+0(".repeat(8), ")".repeat(8));
    let huge = format!("e=f x={}%di", "+0(".repeat(100_000));
    let seventeen = format!("e=f {}", vec!["%di"; 17].join(" "));
    let regs = "(they expose %ax %bx %cx %dx %si %di %bp %sp %r8..%r15 %ip)";
    let table: Vec<(&str, String)> = vec![
        ("", "empty probe: expected NAME=SYMBOL[+OFFSET] [FIELD=EXPR ...]".into()),
        ("   ", "empty probe: expected NAME=SYMBOL[+OFFSET] [FIELD=EXPR ...]".into()),
        ("do_sys_openat2 a=%di", "`do_sys_openat2`: a probe starts with NAME=SYMBOL[+OFFSET]".into()),
        ("=f", "event name `` is empty".into()),
        ("1abc=f", "event name `1abc` must start with a letter or `_`".into()),
        ("my-open=f", "event name `my-open` may hold only ASCII letters, digits and `_`".into()),
        ("héllo=f", "event name `héllo` may hold only ASCII letters, digits and `_`".into()),
        ("event=f", "event name `event` is a CTF (TSDL) keyword".into()),
        (&long, format!("event name `{}` is longer than 64 characters", "a".repeat(65))),
        ("sched_switch=f", "event name `sched_switch` is taken by one of hvtrace's own events".into()),
        ("syscall_entry_x=f", "event name `syscall_entry_x` is taken by one of hvtrace's own events".into()),
        ("lttng_statedump_foo=f", "event name `lttng_statedump_foo` is taken by one of hvtrace's own events".into()),
        ("e=", "symbol `` is empty".into()),
        ("e=+4", "symbol `` is empty".into()),
        ("e=9foo", "symbol `9foo` is not a kernel symbol name".into()),
        ("e=foo-8", "symbol `foo-8` is not a kernel symbol name".into()),
        ("e=foo+bar", "offset `bar` of `foo`: expected +DECIMAL or +0xHEX".into()),
        ("e=foo+", "offset `` of `foo`: expected +DECIMAL or +0xHEX".into()),
        ("e=f _x=%di", "field name `_x` must not start with `_` (CTF readers strip it)".into()),
        ("e=f int=%di", "field name `int` is a CTF (TSDL) keyword".into()),
        ("e=f a.b=%di", "field name `a.b` may hold only ASCII letters, digits and `_`".into()),
        ("e=f =%di", "field name `` is empty".into()),
        ("e=f a=%di a=%si", "field `a` is defined twice".into()),
        ("e=f %di arg1=%si", "field `arg1` is defined twice".into()),
        (&seventeen, "too many fields (17): at most 16".into()),
        ("e=f x=%flags", format!("field `x`: register `%flags` is not available to hvtrace's engines {regs}")),
        ("e=f x=%foo", "field `x`: unknown register `%foo` (x86-64 names: %ax %bx %cx %dx %si %di %bp %sp %r8..%r15 %ip, or %rax...)".into()),
        ("e=f r=$retval", "field `r`: `$retval` needs a return probe; hvtrace user probes fire at SYMBOL[+OFFSET], not on return".into()),
        ("e=f+4 x=arg1", "field `x`: `arg1` is only known at a function's entry; this probe is at +0x4".into()),
        ("e=f+0x20 x=+8($arg2)", "field `x`: `$arg2` is only known at a function's entry; this probe is at +0x20".into()),
        ("e=f x=arg0", "field `x`: argument numbers run from 1 to 16 at column 1 of `arg0`".into()),
        ("e=f x=+8($arg17)", "field `x`: argument numbers run from 1 to 16 at column 4 of `+8($arg17)`".into()),
        ("e=f x=argv", "field `x`: argument numbers run from 1 to 16 at column 1 of `argv`".into()),
        ("e=f x=$stack2048", "field `x`: stack entries run from 0 to 2047 at column 1 of `$stack2048`".into()),
        ("e=f x=$stackz", "field `x`: stack entries run from 0 to 2047 at column 1 of `$stackz`".into()),
        ("e=f x=$foo", "field `x`: unknown variable (known: $stack $stackN $argN $comm $pid $tid) at column 1 of `$foo`".into()),
        ("e=f x=+8(%di", "field `x`: expected `)` at column 7 of `+8(%di`".into()),
        ("e=f x=+8%di", "field `x`: expected `(` after the offset at column 3 of `+8%di`".into()),
        ("e=f x=+zz(%di)", "field `x`: expected an offset (decimal or 0x hex) at column 2 of `+zz(%di)`".into()),
        ("e=f x=+0x8000000000000000(%di)", "field `x`: offset out of range at column 2 of `+0x8000000000000000(%di)`".into()),
        ("e=f x=%di)", "field `x`: unexpected text after the expression at column 4 of `%di)`".into()),
        ("e=f x=", "field `x`: expected a fetch argument at column 1 of ``".into()),
        ("e=f x=+8()", "field `x`: expected %REG, argN, $stack, $stackN, $comm, $pid, $tid, @SYM, +OFFS(...) or \\IMM at column 4 of `+8()`".into()),
        ("e=f x=hello", "field `x`: expected %REG, argN, $stack, $stackN, $comm, $pid, $tid, @SYM, +OFFS(...) or \\IMM at column 1 of `hello`".into()),
        ("e=f x=@", "field `x`: expected a symbol or an address after `@` at column 2 of `@`".into()),
        ("e=f x=@jiffies+", "field `x`: expected an offset after the symbol at column 10 of `@jiffies+`".into()),
        ("e=f x=@0xzz", "field `x`: expected an address after `@` at column 2 of `@0xzz`".into()),
        ("e=f x=\\zz", "field `x`: expected a number after `\\` at column 2 of `\\zz`".into()),
        ("e=f x=arg1:u128", "field `x`: unknown type `u128` (u8 u16 u32 u64 s8 s16 s32 s64 x8 x16 x32 x64 string)".into()),
        ("e=f x=arg1:", "field `x`: unknown type `` (u8 u16 u32 u64 s8 s16 s32 s64 x8 x16 x32 x64 string)".into()),
        ("e=f x=arg1:é", "field `x`: unknown type `é` (u8 u16 u32 u64 s8 s16 s32 s64 x8 x16 x32 x64 string)".into()),
        ("e=f x=$comm:u32", "field `x`: `$comm` is a string and takes no integer type".into()),
        ("e=f x=$pid:string", "field `x`: `$pid` and `$tid` are integers, not strings".into()),
        ("e=f x=+0($tid)", "field `x`: `$comm`, `$pid` and `$tid` are values, not addresses to read".into()),
        (&nine, "field `x`: more than 8 nested memory reads".into()),
        (&eight_and_sym, "field `x`: more than 8 nested memory reads".into()),
        (&huge, "field `x`: more than 8 nested memory reads".into()),
    ];
    for (spec, want) in table {
        match ProbeSpec::parse(spec) {
            Ok(p) => panic!("accepted {spec:?}: {p:?}"),
            Err(e) => assert_eq!(e.to_string(), want, "{spec:?}"),
        }
    }
}

#[test]
fn resolution_and_event_names() {
    let syms = |s: &str| match s {
        "do_sys_openat2" => Some(0xffff_ffff_8130_0000),
        "jiffies" => Some(0xffff_ffff_8200_0000),
        "zero" => Some(0),
        _ => None,
    };
    let p = ProbeSpec::parse("o=do_sys_openat2+0x14 j=@jiffies").unwrap();
    let r = p.resolve(syms).unwrap();
    assert_eq!(r.link_addr(), 0xffff_ffff_8130_0014);
    assert_eq!(r.addr(), 0xffff_ffff_8130_0014);
    let r = r.with_slide(0x1e00_0000);
    assert_eq!(r.addr(), 0xffff_ffff_9f30_0014);
    assert_eq!(r.name(), "o");
    let err = |spec: &str| {
        ProbeSpec::parse(spec)
            .unwrap()
            .resolve(syms)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(err("o=nosuch"), "unknown kernel symbol `nosuch`");
    assert_eq!(err("o=zero"), "unknown kernel symbol `zero`");
    assert_eq!(
        err("o=do_sys_openat2 a=+8(@nosuch_var+8)"),
        "unknown kernel symbol `nosuch_var`"
    );

    // a spec built by hand is held to the same limits
    let mut p = ProbeSpec::parse("o=do_sys_openat2 x=+8(%di)").unwrap();
    p.fields[0].fetch.derefs = vec![0; MAX_DEREF + 1];
    assert_eq!(
        p.resolve(syms).unwrap_err().to_string(),
        "field `x`: more than 8 nested memory reads"
    );

    let a = ProbeSpec::parse("a=f").unwrap();
    let b = ProbeSpec::parse("b=f").unwrap();
    assert_eq!(check_unique_events(&[a.clone(), b.clone()]), Ok(()));
    assert_eq!(
        check_unique_events(&[a.clone(), b, a])
            .unwrap_err()
            .to_string(),
        "event `a` is defined by two probes"
    );
}

// ---------------------------------------------------------------------------
// A guest made of a physical byte buffer with real 4-level page tables.

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
