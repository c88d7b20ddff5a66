//! Struct layouts from the kernel's own `.BTF`: sizes and member offsets,
//! through nested and anonymous members and bitfields.

use std::collections::{BTreeMap, HashMap};

/// The layouts `introspect` uses (see DESIGN.md, "Symbols and types").
pub const INTROSPECTION_LAYOUT: &[(&str, &[&str])] = &[
    (
        "task_struct",
        &[
            "pid",
            "tgid",
            "comm",
            "__state|state",
            "prio",
            "static_prio",
            "normal_prio",
            "policy",
            "flags",
            "mm",
            "active_mm",
            "tasks",
            "real_parent",
            "parent",
            "children",
            "sibling",
            "group_leader",
            "thread_pid",
            "on_cpu",
            "thread_info.cpu|cpu",
            "nvcsw",
            "nivcsw",
            "se.sum_exec_runtime",
            "stack",
            "thread.sp",
            "thread.fsbase",
            "exit_state",
            "exit_code",
            "signal",
            "files",
        ],
    ),
    (
        "mm_struct",
        &[
            "pgd",
            "arg_start",
            "arg_end",
            "env_start",
            "env_end",
            "exe_file",
        ],
    ),
    (
        "pcpu_hot",
        &[
            "current_task",
            "preempt_count",
            "cpu_number",
            "top_of_stack",
        ],
    ),
    ("pt_regs", &["*"]),
    ("list_head", &["next", "prev"]),
    ("thread_info", &["flags", "cpu"]),
    ("pid", &["numbers"]),
    ("upid", &["nr", "ns"]),
    ("signal_struct", &["nr_threads", "pids"]),
    ("file", &["f_path"]),
    ("path", &["dentry", "mnt"]),
    ("dentry", &["d_name", "d_parent"]),
    ("qstr", &["name", "len|hash_len"]),
    (
        "syscall_metadata",
        &["name", "syscall_nr", "nb_args", "types", "args"],
    ),
];

/// Size and members of one struct, for serialization.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StructLayout {
    pub size: u64,
    pub members: BTreeMap<String, Member>,
}

const MAGIC: u16 = 0xeb9f;
const MAX_DEPTH: usize = 32;
/// Members a lookup may visit: a search descends into every anonymous
/// member, so hostile BTF (a struct whose anonymous members are itself)
/// would otherwise cost vlen^MAX_DEPTH. Real lookups visit a few hundred.
const MAX_VISITS: usize = 1 << 16;

/// Errors of BTF parsing.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("not BTF (bad magic or header)")]
    BadHeader,
    #[error("BTF type/string section lies outside the blob")]
    OutOfBounds,
    #[error("BTF type {0} has unknown kind {1}")]
    UnknownKind(u32, u32),
    #[error("BTF type {0} is truncated")]
    Truncated(u32),
}

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

#[derive(Debug, Clone, Copy)]
struct Ty {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Offset of the kind-specific data in the type section.
    extra: u32,
}

/// A struct/union member, resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Byte offset from the start of the outer struct (bitfields: the byte
    /// holding their first bit).
    pub offset: u64,
    pub bit_offset: u64,
    /// Bitfield width, if a bitfield.
    pub bit_size: Option<u32>,
    /// Size in bytes of the member's type.
    pub size: u64,
    /// C-like type name, e.g. `struct mm_struct *`, `char[16]`.
    pub type_name: String,
}

/// The kernel's types.
#[derive(Debug, Clone, Default)]
pub struct KernelTypes {
    raw: Vec<u8>,
    types_at: usize,
    strs_at: usize,
    strs_len: usize,
    types: Vec<Ty>,
    composites: HashMap<String, u32>,
}

fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

