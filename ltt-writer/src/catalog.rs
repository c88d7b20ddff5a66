//! The event catalog: which events a trace may hold and the CTF type of
//! every field. It is data, built once before tracing starts, and it drives
//! both the TSDL metadata and the binary encoding.
//!
//! The kernel events follow lttng-modules 2.13 (names, field names, field
//! order, integer sizes and signedness), so Trace Compass and lttng-analyses
//! read the trace as an LTTng kernel trace.

use std::collections::HashMap;

/// Errors while building a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("event `{0}` is declared twice")]
    Duplicate(String),
    #[error("invalid name `{0}`: use [A-Za-z_][A-Za-z0-9_]*")]
    BadName(String),
    #[error("event `{event}`: unsupported integer size {bits} (use 8, 16, 32 or 64)")]
    BadIntSize { event: String, bits: u8 },
    #[error("syscall {nr} (`{name}`) is declared twice")]
    DuplicateSyscall { nr: u32, name: String },
    #[error("syscall number {nr} out of range (max {max})")]
    BadSyscallNr { nr: u32, max: u32 },
    #[error("too many events (max {max})")]
    TooMany { max: usize },
}

/// Display base of an integer field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Dec,
    Hex,
    Oct,
}

/// CTF type of one event field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Integer of 8/16/32/64 bits, byte-aligned, little-endian.
    Int { bits: u8, signed: bool, base: Base },
    /// Fixed-length text array (`char name[len]`, e.g. `comm[16]`), NUL-padded.
    Text { len: u16 },
    /// NUL-terminated UTF-8 string.
    Str,
    /// Fixed-length array of integers.
    IntArray {
        bits: u8,
        signed: bool,
        base: Base,
        len: u16,
    },
    /// Variable-length array of integers, preceded by a `uint8_t` length
    /// field named `_<name>_length` (lttng-modules' `ctf_sequence`).
    IntSeq { bits: u8, signed: bool, base: Base },
    /// Unsigned integer in network byte order (big-endian), shown in
    /// hexadecimal: lttng-modules' `ctf_integer_network_hex` (an IPv4
    /// address as the kernel stores it).
    NetHex { bits: u8 },
}

impl FieldType {
    pub const fn int(bits: u8, signed: bool) -> Self {
        FieldType::Int {
            bits,
            signed,
            base: Base::Dec,
        }
    }
    pub const fn hex(bits: u8) -> Self {
        FieldType::Int {
            bits,
            signed: false,
            base: Base::Hex,
        }
    }
    pub const fn net_hex(bits: u8) -> Self {
        FieldType::NetHex { bits }
    }
    /// `int` / `pid_t`.
    pub const I32: FieldType = FieldType::int(32, true);
    /// `unsigned int`.
    pub const U32: FieldType = FieldType::int(32, false);
    /// `long`.
    pub const I64: FieldType = FieldType::int(64, true);
    /// `unsigned long`.
    pub const U64: FieldType = FieldType::int(64, false);
    /// `char comm[16]`.
    pub const COMM: FieldType = FieldType::Text { len: 16 };
}

/// One field of an event payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDecl {
    pub name: String,
    pub ty: FieldType,
}

impl FieldDecl {
    pub fn new(name: &str, ty: FieldType) -> Self {
        FieldDecl {
            name: name.to_string(),
            ty,
        }
    }
}

/// One event class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDecl {
    pub id: u32,
    pub name: String,
    pub fields: Vec<FieldDecl>,
}

/// How a syscall argument is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// Signed integer of the given size (`int fd`: 32, `long`: 64).
    Signed(u8),
    /// Unsigned integer of the given size (`size_t`: 64, `unsigned int`: 32).
    Unsigned(u8),
    /// Pointer or flags shown in hexadecimal (64 bits).
    Pointer,
    /// NUL-terminated string read from guest memory (`const char *filename`).
    String,
    /// `len` 32-bit signed integers the syscall wrote to user memory
    /// (`pipe2`'s `fildes`: lttng-modules records the two descriptors).
    UserInts(u8),
}

impl ArgKind {
    fn field_type(self) -> FieldType {
        match self {
            ArgKind::Signed(b) => FieldType::int(b, true),
            ArgKind::Unsigned(b) => FieldType::int(b, false),
            ArgKind::Pointer => FieldType::hex(64),
            ArgKind::String => FieldType::Str,
            ArgKind::UserInts(len) => FieldType::IntArray {
                bits: 32,
                signed: true,
                base: Base::Dec,
                len: u16::from(len),
            },
        }
    }
}

