//! User-defined probes: `--probe 'NAME=SYMBOL[+OFFSET] [FIELD=EXPR ...]'`.
//!
//! The fetch-argument grammar follows Linux's kprobe_events:
//! `%REG` (`%di`, `%ax`, … or `%rdi`), `argN`/`$argN` (x86-64 SysV: rdi,
//! rsi, rdx, rcx, r8, r9, then the stack; function entry only), `$stack`
//! (the stack pointer), `$stackN` (its Nth 8-byte entry), `$comm`, `$pid`
//! (tgid), `$tid`, `@SYM[+|-OFFS]` and `@ADDR` (memory at a kernel symbol,
//! relocated by the KASLR slide, or at an absolute address), `\IMM`, and
//! `+|-[u]OFFS(FETCHARG)` (memory at FETCHARG ± OFFS, nestable up to
//! [`MAX_DEREF`] reads). `:TYPE` is one of `u8..u64`, `s8..s64`, `x8..x64`
//! or `string` (default `u64`; `$pid`/`$tid` default to `s32`, `$comm` is a
//! string). A string type reads the NUL-terminated string at the address the
//! expression designates (`+0(%si):string`, or `%si:string` for short).
//! `$retval` is refused: user probes fire where they are placed, not on
//! return. A field without `NAME=` is named `argN` after its position.
//!
//! Parsing ([`ProbeSpec::parse`]) and symbol resolution
//! ([`ProbeSpec::resolve`]) allocate; [`ResolvedProbe::fetch`] does not: it
//! reads at most `MAX_DEREF` words and one [`STR_MAX`]-byte string per field
//! plus the current task once, and marks what it cannot read (`valid ==
//! false`, value 0 or "").

use crate::ctx::{read_cstr, read_u64, Reg, VcpuContext};
use crate::kernel::Kernel;
use crate::task::{current_task_addr, read_task, Task};

/// Most fields a probe may have.
pub const MAX_FIELDS: usize = 16;
/// Most memory reads (dereferences) in one field's expression.
pub const MAX_DEREF: usize = 8;
/// Size of a string field's buffer (at most `STR_MAX - 1` bytes of text).
pub const STR_MAX: usize = 128;
/// Longest event or field name.
pub const MAX_NAME: usize = 64;
/// Longest kernel symbol name (KSYM_NAME_LEN).
pub const MAX_SYMBOL: usize = 512;
/// Highest N of `$stackN` (a 16 KiB kernel stack holds 2048 words).
pub const MAX_STACK_ENTRY: u64 = 2047;
/// Highest N of `argN` (7 and above come from the stack).
pub const MAX_ARG: u64 = 16;