impl KernelTypes {
    /// Parses a raw `.BTF` blob (little-endian, as on x86-64).
    pub fn parse(raw: Vec<u8>) -> Result<KernelTypes, BtfError> {
        if raw.get(0..2) != Some(&MAGIC.to_le_bytes()) || raw.get(2) != Some(&1) {
            return Err(BtfError::BadHeader);
        }
        let h = |i: usize| {
            u32_at(&raw, 4 + 4 * i)
                .map(|v| v as usize)
                .ok_or(BtfError::BadHeader)
        };
        let (hdr_len, type_off, type_len, str_off, str_len) = (h(0)?, h(1)?, h(2)?, h(3)?, h(4)?);
        let types_at = hdr_len.checked_add(type_off).ok_or(BtfError::OutOfBounds)?;
        let strs_at = hdr_len.checked_add(str_off).ok_or(BtfError::OutOfBounds)?;
        let types_end = types_at
            .checked_add(type_len)
            .ok_or(BtfError::OutOfBounds)?;
        if hdr_len < 24 || types_end > raw.len() || strs_at.saturating_add(str_len) > raw.len() {
            return Err(BtfError::OutOfBounds);
        }
        let mut types = vec![Ty {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut p = types_at;
        while p < types_end {
            let id = types.len() as u32;
            let rd = |o: usize| u32_at(&raw[..types_end], o).ok_or(BtfError::Truncated(id));
            let (name_off, info, size_or_type) = (rd(p)?, rd(p + 4)?, rd(p + 8)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra_len = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen as usize,
                ENUM | FUNC_PROTO => 8 * vlen as usize,
                PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
                k => return Err(BtfError::UnknownKind(id, k)),
            };
            let extra = p + 12;
            if extra + extra_len > types_end {
                return Err(BtfError::Truncated(id));
            }
            types.push(Ty {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 != 0,
                size_or_type,
                extra: (extra - types_at) as u32,
            });
            p = extra + extra_len;
        }
        let mut t = KernelTypes {
            raw,
            types_at,
            strs_at,
            strs_len: str_len,
            types,
            composites: HashMap::new(),
        };
        let mut composites = HashMap::new();
        for (id, ty) in t.types.iter().enumerate() {
            if matches!(ty.kind, STRUCT | UNION) {
                let name = t.str_at(ty.name_off);
                if !name.is_empty() {
                    composites.entry(name.to_string()).or_insert(id as u32);
                }
            }
        }
        t.composites = composites;
        Ok(t)
    }

    /// The raw `.BTF` blob (e.g. for the cache).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Number of types (ids 1..=len).
    pub fn len(&self) -> usize {
        self.types.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn str_at(&self, off: u32) -> &str {
        let off = off as usize;
        if off >= self.strs_len {
            return "";
        }
        let s = &self.raw[self.strs_at + off..self.strs_at + self.strs_len];
        let n = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..n]).unwrap_or("")
    }

    fn extra_u32(&self, ty: &Ty, i: usize) -> u32 {
        u32_at(&self.raw, self.types_at + ty.extra as usize + 4 * i).unwrap_or(0)
    }

    fn ty(&self, id: u32) -> Option<&Ty> {
        self.types.get(id as usize).filter(|_| id != 0)
    }

    /// Follows typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> Option<(u32, &Ty)> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return Some((id, t)),
            }
        }
        None
    }

    fn size_of_id(&self, id: u32, depth: usize) -> Option<u64> {
        if depth > MAX_DEPTH {
            return None;
        }
        let (_, t) = self.strip(id)?;
        match t.kind {
            INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT | DATASEC => {
                Some(u64::from(t.size_or_type))
            }
            PTR => Some(8),
            ARRAY => {
                let elem = self.extra_u32(t, 0);
                let n = u64::from(self.extra_u32(t, 2));
                self.size_of_id(elem, depth + 1)?.checked_mul(n)
            }
            _ => None,
        }
    }

    fn type_name(&self, id: u32, depth: usize) -> String {
        let Some(t) = self.ty(id).filter(|_| depth < MAX_DEPTH) else {
            return "void".into();
        };
        let name = self.str_at(t.name_off);
        let inner = || self.type_name(t.size_or_type, depth + 1);
        match t.kind {
            STRUCT => format!("struct {}", if name.is_empty() { "<anon>" } else { name }),
            UNION => format!("union {}", if name.is_empty() { "<anon>" } else { name }),
            ENUM | ENUM64 => format!("enum {name}"),
            FWD => format!("{} {name}", if t.kind_flag { "union" } else { "struct" }),
            PTR => format!("{} *", inner()),
            CONST => format!("const {}", inner()),
            VOLATILE => format!("volatile {}", inner()),
            RESTRICT | TYPE_TAG => inner(),
            ARRAY => format!(
                "{}[{}]",
                self.type_name(self.extra_u32(t, 0), depth + 1),
                self.extra_u32(t, 2)
            ),
            FUNC_PROTO => "func".into(),
            _ => name.to_string(),
        }
    }

    /// Type id of a named struct or union.
    pub fn composite_id(&self, name: &str) -> Option<u32> {
        self.composites.get(name).copied()
    }

    /// `sizeof(struct name)` (or union).
    pub fn struct_size(&self, name: &str) -> Option<u64> {
        self.ty(self.composite_id(name)?)
            .map(|t| u64::from(t.size_or_type))
    }

    /// Finds `name` among the members of composite `id`, descending into
    /// anonymous structs/unions. Returns (bit offset, member type, bitfield).
    fn find_member(
        &self,
        id: u32,
        name: &str,
        depth: usize,
        visits: &mut usize,
    ) -> Option<(u64, u32, Option<u32>)> {
        let (_, t) = self.strip(id)?;
        if !matches!(t.kind, STRUCT | UNION) || depth > MAX_DEPTH {
            return None;
        }
        for i in 0..t.vlen as usize {
            *visits += 1;
            if *visits > MAX_VISITS {
                return None;
            }
            let (m_name, m_type, m_off) = (
                self.extra_u32(t, 3 * i),
                self.extra_u32(t, 3 * i + 1),
                self.extra_u32(t, 3 * i + 2),
            );
            let (bit_off, bits) = if t.kind_flag {
                (
                    u64::from(m_off & 0xff_ffff),
                    Some(m_off >> 24).filter(|&b| b != 0),
                )
            } else {
                (u64::from(m_off), None)
            };
            let n = self.str_at(m_name);
            if n == name {
                return Some((bit_off, m_type, bits));
            }
            if n.is_empty() {
                if let Some((o, ty, b)) = self.find_member(m_type, name, depth + 1, visits) {
                    return Some((bit_off + o, ty, b));
                }
            }
        }
        None
    }

    /// A member by dotted path (`"comm"`, `"se.vruntime"`, `"thread.sp"`).
    pub fn member(&self, struct_name: &str, path: &str) -> Option<Member> {
        let mut id = self.composite_id(struct_name)?;
        let mut bits = 0u64;
        let mut last = None;
        let mut visits = 0;
        for part in path.split('.') {
            let (o, ty, b) = self.find_member(id, part, 0, &mut visits)?;
            bits += o;
            id = ty;
            last = Some(b);
        }
        let bit_size = last?;
        Some(Member {
            offset: bits / 8,
            bit_offset: bits,
            bit_size,
            size: self.size_of_id(id, 0).unwrap_or(0),
            type_name: self.type_name(id, 0),
        })
    }

    /// Byte offset of a member by dotted path.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Option<u64> {
        self.member(struct_name, path).map(|m| m.offset)
    }

    /// The first of several alternative member names the kernel has, e.g.
    /// `["__state", "state"]` for task_struct's state (renamed in 5.14).
    pub fn member_any<'n>(
        &self,
        struct_name: &str,
        names: &[&'n str],
    ) -> Option<(&'n str, Member)> {
        names
            .iter()
            .find_map(|n| self.member(struct_name, n).map(|m| (*n, m)))
    }

    /// Direct members of a struct/union in declaration order (anonymous
    /// members are listed as they are, with an empty name).
    pub fn members(&self, struct_name: &str) -> Vec<(String, Member)> {
        let Some((_, t)) = self.composite_id(struct_name).and_then(|id| self.strip(id)) else {
            return Vec::new();
        };
        (0..t.vlen as usize)
            .filter_map(|i| {
                let name = self.str_at(self.extra_u32(t, 3 * i)).to_string();
                let m = self
                    .member(struct_name, &name)
                    .filter(|_| !name.is_empty())?;
                Some((name, m))
            })
            .collect()
    }

    /// Resolves a list of `(struct, members)` requests; a member written
    /// `a|b` takes the first alternative the kernel has (`__state|state`);
    /// `*` lists every named direct member. Missing ones are left out.
    pub fn layouts(&self, spec: &[(&str, &[&str])]) -> BTreeMap<String, StructLayout> {
        let mut out = BTreeMap::new();
        for &(s, members) in spec {
            let Some(size) = self.struct_size(s) else {
                continue;
            };
            let mut found = BTreeMap::new();
            for m in members {
                if *m == "*" {
                    found.extend(self.members(s));
                    continue;
                }
                let alts: Vec<&str> = m.split('|').collect();
                if let Some((name, mem)) = self.member_any(s, &alts) {
                    found.insert(name.to_string(), mem);
                }
            }
            out.insert(
                s.to_string(),
                StructLayout {
                    size,
                    members: found,
                },
            );
        }
        out
    }

    /// True if BTF declares a variable of this name (e.g. the per-cpu
    /// `current_task` of kernels before `pcpu_hot`).
    pub fn has_var(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == VAR && self.str_at(t.name_off) == name)
    }
}

#[cfg(test)]
#[path = "btf_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use crate::btf::tests::sample;
}