/// Whether an argument is shown at entry, at exit (an output buffer), or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgDir {
    In,
    Out,
    InOut,
}

/// One syscall argument, as the guest kernel's syscall metadata names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallArg {
    pub name: String,
    pub kind: ArgKind,
    pub dir: ArgDir,
}

/// One syscall of the guest's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallDecl {
    pub nr: u32,
    /// Name without prefix (`read`, `openat`).
    pub name: String,
    pub args: Vec<SyscallArg>,
}

/// Event ids and argument layout of one declared syscall.
#[derive(Clone, Debug)]
pub struct SyscallIds {
    pub entry: u32,
    pub exit: u32,
    /// Indices (into `SyscallDecl::args`) shown at entry, in order.
    pub entry_args: Vec<usize>,
    /// Indices shown at exit after `ret`, in order.
    pub exit_args: Vec<usize>,
    /// Bit i set when argument i is a string.
    pub string_mask: u8,
}

/// The ids of the built-in kernel events, when declared.
#[derive(Clone, Debug, Default)]
pub struct KernelIds {
    pub sched_switch: Option<u32>,
    pub sched_wakeup: Option<u32>,
    pub sched_waking: Option<u32>,
    pub sched_wakeup_new: Option<u32>,
    pub sched_process_fork: Option<u32>,
    pub sched_process_exec: Option<u32>,
    pub sched_process_exit: Option<u32>,
    pub sched_process_free: Option<u32>,
    pub irq_handler_entry: Option<u32>,
    pub irq_handler_exit: Option<u32>,
    pub irq_softirq_entry: Option<u32>,
    pub irq_softirq_exit: Option<u32>,
    pub irq_softirq_raise: Option<u32>,
    pub lttng_statedump_start: Option<u32>,
    pub lttng_statedump_end: Option<u32>,
    pub lttng_statedump_process_state: Option<u32>,
    pub syscall_entry_unknown: Option<u32>,
    pub syscall_exit_unknown: Option<u32>,
    /// Declared with the compat syscalls ([`Catalog::add_compat_syscalls`]).
    pub compat_syscall_entry_unknown: Option<u32>,
    pub compat_syscall_exit_unknown: Option<u32>,
}

/// Syscall numbers accepted (x86-64 tables stay far below).
pub const MAX_SYSCALL_NR: u32 = 4096;

/// Upper bound of event classes (ids are `u32`, but keep metadata sane).
pub const MAX_EVENTS: usize = 1 << 20;

/// The set of event classes of a trace.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    events: Vec<EventDecl>,
    by_name: HashMap<String, u32>,
    /// Indexed by syscall number.
    syscalls: Vec<Option<(SyscallIds, SyscallDecl)>>,
    /// The 32-bit (compat) table, indexed by its own numbers.
    compat: Vec<Option<(SyscallIds, SyscallDecl)>>,
    kernel: KernelIds,
}

