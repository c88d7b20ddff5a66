//! The symbol table: lookups by name and by address, System.map in and out.

use std::collections::HashMap;
use std::fmt;

/// Serializes an address as a `0x`-prefixed hex string (JSON numbers lose
/// kernel addresses' low bits in most readers).
pub fn hex_addr<S: serde::Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{addr:#018x}"))
}

/// One kernel symbol (as in /proc/kallsyms: address, type letter, name).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Symbol {
    #[serde(serialize_with = "hex_addr")]
    pub addr: u64,
    /// nm-style type letter (`T`, `t`, `D`, `r`, `A`, ...).
    pub kind: char,
    pub name: String,
}

/// Where a symbol table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SymbolSource {
    Kallsyms,
    ElfSymtab,
    SystemMap,
}

/// An exported symbol (`__ksymtab`, `__ksymtab_gpl`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportedSymbol {
    pub name: String,
    #[serde(serialize_with = "hex_addr")]
    pub addr: u64,
    pub gpl: bool,
    pub namespace: String,
}

/// The result of an address lookup: `name+0x1a/0x80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location<'a> {
    pub symbol: &'a Symbol,
    pub offset: u64,
    /// Distance to the next symbol at a higher address (0 if last).
    pub size: u64,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{:#x}/{:#x}",
            self.symbol.name, self.offset, self.size
        )
    }
}

/// All symbols of the core kernel image, sorted by address.
#[derive(Debug, Clone, Default)]
pub struct KernelSymbols {
    symbols: Vec<Symbol>,
    by_name: HashMap<String, u32>,
    pub source: Option<SymbolSource>,
    /// Exported symbols, in table order.
    pub exports: Vec<ExportedSymbol>,
}

impl KernelSymbols {
    /// Builds the table; sorts by address, keeping the given order for
    /// aliases (kallsyms already lists the preferred alias first).
    pub fn new(mut symbols: Vec<Symbol>, source: SymbolSource) -> KernelSymbols {
        symbols.sort_by_key(|s| s.addr);
        let mut by_name = HashMap::with_capacity(symbols.len());
        for (i, s) in symbols.iter().enumerate() {
            by_name.entry(s.name.clone()).or_insert(i as u32);
        }
        KernelSymbols {
            symbols,
            by_name,
            source: Some(source),
            exports: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Symbols sorted by address.
    pub fn iter(&self) -> std::slice::Iter<'_, Symbol> {
        self.symbols.iter()
    }

    pub fn as_slice(&self) -> &[Symbol] {
        &self.symbols
    }

    /// The first symbol with this name (local names may repeat).
    pub fn by_name(&self, name: &str) -> Option<&Symbol> {
        self.by_name.get(name).map(|&i| &self.symbols[i as usize])
    }

    /// Address of a symbol by name.
    pub fn addr(&self, name: &str) -> Option<u64> {
        self.by_name(name).map(|s| s.addr)
    }

    /// Every symbol with this name.
    pub fn all_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Symbol> + 'a {
        self.symbols.iter().filter(move |s| s.name == name)
    }

    /// Symbols exactly at `addr`.
    pub fn at(&self, addr: u64) -> &[Symbol] {
        let lo = self.symbols.partition_point(|s| s.addr < addr);
        let hi = self.symbols.partition_point(|s| s.addr <= addr);
        &self.symbols[lo..hi]
    }

    /// The symbol containing `addr`: the nearest one at or below it (the
    /// first alias), sized up to the next higher address. Absolute per-cpu
    /// offsets (below the kernel image) and addresses past the last symbol
    /// resolve to nothing.
    pub fn by_addr(&self, addr: u64) -> Option<Location<'_>> {
        let hi = self.symbols.partition_point(|s| s.addr <= addr);
        if hi == 0 {
            return None;
        }
        let base = self.symbols[hi - 1].addr;
        let first = self.symbols[..hi].partition_point(|s| s.addr < base);
        let size = self.symbols.get(hi).map_or(0, |n| n.addr - base);
        if size == 0 && addr != base {
            return None;
        }
        Some(Location {
            symbol: &self.symbols[first],
            offset: addr - base,
            size,
        })
    }

    /// Size of the object at `name` (distance to the next higher address).
    pub fn size_of(&self, name: &str) -> Option<u64> {
        let s = self.by_name(name)?;
        let next = self.symbols.partition_point(|x| x.addr <= s.addr);
        Some(self.symbols.get(next)?.addr - s.addr)
    }

    /// System.map / /proc/kallsyms text: `%016x %c %s` lines by address.
    pub fn write_system_map(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        for s in &self.symbols {
            writeln!(w, "{:016x} {} {}", s.addr, s.kind, s.name)?;
        }
        Ok(())
    }

    /// Parses System.map or /proc/kallsyms text (module lines, `[mod]`,
    /// are skipped). Malformed lines are an error with their number.
    pub fn parse_system_map(text: &str) -> Result<KernelSymbols, SystemMapError> {
        let mut v = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.contains('[') {
                continue;
            }
            let bad = || SystemMapError { line: i + 1 };
            let mut it = line.split_whitespace();
            let addr = u64::from_str_radix(it.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
            let kind = it.next().filter(|k| k.len() == 1).ok_or_else(bad)?;
            let name = it.next().ok_or_else(bad)?;
            v.push(Symbol {
                addr,
                kind: kind.chars().next().unwrap_or('?'),
                name: name.to_string(),
            });
        }
        if v.is_empty() {
            return Err(SystemMapError { line: 0 });
        }
        Ok(KernelSymbols::new(v, SymbolSource::SystemMap))
    }
}

/// A System.map line that is not `ADDR TYPE NAME`.
#[derive(Debug, thiserror::Error)]
#[error("System.map line {line} is not `ADDR TYPE NAME` (0: no symbols at all)")]
pub struct SystemMapError {
    pub line: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> KernelSymbols {
        KernelSymbols::parse_system_map(
            "0000000000000000 A fixed_percpu_data\n\
             ffffffff81000000 T _text\n\
             ffffffff81000000 T startup_64\n\
             ffffffff81000080 t helper\n\
             ffffffff81000100 T _etext\n\
             ffffffffa0000000 t mod_fn\t[ext4]\n",
        )
        .unwrap()
    }

    #[test]
    fn lookups() {
        let t = table();
        assert_eq!(t.len(), 5);
        assert_eq!(t.addr("startup_64"), Some(0xffff_ffff_8100_0000));
        assert!(t.by_name("mod_fn").is_none());
        let l = t.by_addr(0xffff_ffff_8100_001a).unwrap();
        assert_eq!(l.to_string(), "_text+0x1a/0x80");
        assert_eq!(
            t.by_addr(0xffff_ffff_8100_0090).unwrap().to_string(),
            "helper+0x10/0x80"
        );
        assert!(t.by_addr(0xffff_ffff_8100_0200).is_none());
        assert_eq!(t.at(0xffff_ffff_8100_0000).len(), 2);
        assert_eq!(t.size_of("helper"), Some(0x80));
        let mut out = Vec::new();
        t.write_system_map(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().nth(3), Some("ffffffff81000080 t helper"));
    }

    #[test]
    fn bad_maps() {
        assert_eq!(KernelSymbols::parse_system_map("").unwrap_err().line, 0);
        assert_eq!(
            KernelSymbols::parse_system_map("zz T x\n")
                .unwrap_err()
                .line,
            1
        );
        assert_eq!(
            KernelSymbols::parse_system_map("ffff T\n")
                .unwrap_err()
                .line,
            1
        );
    }
}
