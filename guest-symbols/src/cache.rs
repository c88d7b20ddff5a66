//! Build-id keyed cache of recovered tables, in a compact bounded binary
//! format: `<dir>/by-build-id/<id>.hvsym`, plus `<dir>/by-content/<key>`
//! aliases (a hash of the input file → its build-id) so that a second open
//! of the same file needs no decompression at all.

use std::path::{Path, PathBuf};

use crate::btf::KernelTypes;
use crate::kernel::{ImageFormat, Kernel};
use crate::symbols::{ExportedSymbol, KernelSymbols, Symbol, SymbolSource};
use crate::syscalls::{Syscall, SyscallArg, SyscallTable};
use crate::tracepoints::TracepointSite;

/// Format and analysis version: bump it whenever an entry's layout or what
/// the analysis recovers changes (entries are keyed by content alone).
const MAGIC: &[u8; 8] = b"HVSYM\x00\x06\x00";
/// Largest cache entry read back.
const MAX_ENTRY: u64 = 256 << 20;

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O on {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cache entry {0} is corrupt")]
    Corrupt(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Key of an input file's content (FNV-1a 64 and length).
pub fn content_key(bytes: &[u8]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    format!("{h:016x}-{:x}", bytes.len())
}

fn entry_path(dir: &Path, build_id: &str) -> PathBuf {
    dir.join("by-build-id").join(format!("{build_id}.hvsym"))
}

struct W(Vec<u8>);
impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

struct R<'a>(&'a [u8]);
impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    /// A count whose items need at least `min` bytes each.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(min)? <= self.0.len()).then_some(n)
    }
}

fn encode(k: &Kernel) -> Vec<u8> {
    let mut w = W(MAGIC.to_vec());
    w.str(&k.release);
    w.str(&k.banner);
    w.str(k.build_id.as_deref().unwrap_or(""));
    w.u8(match k.symbols.source {
        Some(SymbolSource::ElfSymtab) => 1,
        Some(SymbolSource::SystemMap) => 2,
        _ => 0,
    });
    w.u32(k.symbols.len() as u32);
    for s in k.symbols.iter() {
        w.u64(s.addr);
        w.u8(s.kind as u8);
        w.str(&s.name);
    }
    w.u32(k.symbols.exports.len() as u32);
    for e in &k.symbols.exports {
        w.str(&e.name);
        w.u64(e.addr);
        w.u8(u8::from(e.gpl));
        w.str(&e.namespace);
    }
    put_table(&mut w, &k.syscalls);
    w.bytes(k.types.raw());
    w.u32(k.tracepoint_sites.len() as u32);
    for t in &k.tracepoint_sites {
        w.str(&t.tracepoint);
        w.u64(t.addr);
        w.u64(t.target);
        w.u8(t.len);
        w.u8(t.first_arg.unwrap_or(0xff));
        w.u8(u8::from(t.first_arg_const.is_some()));
        w.u32(t.first_arg_const.unwrap_or(0));
    }
    put_table(&mut w, &k.compat_syscalls);
    w.0
}

fn put_table(w: &mut W, t: &SyscallTable) {
    w.u32(t.entries.len() as u32);
    for s in &t.entries {
        w.u32(s.nr);
        w.str(&s.name);
        w.u64(s.handler);
        w.str(&s.handler_symbol);
        match &s.args {
            None => w.u8(0xff),
            Some(a) => {
                w.u8(a.len() as u8);
                for x in a {
                    w.str(&x.type_name);
                    w.str(&x.name);
                }
            }
        }
    }
}