/// Why a probe spec was refused. Each message names the piece at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("empty probe: expected NAME=SYMBOL[+OFFSET] [FIELD=EXPR ...]")]
    Empty,
    #[error("`{0}`: a probe starts with NAME=SYMBOL[+OFFSET]")]
    MissingSymbol(String),
    #[error("event name `{0}` {1}")]
    BadEventName(String, &'static str),
    #[error("symbol `{0}` {1}")]
    BadSymbol(String, &'static str),
    #[error("offset `{1}` of `{0}`: expected +DECIMAL or +0xHEX")]
    BadOffset(String, String),
    #[error("field name `{0}` {1}")]
    BadFieldName(String, &'static str),
    #[error("field `{0}` is defined twice")]
    DuplicateField(String),
    #[error("too many fields ({0}): at most {MAX_FIELDS}")]
    TooManyFields(usize),
    #[error("field `{field}`: {why} at column {col} of `{expr}`")]
    BadExpr {
        field: String,
        expr: String,
        col: usize,
        why: &'static str,
    },
    #[error("field `{0}`: unknown register `%{1}` (x86-64 names: %ax %bx %cx %dx %si %di %bp %sp %r8..%r11 %ip, or %rax...)")]
    UnknownRegister(String, String),
    #[error("field `{0}`: register `%{1}` is not available to hvtrace's engines (they expose %ax %bx %cx %dx %si %di %bp %sp %r8..%r11 %ip)")]
    UnavailableRegister(String, String),
    #[error("field `{0}`: `$retval` needs a return probe; hvtrace user probes fire at SYMBOL[+OFFSET], not on return")]
    Retval(String),
    #[error("field `{0}`: `{1}` is only known at a function's entry; this probe is at +{2:#x}")]
    ArgNotAtEntry(String, String, u64),
    #[error(
        "field `{0}`: unknown type `{1}` (u8 u16 u32 u64 s8 s16 s32 s64 x8 x16 x32 x64 string)"
    )]
    UnknownType(String, String),
    #[error("field `{0}`: {1}")]
    BadType(String, &'static str),
    #[error("field `{0}`: more than {MAX_DEREF} nested memory reads")]
    TooDeep(String),
    #[error("unknown kernel symbol `{0}`")]
    UnknownSymbol(String),
    #[error("event `{0}` is defined by two probes")]
    DuplicateEvent(String),
}

pub type Result<T, E = ProbeError> = std::result::Result<T, E>;

/// How a field is stored and shown (the trace writer maps it onto its own
/// field declarations). Integers carry their width in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    Unsigned(u8),
    Signed(u8),
    /// Unsigned, shown in base 16.
    Hex(u8),
    /// NUL-terminated text, at most `STR_MAX - 1` bytes.
    String,
}

impl FieldKind {
    fn parse(s: &str) -> Option<Self> {
        let bits = match s.get(1..)? {
            "8" => 8,
            "16" => 16,
            "32" => 32,
            "64" => 64,
            "tring" if s == "string" => return Some(FieldKind::String),
            _ => return None,
        };
        match s.as_bytes().first()? {
            b'u' => Some(FieldKind::Unsigned(bits)),
            b's' => Some(FieldKind::Signed(bits)),
            b'x' => Some(FieldKind::Hex(bits)),
            _ => None,
        }
    }

    /// Width in bits of an integer kind.
    pub fn bits(self) -> Option<u8> {
        match self {
            FieldKind::Unsigned(b) | FieldKind::Signed(b) | FieldKind::Hex(b) => Some(b),
            FieldKind::String => None,
        }
    }
}

/// Where a field's expression starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// A register's value (`%REG`, `argN`, `$stack`).
    Reg(Reg),
    /// A constant (`\IMM`, or the address of `@ADDR`).
    Imm(u64),
    /// The address of a kernel symbol (`@SYM`), relocated at fetch time.
    Symbol(String),
    Comm,
    Pid,
    Tid,
}

/// A field's expression: a base value, then up to [`MAX_DEREF`] memory
/// reads, innermost first; each reads at (current value + offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub base: Base,
    pub derefs: Vec<i64>,
}

fn fetch(base: Base, derefs: &[i64]) -> Fetch {
    let derefs = derefs.to_vec();
    Fetch { base, derefs }
}

/// One parsed field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: String,
    pub fetch: Fetch,
    pub kind: FieldKind,
}

/// A parsed `--probe` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub name: String,
    pub symbol: String,
    pub offset: u64,
    pub fields: Vec<FieldSpec>,
}

/// TSDL keywords (CTF 1.8), which cannot name an event or a field.
const TSDL_KEYWORDS: &str = "align callsite const char clock double enum env event floating_point \
    float integer int long short signed stream string struct trace typealias typedef unsigned \
    variant void _Bool _Complex _Imaginary";

/// Event names hvtrace writes itself (as lttng-modules names them), and
/// prefixes of its families.
const RESERVED_EVENTS: &str = "sched_switch sched_wakeup sched_wakeup_new sched_waking \
    sched_process_fork sched_process_exec sched_process_exit sched_process_free \
    irq_handler_entry irq_handler_exit irq_softirq_entry irq_softirq_exit irq_softirq_raise \
    timer_hrtimer_expire_entry timer_hrtimer_expire_exit";
