//! The syscall table: numbers from `sys_call_table` and its handlers'
//! symbol names, argument names and types from the kernel's own
//! CONFIG_FTRACE_SYSCALLS metadata (`__start_syscalls_metadata`).

use std::collections::HashMap;

use crate::btf::KernelTypes;
use crate::elf::AddressSpace;
use crate::symbols::KernelSymbols;

const MAX_SYSCALLS: u64 = 2048;
const MAX_METADATA: u64 = 8192;
const MAX_STR: usize = 256;
const MAX_ARGS: u32 = 6;
const HANDLER_PREFIXES: [&str; 4] = ["__x64_sys_", "__x64_compat_sys_", "__ia32_sys_", "sys_"];

/// Errors of syscall-table recovery.
#[derive(Debug, thiserror::Error)]
pub enum SyscallError {
    #[error("no `sys_call_table` symbol")]
    NoTable,
    #[error("`sys_call_table` at {0:#x} is not readable in the image")]
    Unreadable(u64),
}

/// One syscall argument: C type and name, as the kernel declares them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyscallArg {
    pub type_name: String,
    pub name: String,
}

/// One implemented syscall.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Syscall {
    pub nr: u32,
    /// `read`, `openat`, ...
    pub name: String,
    /// Handler address (link-time) and its symbol (`__x64_sys_read`).
    #[serde(serialize_with = "crate::symbols::hex_addr")]
    pub handler: u64,
    pub handler_symbol: String,
    /// From the syscall metadata; `None` when the kernel has none for it.
    pub args: Option<Vec<SyscallArg>>,
}

impl std::fmt::Display for Syscall {
    /// `NR NAME(type name, ...)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}(", self.nr, self.name)?;
        if let Some(args) = &self.args {
            for (i, a) in args.iter().enumerate() {
                let sep = if i > 0 { ", " } else { "" };
                write!(f, "{sep}{} {}", a.type_name, a.name)?;
            }
        } else {
            write!(f, "?")?;
        }
        write!(f, ")")
    }
}

/// Implemented syscalls, by number.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyscallTable {
    pub entries: Vec<Syscall>,
}