fn valid_name(s: &str) -> bool {
    let mut it = s.chars();
    matches!(it.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && it.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// A catalog holding every lttng-modules kernel event hvtrace produces,
    /// plus `syscall_entry_<name>`/`syscall_exit_<name>` for each syscall of
    /// `syscalls` (the table recovered from the guest kernel).
    pub fn kernel(syscalls: &[SyscallDecl]) -> Result<Self, CatalogError> {
        let mut c = Catalog::new();
        c.add_kernel_events()?;
        c.add_syscalls(syscalls)?;
        // last: rare events need no small id
        c.add_statedump_events()?;
        Ok(c)
    }

    /// Declare a user-defined event; returns its id.
    pub fn add_event(&mut self, name: &str, fields: Vec<FieldDecl>) -> Result<u32, CatalogError> {
        if !valid_name(name) {
            return Err(CatalogError::BadName(name.to_string()));
        }
        if self.by_name.contains_key(name) {
            return Err(CatalogError::Duplicate(name.to_string()));
        }
        if self.events.len() >= MAX_EVENTS {
            return Err(CatalogError::TooMany { max: MAX_EVENTS });
        }
        for f in &fields {
            if !valid_name(&f.name) {
                return Err(CatalogError::BadName(f.name.clone()));
            }
            let bits = match f.ty {
                FieldType::Int { bits, .. }
                | FieldType::IntArray { bits, .. }
                | FieldType::IntSeq { bits, .. }
                | FieldType::NetHex { bits } => bits,
                _ => 8,
            };
            if !matches!(bits, 8 | 16 | 32 | 64) {
                return Err(CatalogError::BadIntSize {
                    event: name.to_string(),
                    bits,
                });
            }
        }
        let id = self.events.len() as u32;
        self.events.push(EventDecl {
            id,
            name: name.to_string(),
            fields,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Declare the lttng-modules scheduler, irq, softirq and statedump events.
    pub fn add_kernel_events(&mut self) -> Result<(), CatalogError> {
        use FieldType as T;
        let f = FieldDecl::new;
        // Order matters for size only: the most frequent events get the
        // smallest ids so they fit the compact event header (ids 0..=30).
        let k = &mut KernelIds::default();
        k.sched_switch = Some(self.add_event(
            "sched_switch",
            vec![
                f("prev_comm", T::COMM),
                f("prev_tid", T::I32),
                f("prev_prio", T::I32),
                f("prev_state", T::I64),
                f("next_comm", T::COMM),
                f("next_tid", T::I32),
                f("next_prio", T::I32),
            ],
        )?);
        let wake = || {
            vec![
                f("comm", T::COMM),
                f("tid", T::I32),
                f("prio", T::I32),
                f("target_cpu", T::I32),
            ]
        };
        k.sched_waking = Some(self.add_event("sched_waking", wake())?);
        k.sched_wakeup = Some(self.add_event("sched_wakeup", wake())?);
        k.sched_wakeup_new = Some(self.add_event("sched_wakeup_new", wake())?);
        k.irq_handler_entry = Some(self.add_event(
            "irq_handler_entry",
            vec![f("irq", T::I32), f("name", T::Str)],
        )?);
        k.irq_handler_exit =
            Some(self.add_event("irq_handler_exit", vec![f("irq", T::I32), f("ret", T::I32)])?);
        let vec = || vec![f("vec", T::U32)];
        k.irq_softirq_entry = Some(self.add_event("irq_softirq_entry", vec())?);
        k.irq_softirq_exit = Some(self.add_event("irq_softirq_exit", vec())?);
        k.irq_softirq_raise = Some(self.add_event("irq_softirq_raise", vec())?);
        k.sched_process_fork = Some(self.add_event(
            "sched_process_fork",
            vec![
                f("parent_comm", T::COMM),
                f("parent_tid", T::I32),
                f("parent_pid", T::I32),
                f("parent_ns_inum", T::U32),
                f("child_comm", T::COMM),
                f("child_tid", T::I32),
                f(
                    "vtids",
                    T::IntSeq {
                        bits: 32,
                        signed: true,
                        base: Base::Dec,
                    },
                ),
                f("child_pid", T::I32),
                f("child_ns_inum", T::U32),
            ],
        )?);
        k.sched_process_exec = Some(self.add_event(
            "sched_process_exec",
            vec![
                f("filename", T::Str),
                f("tid", T::I32),
                f("old_tid", T::I32),
            ],
        )?);
        let proc = || vec![f("comm", T::COMM), f("tid", T::I32), f("prio", T::I32)];
        k.sched_process_exit = Some(self.add_event("sched_process_exit", proc())?);
        k.sched_process_free = Some(self.add_event("sched_process_free", proc())?);
        k.lttng_statedump_start = Some(self.add_event("lttng_statedump_start", vec![])?);
        k.lttng_statedump_end = Some(self.add_event("lttng_statedump_end", vec![])?);
        k.lttng_statedump_process_state = Some(self.add_event(
            "lttng_statedump_process_state",
            vec![
                f("tid", T::I32),
                f("pid", T::I32),
                f("ppid", T::I32),
                f("name", T::COMM),
                f("type", T::I32),
                f("mode", T::I32),
                f("submode", T::I32),
                f("status", T::I32),
                f("cpu", T::U32),
                f("file_table_address", T::hex(64)),
            ],
        )?);
        let (entry, exit) = self.add_unknown("")?;
        k.syscall_entry_unknown = Some(entry);
        k.syscall_exit_unknown = Some(exit);
        self.kernel = k.clone();
        Ok(())
    }

    /// `<prefix>syscall_entry_unknown` (id, args[6]) and
    /// `<prefix>syscall_exit_unknown` (id, ret, args[6]).
    fn add_unknown(&mut self, prefix: &str) -> Result<(u32, u32), CatalogError> {
        let args6 = FieldType::IntArray {
            bits: 64,
            signed: false,
            base: Base::Dec,
            len: 6,
        };
        let f = FieldDecl::new;
        let entry = self.add_event(
            &format!("{prefix}syscall_entry_unknown"),
            vec![f("id", FieldType::I32), f("args", args6.clone())],
        )?;
        let exit = self.add_event(
            &format!("{prefix}syscall_exit_unknown"),
            vec![
                f("id", FieldType::I32),
                f("ret", FieldType::I64),
                f("args", args6),
            ],
        )?;
        Ok((entry, exit))
    }

    /// Declare the 32-bit (compat) syscalls as lttng-modules names them:
    /// `compat_syscall_entry_<name>` / `compat_syscall_exit_<name>` (same
    /// fields as the native events), and `compat_syscall_{entry,exit}_unknown`.
    pub fn add_compat_syscalls(&mut self, syscalls: &[SyscallDecl]) -> Result<(), CatalogError> {
        let (entry, exit) = self.add_unknown("compat_")?;
        self.kernel.compat_syscall_entry_unknown = Some(entry);
        self.kernel.compat_syscall_exit_unknown = Some(exit);
        self.add_table(syscalls, true)
    }

    /// Declare `syscall_entry_<name>` (input arguments) and
    /// `syscall_exit_<name>` (`ret` as int64, then output arguments) for
    /// each syscall, like lttng-modules' syscall tracer.
    pub fn add_syscalls(&mut self, syscalls: &[SyscallDecl]) -> Result<(), CatalogError> {
        self.add_table(syscalls, false)
    }

    fn add_table(&mut self, syscalls: &[SyscallDecl], compat: bool) -> Result<(), CatalogError> {
        let prefix = if compat { "compat_" } else { "" };
        for sc in syscalls {
            if sc.nr >= MAX_SYSCALL_NR {
                return Err(CatalogError::BadSyscallNr {
                    nr: sc.nr,
                    max: MAX_SYSCALL_NR,
                });
            }
            let taken = if compat {
                self.compat_syscall(sc.nr)
            } else {
                self.syscall(sc.nr)
            };
            if taken.is_some() {
                return Err(CatalogError::DuplicateSyscall {
                    nr: sc.nr,
                    name: sc.name.clone(),
                });
            }
            let entry_args: Vec<usize> = (0..sc.args.len())
                .filter(|&i| sc.args[i].dir != ArgDir::Out)
                .collect();
            let exit_args: Vec<usize> = (0..sc.args.len())
                .filter(|&i| sc.args[i].dir != ArgDir::In)
                .collect();
            let mk = |idx: &[usize]| -> Vec<FieldDecl> {
                idx.iter()
                    .map(|&i| FieldDecl::new(&sc.args[i].name, sc.args[i].kind.field_type()))
                    .collect()
            };
            let entry = self.add_event(
                &format!("{prefix}syscall_entry_{}", sc.name),
                mk(&entry_args),
            )?;
            let mut exit_fields = vec![FieldDecl::new("ret", FieldType::I64)];
            exit_fields.extend(mk(&exit_args));
            let exit = self.add_event(&format!("{prefix}syscall_exit_{}", sc.name), exit_fields)?;
            let string_mask = (0..sc.args.len().min(8))
                .filter(|&i| sc.args[i].kind == ArgKind::String)
                .fold(0u8, |m, i| m | 1 << i);
            let ids = SyscallIds {
                entry,
                exit,
                entry_args,
                exit_args,
                string_mask,
            };
            let nr = sc.nr as usize;
            let table = if compat {
                &mut self.compat
            } else {
                &mut self.syscalls
            };
            if table.len() <= nr {
                table.resize(nr + 1, None);
            }
            table[nr] = Some((ids, sc.clone()));
        }
        Ok(())
    }

    pub fn events(&self) -> &[EventDecl] {
        &self.events
    }
    pub fn event(&self, id: u32) -> Option<&EventDecl> {
        self.events.get(id as usize)
    }
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }
    pub fn kernel_ids(&self) -> &KernelIds {
        &self.kernel
    }
    #[inline]
    pub fn syscall(&self, nr: u32) -> Option<&SyscallIds> {
        self.syscalls
            .get(nr as usize)
            .and_then(|s| s.as_ref())
            .map(|s| &s.0)
    }
    /// A compat (32-bit) syscall's ids, by its i386 number.
    #[inline]
    pub fn compat_syscall(&self, nr: u32) -> Option<&SyscallIds> {
        self.compat
            .get(nr as usize)
            .and_then(|s| s.as_ref())
            .map(|s| &s.0)
    }
    pub fn syscall_decl(&self, nr: u32) -> Option<&SyscallDecl> {
        self.syscalls
            .get(nr as usize)
            .and_then(|s| s.as_ref())
            .map(|s| &s.1)
    }
}

#[cfg(test)]
mod tests;