const RESERVED_PREFIXES: &str = "syscall_entry_ syscall_exit_ compat_syscall_ lttng_";

fn check_ident(s: &str) -> Result<(), &'static str> {
    let Some(&first) = s.as_bytes().first() else {
        return Err("is empty");
    };
    if s.len() > MAX_NAME {
        return Err("is longer than 64 characters");
    }
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return Err("must start with a letter or `_`");
    }
    if !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return Err("may hold only ASCII letters, digits and `_`");
    }
    if TSDL_KEYWORDS.split_whitespace().any(|k| k == s) {
        return Err("is a CTF (TSDL) keyword");
    }
    Ok(())
}

fn check_event_name(s: &str) -> Result<()> {
    let bad = |why| ProbeError::BadEventName(s.to_string(), why);
    check_ident(s).map_err(bad)?;
    if RESERVED_EVENTS.split_whitespace().any(|e| e == s)
        || RESERVED_PREFIXES
            .split_whitespace()
            .any(|p| s.starts_with(p))
    {
        return Err(bad("is taken by one of hvtrace's own events"));
    }
    Ok(())
}

fn check_field_name(s: &str) -> Result<()> {
    let bad = |why| ProbeError::BadFieldName(s.to_string(), why);
    check_ident(s).map_err(bad)?;
    if s.starts_with('_') {
        return Err(bad("must not start with `_` (CTF readers strip it)"));
    }
    Ok(())
}

fn check_symbol(s: &str) -> Result<()> {
    let bad = |why| ProbeError::BadSymbol(s.to_string(), why);
    let Some(&first) = s.as_bytes().first() else {
        return Err(bad("is empty"));
    };
    if s.len() > MAX_SYMBOL {
        return Err(bad("is longer than 512 characters"));
    }
    if first.is_ascii_digit() || !s.bytes().all(is_sym_char) {
        return Err(bad("is not a kernel symbol name"));
    }
    Ok(())
}

fn is_sym_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'.'
}

/// Parses `0x`-hex or decimal.
fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None if s.bytes().all(|c| c.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

fn reg_by_name(n: &str) -> Option<Option<Reg>> {
    Some(Some(match n {
        "ax" | "rax" => Reg::Rax,
        "bx" | "rbx" => Reg::Rbx,
        "cx" | "rcx" => Reg::Rcx,
        "dx" | "rdx" => Reg::Rdx,
        "si" | "rsi" => Reg::Rsi,
        "di" | "rdi" => Reg::Rdi,
        "bp" | "rbp" => Reg::Rbp,
        "sp" | "rsp" => Reg::Rsp,
        "r8" => Reg::R8,
        "r9" => Reg::R9,
        "r10" => Reg::R10,
        "r11" => Reg::R11,
        "ip" | "rip" => Reg::Rip,
        "r12" | "r13" | "r14" | "r15" | "flags" | "cs" | "ss" | "ds" | "es" | "fs" | "gs"
        | "orig_ax" => return Some(None),
        _ => return None,
    }))
}

/// x86-64 SysV integer argument registers.
const ARG_REGS: [Reg; 6] = [Reg::Rdi, Reg::Rsi, Reg::Rdx, Reg::Rcx, Reg::R8, Reg::R9];

/// Recursive-descent parser over one field's expression (type removed).
struct Cursor<'a> {
    field: &'a str,
    expr: &'a str,
    pos: usize,
    offset: u64,
}

impl<'a> Cursor<'a> {
    fn err_at(&self, pos: usize, why: &'static str) -> ProbeError {
        ProbeError::BadExpr {
            field: self.field.to_string(),
            expr: self.expr.to_string(),
            col: pos + 1,
            why,
        }
    }

    fn err(&self, why: &'static str) -> ProbeError {
        self.err_at(self.pos, why)
    }

    fn peek(&self) -> Option<u8> {
        self.expr.as_bytes().get(self.pos).copied()
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let expr: &'a str = self.expr;
        let start = self.pos;
        while expr.as_bytes().get(self.pos).copied().is_some_and(&f) {
            self.pos += 1;
        }
        &expr[start..self.pos]
    }

