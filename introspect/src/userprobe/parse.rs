//! Parsing `--probe` specs and their fetch-argument expressions, and
//! resolving their symbols.

use super::{
    Base, Fetch, FieldKind, FieldSpec, ProbeError, ProbeSpec, ResolvedProbe, Result, MAX_ARG,
    MAX_DEREF, MAX_FIELDS, MAX_NAME, MAX_STACK_ENTRY, MAX_SYMBOL,
};
use crate::ctx::Reg;

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
}

fn fetch(base: Base, derefs: &[i64]) -> Fetch {
    let derefs = derefs.to_vec();
    Fetch { base, derefs }
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
        "r12" => Reg::R12,
        "r13" => Reg::R13,
        "r14" => Reg::R14,
        "r15" => Reg::R15,
        "ip" | "rip" => Reg::Rip,
        "flags" | "cs" | "ss" | "ds" | "es" | "fs" | "gs" | "orig_ax" => return Some(None),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_decimal_or_0x_hex() {
        assert_eq!(parse_num("0"), Some(0));
        assert_eq!(parse_num("4096"), Some(4096));
        assert_eq!(parse_num("0x1f"), Some(31));
        assert_eq!(parse_num("0XFF"), Some(255));
        assert_eq!(parse_num("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "0x", "1f", "-1", "+1", "0b1", "18446744073709551616"] {
            assert_eq!(parse_num(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn registers_by_short_and_long_name() {
        assert_eq!(reg_by_name("di"), Some(Some(Reg::Rdi)));
        assert_eq!(reg_by_name("rdi"), Some(Some(Reg::Rdi)));
        assert_eq!(reg_by_name("r11"), Some(Some(Reg::R11)));
        assert_eq!(reg_by_name("ip"), Some(Some(Reg::Rip)));
        // Known to x86-64 but not exposed by the engines.
        assert_eq!(reg_by_name("r15"), Some(Some(Reg::R15)));
        assert_eq!(reg_by_name("flags"), Some(None));
        assert_eq!(reg_by_name("eax"), None);
        assert_eq!(reg_by_name(""), None);
    }

    #[test]
    fn field_kinds() {
        assert_eq!(FieldKind::parse("u8"), Some(FieldKind::Unsigned(8)));
        assert_eq!(FieldKind::parse("s32"), Some(FieldKind::Signed(32)));
        assert_eq!(FieldKind::parse("x64"), Some(FieldKind::Hex(64)));
        assert_eq!(FieldKind::parse("string"), Some(FieldKind::String));
        for bad in ["", "u", "u7", "u128", "i32", "xstring", "String"] {
            assert_eq!(FieldKind::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn expressions_and_error_columns() {
        let field = |expr: &str, offset: u64| {
            let mut c = Cursor {
                field: "f",
                expr,
                pos: 0,
                offset,
            };
            c.fetcharg(0).map(|f| (f, c.pos))
        };
        assert_eq!(
            field("+8(+0(%si))", 0),
            Ok((fetch(Base::Reg(Reg::Rsi), &[0, 8]), 11))
        );
        // arg7 is the first stack word above the return address.
        assert_eq!(field("arg7", 0), Ok((fetch(Base::Reg(Reg::Rsp), &[8]), 4)));
        assert_eq!(
            field("$stack3", 0),
            Ok((fetch(Base::Reg(Reg::Rsp), &[24]), 7))
        );
        assert_eq!(
            field("@jiffies-8", 0),
            Ok((fetch(Base::Symbol("jiffies".into()), &[-8]), 10))
        );
        assert!(matches!(
            field("arg1", 4),
            Err(ProbeError::ArgNotAtEntry(_, _, 4))
        ));
        match field("+8(%si", 0) {
            Err(ProbeError::BadExpr { col, why, .. }) => {
                assert_eq!((col, why), (7, "expected `)`"));
            }
            other => panic!("{other:?}"),
        }
    }
}