fn get_table(r: &mut R<'_>) -> Option<SyscallTable> {
    let n = r.count(21)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let (nr, name, handler, handler_symbol) = (r.u32()?, r.str()?, r.u64()?, r.str()?);
        let args = match r.u8()? {
            0xff => None,
            c => Some(
                (0..c)
                    .map(|_| {
                        Some(SyscallArg {
                            type_name: r.str()?,
                            name: r.str()?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
        };
        entries.push(Syscall {
            nr,
            name,
            handler,
            handler_symbol,
            args,
        });
    }
    Some(SyscallTable { entries })
}

/// Decodes a cache entry; `None` if it is corrupt or truncated.
pub fn decode(b: &[u8]) -> Option<Kernel> {
    let mut r = R(b);
    if r.take(8)? != MAGIC {
        return None;
    }
    let (release, banner, build_id) = (r.str()?, r.str()?, r.str()?);
    let source = match r.u8()? {
        1 => SymbolSource::ElfSymtab,
        2 => SymbolSource::SystemMap,
        _ => SymbolSource::Kallsyms,
    };
    let n = r.count(13)?;
    let mut syms = Vec::with_capacity(n);
    for _ in 0..n {
        let (addr, kind, name) = (r.u64()?, char::from(r.u8()?), r.str()?);
        syms.push(Symbol { addr, kind, name });
    }
    let mut symbols = KernelSymbols::new(syms, source);
    let n = r.count(17)?;
    for _ in 0..n {
        let (name, addr, gpl, namespace) = (r.str()?, r.u64()?, r.u8()? != 0, r.str()?);
        symbols.exports.push(ExportedSymbol {
            name,
            addr,
            gpl,
            namespace,
        });
    }
    let syscalls = get_table(&mut r)?;
    let btf = r.bytes()?;
    let types = if btf.is_empty() {
        KernelTypes::default()
    } else {
        KernelTypes::parse(btf.to_vec()).ok()?
    };
    let n = r.count(27)?;
    let mut tracepoint_sites = Vec::with_capacity(n);
    for _ in 0..n {
        let (tracepoint, addr, target) = (r.str()?, r.u64()?, r.u64()?);
        let (len, arg) = (r.u8()?, r.u8()?);
        let (has_const, constant) = (r.u8()? != 0, r.u32()?);
        tracepoint_sites.push(TracepointSite {
            tracepoint,
            addr,
            target,
            len,
            first_arg: (arg < 16).then_some(arg),
            first_arg_const: has_const.then_some(constant),
        });
    }
    let compat_syscalls = get_table(&mut r)?;
    Some(Kernel {
        symbols,
        types,
        syscalls,
        compat_syscalls,
        release,
        banner,
        build_id: (!build_id.is_empty()).then_some(build_id),
        format: ImageFormat::Cache,
        kallsyms_layout: None,
        tracepoint_sites,
    })
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Stores a kernel's tables under its build-id (or the content key when it
/// has none) and records the content-key alias. Returns the entry's path.
pub fn store(dir: &Path, content_key: Option<&str>, k: &Kernel) -> Result<PathBuf, CacheError> {
    let id = match (&k.build_id, content_key) {
        (Some(id), _) => id.clone(),
        (None, Some(key)) => format!("content-{key}"),
        (None, None) => return Err(CacheError::Corrupt("kernel without build-id or key".into())),
    };
    let path = entry_path(dir, &id);
    write_atomic(&path, &encode(k))?;
    if let Some(key) = content_key {
        write_atomic(&dir.join("by-content").join(key), id.as_bytes())?;
    }
    Ok(path)
}

fn load_path(path: &Path) -> Result<Option<Kernel>, CacheError> {
    let data = match std::fs::File::open(path) {
        Ok(f) => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_ENTRY), &mut v)
                .map_err(io(path))?;
            v
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    decode(&data)
        .map(Some)
        .ok_or_else(|| CacheError::Corrupt(path.display().to_string()))
}

/// Loads the tables of the kernel with this build-id (lowercase hex).
pub fn load_by_build_id(dir: &Path, build_id: &str) -> Result<Option<Kernel>, CacheError> {
    if build_id.is_empty() || !build_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(None);
    }
    load_path(&entry_path(dir, build_id))
}

/// Loads by the content key of an input file ([`content_key`]). A corrupt
/// entry counts as a miss (it is rebuilt and overwritten).
pub fn load_by_content(dir: &Path, key: &str) -> Result<Option<Kernel>, CacheError> {
    let alias = dir.join("by-content").join(key);
    let Ok(id) = std::fs::read_to_string(&alias) else {
        return Ok(None);
    };
    match load_by_build_id(dir, id.trim()) {
        Err(CacheError::Corrupt(_)) => Ok(None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let syms = KernelSymbols::parse_system_map("ffffffff81000000 T _text\n0 A x\n").unwrap();
        let k = Kernel {
            symbols: syms,
            types: KernelTypes::parse(crate::btf::tests_support::sample()).unwrap(),
            syscalls: SyscallTable {
                entries: vec![Syscall {
                    nr: 0,
                    name: "read".into(),
                    handler: 1,
                    handler_symbol: "__x64_sys_read".into(),
                    args: Some(vec![SyscallArg {
                        type_name: "unsigned int".into(),
                        name: "fd".into(),
                    }]),
                }],
            },
            compat_syscalls: SyscallTable {
                entries: vec![Syscall {
                    nr: 11,
                    name: "execve".into(),
                    handler: 2,
                    handler_symbol: "__ia32_compat_sys_execve".into(),
                    args: None,
                }],
            },
            release: "6.1.0".into(),
            banner: "Linux version 6.1.0 x".into(),
            build_id: Some("abcd".into()),
            format: ImageFormat::Elf,
            kallsyms_layout: None,
            tracepoint_sites: vec![
                TracepointSite {
                    tracepoint: "sched_wakeup".into(),
                    addr: 0xffff_ffff_810d_f8ae,
                    target: 0xffff_ffff_810d_fa10,
                    len: 2,
                    first_arg: Some(5),
                    first_arg_const: None,
                },
                TracepointSite {
                    tracepoint: "sched_waking".into(),
                    addr: 0xffff_ffff_810e_1984,
                    target: 0xffff_ffff_810e_1b02,
                    len: 5,
                    first_arg: None,
                    first_arg_const: Some(6),
                },
            ],
        };
        let dir = std::env::temp_dir().join(format!("gs-cache-{}", std::process::id()));
        store(&dir, Some("key1"), &k).unwrap();
        let back = load_by_content(&dir, "key1").unwrap().unwrap();
        assert_eq!(back.symbols.as_slice(), k.symbols.as_slice());
        assert_eq!(back.syscalls.entries, k.syscalls.entries);
        assert_eq!(back.compat_syscalls.entries, k.compat_syscalls.entries);
        assert_eq!(back.types.member_offset("task_struct", "comm"), Some(48));
        assert_eq!(back.build_id.as_deref(), Some("abcd"));
        assert_eq!(back.tracepoint_sites, k.tracepoint_sites);
        assert!(load_by_content(&dir, "nope").unwrap().is_none());
        assert!(load_by_build_id(&dir, "../x").unwrap().is_none());
        let enc = encode(&k);
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut]).is_none());
        }
        std::fs::write(entry_path(&dir, "abcd"), &enc[..enc.len() / 2]).unwrap();
        assert!(load_by_content(&dir, "key1").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