    fn number(&mut self, what: &'static str) -> Result<u64> {
        let start = self.pos;
        let text = self.take_while(|c| c.is_ascii_alphanumeric());
        parse_num(text).ok_or_else(|| self.err_at(start, what))
    }

    fn signed_offset(&mut self, neg: bool, what: &'static str) -> Result<i64> {
        let start = self.pos;
        let v = self.number(what)?;
        let v = i64::try_from(v).map_err(|_| self.err_at(start, "offset out of range"))?;
        Ok(if neg { -v } else { v })
    }

    /// `argN` (or `$argN`) written as `text`, starting at `start`.
    fn arg(&self, n: Option<u64>, text: &str, start: usize) -> Result<Fetch> {
        if self.offset != 0 {
            let (f, t) = (self.field.to_string(), text.to_string());
            return Err(ProbeError::ArgNotAtEntry(f, t, self.offset));
        }
        let n = match n {
            Some(n @ 1..=MAX_ARG) => n,
            _ => return Err(self.err_at(start, "argument numbers run from 1 to 16")),
        };
        match ARG_REGS.get((n - 1) as usize) {
            Some(&r) => Ok(fetch(Base::Reg(r), &[])),
            None => {
                // at entry, arg7 is the first word above the return address
                Ok(fetch(Base::Reg(Reg::Rsp), &[8 * (n as i64 - 6)]))
            }
        }
    }

    /// FETCHARG; `depth` counts the enclosing `OFFS(...)`.
    fn fetcharg(&mut self, depth: usize) -> Result<Fetch> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.err("expected a fetch argument"));
        };
        match c {
            b'%' => {
                self.pos += 1;
                let name = self.take_while(|c| c.is_ascii_alphanumeric() || c == b'_');
                let (f, r) = (self.field.to_string(), name.to_string());
                match reg_by_name(name) {
                    Some(Some(r)) => Ok(fetch(Base::Reg(r), &[])),
                    Some(None) => Err(ProbeError::UnavailableRegister(f, r)),
                    None => Err(ProbeError::UnknownRegister(f, r)),
                }
            }
            b'$' => {
                self.pos += 1;
                let name = self.take_while(|c| c.is_ascii_alphanumeric() || c == b'_');
                let text = &self.expr[start..self.pos];
                let num = |p: &str| name.strip_prefix(p).map(parse_num);
                match name {
                    "retval" => Err(ProbeError::Retval(self.field.to_string())),
                    "comm" => Ok(fetch(Base::Comm, &[])),
                    "pid" => Ok(fetch(Base::Pid, &[])),
                    "tid" => Ok(fetch(Base::Tid, &[])),
                    "stack" => Ok(fetch(Base::Reg(Reg::Rsp), &[])),
                    _ => match (num("stack"), num("arg")) {
                        (Some(Some(n)), _) if n <= MAX_STACK_ENTRY => {
                            Ok(fetch(Base::Reg(Reg::Rsp), &[8 * n as i64]))
                        }
                        (Some(_), _) => Err(self.err_at(start, "stack entries run from 0 to 2047")),
                        (_, Some(n)) => self.arg(n, text, start),
                        _ => Err(self.err_at(
                            start,
                            "unknown variable (known: $stack $stackN $argN $comm $pid $tid)",
                        )),
                    },
                }
            }
            b'@' => {
                self.pos += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    let a = self.number("expected an address after `@`")?;
                    return Ok(fetch(Base::Imm(a), &[0]));
                }
                let sym = self.take_while(is_sym_char);
                if sym.is_empty() {
                    return Err(self.err("expected a symbol or an address after `@`"));
                }
                if sym.len() > MAX_SYMBOL {
                    return Err(self.err("symbol name too long"));
                }
                let off = match self.peek() {
                    Some(s @ (b'+' | b'-')) => {
                        self.pos += 1;
                        self.signed_offset(s == b'-', "expected an offset after the symbol")?
                    }
                    _ => 0,
                };
                Ok(fetch(Base::Symbol(sym.to_string()), &[off]))
            }
            b'+' | b'-' => {
                if depth >= MAX_DEREF {
                    return Err(ProbeError::TooDeep(self.field.to_string()));
                }
                self.pos += 1;
                // `u` marks a user-space address in kprobes; the guest's
                // current page tables map both halves, so it reads the same.
                if self.peek() == Some(b'u') {
                    self.pos += 1;
                }
                let off =
                    self.signed_offset(c == b'-', "expected an offset (decimal or 0x hex)")?;
                if self.peek() != Some(b'(') {
                    return Err(self.err("expected `(` after the offset"));
                }
                self.pos += 1;
                let mut f = self.fetcharg(depth + 1)?;
                if self.peek() != Some(b')') {
                    return Err(self.err("expected `)`"));
                }
                self.pos += 1;
                if f.derefs.len() >= MAX_DEREF {
                    return Err(ProbeError::TooDeep(self.field.to_string()));
                }
                f.derefs.push(off);
                Ok(f)
            }
            b'\\' => {
                self.pos += 1;
                let v = self.number("expected a number after `\\`")?;
                Ok(fetch(Base::Imm(v), &[]))
            }
            _ => {
                let word = self.take_while(|c| c.is_ascii_alphanumeric() || c == b'_');
                match word.strip_prefix("arg") {
                    Some(n) if !n.is_empty() => self.arg(parse_num(n), word, start),
                    _ => Err(self.err_at(
                        start,
                        "expected %REG, argN, $stack, $stackN, $comm, $pid, $tid, @SYM, +OFFS(...) or \\IMM",
                    )),
                }
            }
        }
    }
}

