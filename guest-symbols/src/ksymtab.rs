//! Exported-symbol tables (`__ksymtab`, `__ksymtab_gpl`), located through
//! their `__start___ksymtab*`/`__stop___ksymtab*` symbols.

use crate::elf::AddressSpace;
use crate::symbols::{ExportedSymbol, KernelSymbols};

const MAX_ENTRIES: u64 = 1 << 20;
const MAX_NAME: usize = 512;

fn rel(base: u64, off: u32) -> u64 {
    base.wrapping_add(off as i32 as i64 as u64)
}

/// Decodes one table. Tries the position-relative 12-byte entries of
/// CONFIG_HAVE_ARCH_PREL32_RELOCATIONS (4.19+), then absolute 24/16-byte
/// entries. Returns nothing if neither decodes to names.
fn table(
    data: &[u8],
    space: &AddressSpace,
    start: u64,
    stop: u64,
    gpl: bool,
) -> Vec<ExportedSymbol> {
    let bytes = stop.saturating_sub(start);
    for size in [12u64, 24, 16] {
        if bytes % size != 0 || bytes / size > MAX_ENTRIES {
            continue;
        }
        let n = bytes / size;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let e = start + i * size;
            let fields = if size == 12 {
                (|| {
                    let v = space.u32(data, e)?;
                    let nm = space.u32(data, e + 4)?;
                    let ns = space.u32(data, e + 8)?;
                    Some((rel(e, v), rel(e + 4, nm), rel(e + 8, ns)))
                })()
            } else {
                (|| {
                    let ns = if size == 24 {
                        space.u64(data, e + 16)?
                    } else {
                        0
                    };
                    Some((space.u64(data, e)?, space.u64(data, e + 8)?, ns))
                })()
            };
            let Some((addr, name_at, ns_at)) = fields else {
                break;
            };
            let Some(name) = space
                .cstr(data, name_at, MAX_NAME)
                .filter(|n| !n.is_empty())
            else {
                break;
            };
            let namespace = if ns_at == 0 || ns_at == e + 8 {
                String::new()
            } else {
                space.cstr(data, ns_at, MAX_NAME).unwrap_or_default()
            };
            out.push(ExportedSymbol {
                name,
                addr,
                gpl,
                namespace,
            });
        }
        if out.len() as u64 == n {
            return out;
        }
    }
    Vec::new()
}

/// Both export tables, if the kernel has them.
pub fn exports(data: &[u8], space: &AddressSpace, syms: &KernelSymbols) -> Vec<ExportedSymbol> {
    let mut out = Vec::new();
    for (sect, gpl) in [("__ksymtab", false), ("__ksymtab_gpl", true)] {
        let (Some(a), Some(b)) = (
            syms.addr(&format!("__start_{sect}")),
            syms.addr(&format!("__stop_{sect}")),
        ) else {
            continue;
        };
        out.extend(table(data, space, a, b, gpl));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::{Symbol, SymbolSource};

    #[test]
    fn prel32_entries() {
        let base = 0xffff_ffff_8200_0000u64;
        let mut d = vec![0u8; 64];
        // entry at base: value -> base-0x1000, name -> base+0x20 "kfree", ns -> base+0x26 ""
        d[0..4].copy_from_slice(&(-0x1000i32).to_le_bytes());
        d[4..8].copy_from_slice(&(0x20i32 - 4).to_le_bytes());
        d[8..12].copy_from_slice(&(0x26i32 - 8).to_le_bytes());
        d[0x20..0x26].copy_from_slice(b"kfree\0");
        let space = AddressSpace::linear(base, d.len());
        let mk = |n: &str, a| Symbol {
            addr: a,
            kind: 'R',
            name: n.into(),
        };
        let syms = KernelSymbols::new(
            vec![
                mk("__start___ksymtab", base),
                mk("__stop___ksymtab", base + 12),
            ],
            SymbolSource::Kallsyms,
        );
        let e = exports(&d, &space, &syms);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].name.as_str(), e[0].addr, e[0].gpl),
            ("kfree", base - 0x1000, false)
        );
        // A table that runs outside the image decodes to nothing.
        let syms = KernelSymbols::new(
            vec![
                mk("__start___ksymtab", base),
                mk("__stop___ksymtab", base + 12 * 1000),
            ],
            SymbolSource::Kallsyms,
        );
        assert!(exports(&d, &space, &syms).is_empty());
    }
}
