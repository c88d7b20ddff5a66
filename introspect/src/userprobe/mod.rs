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
//!
//! `parse.rs` turns a spec into a [`ProbeSpec`] and resolves it into a
//! [`ResolvedProbe`]; `eval.rs` evaluates a resolved probe's fields against a
//! trapped vCPU.

mod eval;
mod parse;

pub use parse::check_unique_events;

use crate::ctx::Reg;

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
    #[error("field `{0}`: unknown register `%{1}` (x86-64 names: %ax %bx %cx %dx %si %di %bp %sp %r8..%r15 %ip, or %rax...)")]
    UnknownRegister(String, String),
    #[error("field `{0}`: register `%{1}` is not available to hvtrace's engines (they expose %ax %bx %cx %dx %si %di %bp %sp %r8..%r15 %ip)")]
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
}