fn parse_field(token: &str, index: usize, offset: u64) -> Result<FieldSpec> {
    let (name, body) = match token.split_once('=') {
        Some((n, e)) => (n.to_string(), e),
        None => (format!("arg{}", index + 1), token),
    };
    check_field_name(&name)?;
    let (expr, ty) = match body.rsplit_once(':') {
        Some((e, t)) => (e, Some(t)),
        None => (body, None),
    };
    let mut cur = Cursor {
        field: &name,
        expr,
        pos: 0,
        offset,
    };
    let fetch = cur.fetcharg(0)?;
    if cur.pos != expr.len() {
        return Err(cur.err("unexpected text after the expression"));
    }
    let kind = match ty {
        Some(t) => FieldKind::parse(t)
            .ok_or_else(|| ProbeError::UnknownType(name.clone(), t.to_string()))?,
        None => match fetch.base {
            Base::Comm => FieldKind::String,
            Base::Pid | Base::Tid => FieldKind::Signed(32),
            _ => FieldKind::Unsigned(64),
        },
    };
    let why = match (&fetch.base, kind) {
        (Base::Comm, k) if k != FieldKind::String => {
            "`$comm` is a string and takes no integer type"
        }
        (Base::Pid | Base::Tid, FieldKind::String) => "`$pid` and `$tid` are integers, not strings",
        (Base::Comm | Base::Pid | Base::Tid, _) if !fetch.derefs.is_empty() => {
            "`$comm`, `$pid` and `$tid` are values, not addresses to read"
        }
        _ => return Ok(FieldSpec { name, fetch, kind }),
    };
    Err(ProbeError::BadType(name, why))
}

