//! User probes: the spec grammar (accepted and refused, with each message)
//! and resolution against a kernel's symbols. Their evaluation on guests
//! is in `userprobe_eval.rs`.

use introspect::userprobe::{check_unique_events, FieldSpec, ProbeSpec, MAX_DEREF};

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