impl SyscallTable {
    pub fn by_nr(&self, nr: u32) -> Option<&Syscall> {
        self.entries
            .binary_search_by_key(&nr, |s| s.nr)
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn by_name(&self, name: &str) -> Option<&Syscall> {
        self.entries.iter().find(|s| s.name == name)
    }
}

fn handler_name(sym: &str) -> &str {
    HANDLER_PREFIXES
        .iter()
        .find_map(|p| sym.strip_prefix(p))
        .unwrap_or(sym)
}

struct MetaLayout {
    name: u64,
    nb_args: u64,
    types: u64,
    args: u64,
}

fn meta_layout(types: Option<&KernelTypes>) -> MetaLayout {
    let off = |m: &str, d: u64| {
        types
            .and_then(|t| t.member_offset("syscall_metadata", m))
            .unwrap_or(d)
    };
    MetaLayout {
        name: off("name", 0),
        nb_args: off("nb_args", 12),
        types: off("types", 16),
        args: off("args", 24),
    }
}

/// Reads the metadata records: syscall name (without `sys_`) → args.
pub(crate) fn metadata(
    data: &[u8],
    space: &AddressSpace,
    syms: &KernelSymbols,
    types: Option<&KernelTypes>,
) -> HashMap<String, Vec<SyscallArg>> {
    let mut out = HashMap::new();
    let (Some(start), Some(stop)) = (
        syms.addr("__start_syscalls_metadata"),
        syms.addr("__stop_syscalls_metadata"),
    ) else {
        return out;
    };
    let l = meta_layout(types);
    let n = (stop.saturating_sub(start) / 8).min(MAX_METADATA);
    for i in 0..n {
        let rec = (|| {
            let m = space.u64(data, start + 8 * i)?;
            let name = space.cstr(data, space.u64(data, m + l.name)?, MAX_STR)?;
            let nb = space.u32(data, m + l.nb_args)?;
            if nb > MAX_ARGS {
                return None;
            }
            let (tys, names) = (space.u64(data, m + l.types)?, space.u64(data, m + l.args)?);
            let args = (0..u64::from(nb))
                .map(|j| {
                    Some(SyscallArg {
                        type_name: space.cstr(data, space.u64(data, tys + 8 * j)?, MAX_STR)?,
                        name: space.cstr(data, space.u64(data, names + 8 * j)?, MAX_STR)?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some((name.strip_prefix("sys_").unwrap_or(&name).to_string(), args))
        })();
        if let Some((name, args)) = rec {
            out.entry(name).or_insert(args);
        }
    }
    out
}

/// Recovers the x86-64 syscall table.
pub fn recover(
    data: &[u8],
    space: &AddressSpace,
    syms: &KernelSymbols,
    types: Option<&KernelTypes>,
) -> Result<SyscallTable, SyscallError> {
    let table = syms.addr("sys_call_table").ok_or(SyscallError::NoTable)?;
    let count = syms
        .size_of("sys_call_table")
        .map_or(MAX_SYSCALLS, |s| s / 8)
        .min(MAX_SYSCALLS);
    let meta = metadata(data, space, syms, types);
    let mut entries = Vec::new();
    for nr in 0..count {
        let Some(handler) = space.u64(data, table + 8 * nr) else {
            if nr == 0 {
                return Err(SyscallError::Unreadable(table));
            }
            break;
        };
        let Some(sym) = syms.at(handler).first() else {
            break;
        };
        let name = handler_name(&sym.name);
        if name == "ni_syscall" {
            continue;
        }
        entries.push(Syscall {
            nr: nr as u32,
            name: name.to_string(),
            handler,
            handler_symbol: sym.name.clone(),
            args: meta.get(name).cloned(),
        });
    }
    Ok(SyscallTable { entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::{Symbol, SymbolSource};

    /// A fake image: table, two handlers, one metadata record.
    #[test]
    fn table_and_metadata() {
        let base = 0xffff_ffff_8200_0000u64;
        let mut d = vec![0u8; 0x400];
        let put = |d: &mut Vec<u8>, at: u64, v: u64| {
            let o = (at - base) as usize;
            d[o..o + 8].copy_from_slice(&v.to_le_bytes());
        };
        let (read, ni) = (base + 0x300, base + 0x340);
        put(&mut d, base, read);
        put(&mut d, base + 8, ni);
        put(&mut d, base + 16, read);
        // metadata pointer array at 0x100 -> record at 0x120
        put(&mut d, base + 0x100, base + 0x120);
        put(&mut d, base + 0x120, base + 0x200); // name
        d[0x12c] = 2; // nb_args
        put(&mut d, base + 0x130, base + 0x180); // types
        put(&mut d, base + 0x138, base + 0x190); // args
        put(&mut d, base + 0x180, base + 0x210);
        put(&mut d, base + 0x188, base + 0x220);
        put(&mut d, base + 0x190, base + 0x230);
        put(&mut d, base + 0x198, base + 0x238);
        for (at, s) in [
            (0x200, "sys_read\0"),
            (0x210, "unsigned int\0"),
            (0x220, "char *\0"),
            (0x230, "fd\0"),
            (0x238, "buf\0"),
        ] {
            d[at..at + s.len()].copy_from_slice(s.as_bytes());
        }
        let mk = |n: &str, a| Symbol {
            addr: a,
            kind: 'T',
            name: n.into(),
        };
        let syms = KernelSymbols::new(
            vec![
                mk("sys_call_table", base),
                mk("__start_syscalls_metadata", base + 0x100),
                mk("__stop_syscalls_metadata", base + 0x108),
                mk("after_table", base + 24),
                mk("__x64_sys_read", read),
                mk("__x64_sys_ni_syscall", ni),
            ],
            SymbolSource::Kallsyms,
        );
        let space = AddressSpace::linear(base, d.len());
        let t = recover(&d, &space, &syms, None).unwrap();
        assert_eq!(t.entries.len(), 2);
        assert_eq!(
            t.by_nr(0).unwrap().to_string(),
            "0 read(unsigned int fd, char * buf)"
        );
        assert!(t.by_nr(1).is_none());
        assert_eq!(t.by_nr(2).unwrap().name, "read");
        let empty = KernelSymbols::new(vec![mk("x", 1)], SymbolSource::Kallsyms);
        assert!(recover(&d, &space, &empty, None).is_err());
    }
}