impl ProbeSpec {
    /// Parses `NAME=SYMBOL[+OFFSET] [FIELD=EXPR ...]` (whitespace-separated).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut tokens = spec.split_whitespace();
        let head = tokens.next().ok_or(ProbeError::Empty)?;
        let (name, target) = head
            .split_once('=')
            .ok_or_else(|| ProbeError::MissingSymbol(head.to_string()))?;
        check_event_name(name)?;
        let (symbol, offset) = match target.split_once('+') {
            Some((s, o)) => {
                let bad = || ProbeError::BadOffset(s.to_string(), o.to_string());
                (s, parse_num(o).ok_or_else(bad)?)
            }
            None => (target, 0),
        };
        check_symbol(symbol)?;
        let mut fields: Vec<FieldSpec> = Vec::new();
        for (i, tok) in tokens.enumerate() {
            if i >= MAX_FIELDS {
                return Err(ProbeError::TooManyFields(
                    spec.split_whitespace().count() - 1,
                ));
            }
            let f = parse_field(tok, i, offset)?;
            if fields.iter().any(|g| g.name == f.name) {
                return Err(ProbeError::DuplicateField(f.name));
            }
            fields.push(f);
        }
        Ok(Self {
            name: name.to_string(),
            symbol: symbol.to_string(),
            offset,
            fields,
        })
    }

    /// Resolves symbols to link-time addresses with `lookup` (0 or None:
    /// unknown). Apply the KASLR slide with [`ResolvedProbe::with_slide`].
    /// Re-checks the limits of a spec built by hand.
    pub fn resolve(&self, lookup: impl Fn(&str) -> Option<u64>) -> Result<ResolvedProbe> {
        if self.fields.len() > MAX_FIELDS {
            return Err(ProbeError::TooManyFields(self.fields.len()));
        }
        if let Some(f) = (self.fields.iter()).find(|f| f.fetch.derefs.len() > MAX_DEREF) {
            return Err(ProbeError::TooDeep(f.name.clone()));
        }
        let find = |s: &str| {
            lookup(s)
                .filter(|&a| a != 0)
                .ok_or_else(|| ProbeError::UnknownSymbol(s.to_string()))
        };
        let link = find(&self.symbol)?;
        let syms = (self.fields.iter())
            .map(|f| match &f.fetch.base {
                Base::Symbol(s) => find(s),
                _ => Ok(0),
            })
            .collect::<Result<_>>()?;
        Ok(ResolvedProbe {
            spec: self.clone(),
            syms,
            link_addr: link.wrapping_add(self.offset),
            slide: 0,
        })
    }
}

impl std::str::FromStr for ProbeSpec {
    type Err = ProbeError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Refuses two probes with the same event name.
pub fn check_unique_events(specs: &[ProbeSpec]) -> Result<()> {
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|t| t.name == s.name) {
            return Err(ProbeError::DuplicateEvent(s.name.clone()));
        }
    }
    Ok(())
}

/// A probe ready to arm and evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProbe {
    spec: ProbeSpec,
    /// Link-time address of each field's `@SYM` (0: none).
    syms: Vec<u64>,
    link_addr: u64,
    slide: u64,
}

/// One fetched field. Integers are in `int` (sign-extended to 64 bits for
/// signed kinds); strings in `bytes[..len]`, NUL-padded. `valid` is false
/// when the value could not be read; it is then 0 or "".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldValue {
    pub valid: bool,
    pub int: u64,
    pub len: u8,
    pub bytes: [u8; STR_MAX],
}

impl FieldValue {
    pub const EMPTY: FieldValue = FieldValue {
        valid: false,
        int: 0,
        len: 0,
        bytes: [0; STR_MAX],
    };

    /// The integer as signed.
    pub fn as_i64(&self) -> i64 {
        self.int as i64
    }

    /// The string's bytes (no NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The string up to its first invalid UTF-8 byte.
    pub fn as_str(&self) -> &str {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&self.as_bytes()[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// Truncates `raw` to `bits` and sign-extends it when `signed`.
fn extend(raw: u64, bits: u8, signed: bool) -> u64 {
    if bits >= 64 {
        return raw;
    }
    let shift = 64 - u32::from(bits);
    if signed {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

impl ResolvedProbe {
    /// The same probe with the guest's KASLR slide applied.
    pub fn with_slide(mut self, slide: u64) -> Self {
        self.slide = slide;
        self
    }

    /// Event name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec it was resolved from.
    pub fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// Runtime address to arm (SYMBOL + OFFSET + slide).
    pub fn addr(&self) -> u64 {
        self.link_addr.wrapping_add(self.slide)
    }

    /// Link-time address (SYMBOL + OFFSET).
    pub fn link_addr(&self) -> u64 {
        self.link_addr
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spec.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spec.fields.is_empty()
    }

    /// The event's fields, in order, for the trace writer's declarations.
    pub fn fields(&self) -> impl Iterator<Item = (&str, FieldKind)> + '_ {
        (self.spec.fields.iter()).map(|f| (f.name.as_str(), f.kind))
    }

    /// Evaluates the fields on a trapped vCPU into `out` (a buffer such as
    /// `[FieldValue::EMPTY; MAX_FIELDS]`); returns how many it filled
    /// (`min(len(), out.len())`). Allocates nothing, never panics, and
    /// reads the current task at most once.
    pub fn fetch<C: VcpuContext + ?Sized>(
        &self,
        ctx: &C,
        k: &Kernel,
        out: &mut [FieldValue],
    ) -> usize {
        let mut task: Option<Option<Task>> = None;
        let mut n = 0;
        for ((f, &sym), v) in self.spec.fields.iter().zip(&self.syms).zip(out.iter_mut()) {
            v.valid = false;
            v.int = 0;
            v.len = 0;
            v.bytes.fill(0);
            self.fetch_one(f, sym, ctx, k, &mut task, v);
            n += 1;
        }
        n
    }

    fn fetch_one<C: VcpuContext + ?Sized>(
        &self,
        f: &FieldSpec,
        sym: u64,
        ctx: &C,
        k: &Kernel,
        task: &mut Option<Option<Task>>,
        v: &mut FieldValue,
    ) {
        let mut val = match f.fetch.base {
            Base::Reg(r) => ctx.read_reg(r),
            Base::Imm(x) => x,
            Base::Symbol(_) => sym.wrapping_add(self.slide),
            Base::Comm | Base::Pid | Base::Tid => {
                let t = task.get_or_insert_with(|| {
                    current_task_addr(ctx, k).ok().map(|a| read_task(ctx, k, a))
                });
                let Some(t) = t else { return };
                match f.fetch.base {
                    Base::Comm => {
                        if t.comm == Task::UNKNOWN.comm {
                            return;
                        }
                        let s = t.comm_str().as_bytes();
                        let n = s.len().min(STR_MAX - 1);
                        v.bytes[..n].copy_from_slice(&s[..n]);
                        v.len = n as u8;
                        v.valid = true;
                        return;
                    }
                    Base::Pid if t.pid >= 0 => t.pid as i64 as u64,
                    Base::Tid if t.tid >= 0 => t.tid as i64 as u64,
                    _ => return,
                }
            }
        };
        let offs = f.fetch.derefs.as_slice();
        let (last, inner) = match offs.split_last() {
            Some((l, i)) => (Some(*l), i),
            None => (None, offs),
        };
        for &off in inner {
            match read_u64(ctx, val.wrapping_add(off as u64)) {
                Ok(x) => val = x,
                Err(_) => return,
            }
        }
        match f.kind {
            FieldKind::String => {
                let addr = val.wrapping_add(last.unwrap_or(0) as u64);
                if let Ok(n) = read_cstr(ctx, addr, &mut v.bytes) {
                    v.len = n.min(STR_MAX - 1) as u8;
                    v.valid = true;
                }
            }
            FieldKind::Unsigned(bits) | FieldKind::Signed(bits) | FieldKind::Hex(bits) => {
                let raw = match last {
                    None => val,
                    Some(off) => {
                        let mut b = [0u8; 8];
                        let size = usize::from(bits / 8).clamp(1, 8);
                        if ctx
                            .read_virt(val.wrapping_add(off as u64), &mut b[..size])
                            .is_err()
                        {
                            return;
                        }
                        u64::from_le_bytes(b)
                    }
                };
                v.int = extend(raw, bits, matches!(f.kind, FieldKind::Signed(_)));
                v.valid = true;
            }
        }
    }
}
