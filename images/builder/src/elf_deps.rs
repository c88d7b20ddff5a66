//! What a dynamically linked program needs beside it in the guest: its
//! interpreter (PT_INTERP) and the shared libraries its dynamic section
//! names (DT_NEEDED, recursively), found the way glibc's loader finds them:
//! DT_RPATH (of the object and the objects that loaded it, unless the
//! object has DT_RUNPATH), DT_RUNPATH, then the host's `/etc/ld.so.cache`
//! and the loader's system directories. `$ORIGIN` is expanded twice: on
//! the host side to find the file, on the guest side to place it.
//!
//! The guest has no `ld.so.cache`, so its loader looks a library up only
//! in its system directories (and RPATH/RUNPATH): a library the host found
//! through the cache in another folder is placed in the first system
//! directory under the name the loader asks for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::guest_path::normalize_guest;
use crate::io_context::{io, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum ElfDepsError {
    #[error(transparent)]
    Io(#[from] IoContext),
    #[error("{} is not a readable ELF file: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    #[error("{} is a library for {machine} ({bits}-bit), not x86-64: the guest's x86-64 loader cannot use it", path.display())]
    ForeignLibrary {
        path: PathBuf,
        machine: &'static str,
        bits: u32,
    },
    #[error("the interpreter {interp} of {} is not on the host", path.display())]
    NoInterpreter { interp: String, path: PathBuf },
    #[error("the library {name}, needed by {} (guest path {guest}), is not found on the host (searched {searched})", needed_by.display())]
    LibraryNotFound {
        name: String,
        needed_by: PathBuf,
        guest: String,
        searched: String,
    },
}

type Result<T> = std::result::Result<T, ElfDepsError>;

/// glibc's system search path on Debian/Ubuntu x86-64 (what
/// `ld-linux-x86-64.so.2 --help` lists), used when the interpreter does
/// not say its own.
const FALLBACK_SYSTEM_DIRS: [&str; 4] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// `ld.so.cache` entry flags of a 64-bit x86 glibc library
/// (FLAG_ELF_LIBC6 | FLAG_X8664_LIB64).
const CACHE_FLAGS_X86_64_LIBC6: u32 = 0x0303;
const CACHE_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";

/// A file to place in the guest: its guest path and where its content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub guest: String,
    pub host: PathBuf,
}

/// A search directory as (guest path, host path): they differ when it came
/// from `$ORIGIN` of an object placed elsewhere in the guest.
#[derive(Debug, Clone)]
struct SearchDir {
    guest: String,
    host: PathBuf,
}

struct Object {
    placed: Placed,
    /// RPATH directories inherited from the objects that loaded this one.
    rpath_chain: Vec<SearchDir>,
    /// The interpreter of the program that loads this library (None for a
    /// program: its own PT_INTERP).
    interp: Option<String>,
}

/// A direct need of an object, with what its own lookups inherit.
struct Need {
    placed: Placed,
    rpath_chain: Vec<SearchDir>,
    interp: Option<String>,
}

/// Finds the interpreter and libraries of x86-64 ELF programs on the host.
pub struct Resolver {
    cache: HashMap<String, PathBuf>,
    system_dirs: BTreeMap<String, Vec<String>>,
}

impl Resolver {
    /// Reads the host's `/etc/ld.so.cache` (absent or unreadable: the
    /// system directories alone, as the loader itself would).
    pub fn new() -> Self {
        let cache = std::fs::read("/etc/ld.so.cache")
            .map(|b| parse_ld_so_cache(&b))
            .unwrap_or_default();
        Resolver {
            cache,
            system_dirs: BTreeMap::new(),
        }
    }

    /// Every file the programs among `roots` need that is not already in
    /// `added` (guest path to host path of the files being added, searched
    /// first at each place the guest loader will look).
    pub fn dependencies(
        &mut self,
        roots: &[Placed],
        added: &BTreeMap<String, PathBuf>,
    ) -> Result<Vec<Placed>> {
        let mut work: Vec<Object> = roots
            .iter()
            .map(|p| Object {
                placed: p.clone(),
                rpath_chain: Vec::new(),
                interp: None,
            })
            .collect();
        let mut seen: BTreeSet<String> = roots.iter().map(|p| p.guest.clone()).collect();
        let mut out = Vec::new();
        while let Some(obj) = work.pop() {
            let is_root = roots.contains(&obj.placed);
            for need in self.needs(&obj, added, is_root)? {
                if seen.insert(need.placed.guest.clone()) {
                    out.push(need.placed.clone());
                    work.push(Object {
                        placed: need.placed,
                        rpath_chain: need.rpath_chain,
                        interp: need.interp,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.guest.cmp(&b.guest));
        Ok(out)
    }

    /// The direct needs of one object, each with the RPATH chain its own
    /// lookups inherit. A root that is not a dynamic ELF needs nothing.
    fn needs(
        &mut self,
        obj: &Object,
        added: &BTreeMap<String, PathBuf>,
        is_root: bool,
    ) -> Result<Vec<Need>> {
        let host = &obj.placed.host;
        let bytes = std::fs::read(host).map_err(io(format!("reading {}", host.display())))?;
        if !bytes.starts_with(b"\x7fELF") {
            return Ok(Vec::new());
        }
        let elf = match goblin::elf::Elf::parse(&bytes) {
            Ok(elf) => elf,
            // A user's file that only looks like ELF is data to copy.
            Err(_) if is_root => return Ok(Vec::new()),
            Err(e) => {
                return Err(ElfDepsError::NotElf {
                    path: host.clone(),
                    reason: e.to_string(),
                })
            }
        };
        if elf.interpreter.is_none() && elf.libraries.is_empty() {
            return Ok(Vec::new());
        }
        if !elf.is_64 || elf.header.e_machine != goblin::elf::header::EM_X86_64 {
            if is_root {
                // A user's file for another machine (e.g. a test fixture):
                // copied as it is, and said so.
                eprintln!(
                    "hvtrace: add: {} is a dynamically linked ELF for {} ({}-bit), not x86-64: added without its libraries",
                    host.display(),
                    goblin::elf::header::machine_to_str(elf.header.e_machine),
                    if elf.is_64 { 64 } else { 32 }
                );
                return Ok(Vec::new());
            }
            return Err(ElfDepsError::ForeignLibrary {
                path: host.clone(),
                machine: goblin::elf::header::machine_to_str(elf.header.e_machine),
                bits: if elf.is_64 { 64 } else { 32 },
            });
        }
        let mut needs = Vec::new();
        let interp = elf
            .interpreter
            .or(obj.interp.as_deref())
            .unwrap_or("/lib64/ld-linux-x86-64.so.2")
            .to_string();
        if let Some(path) = elf.interpreter {
            let placed = Placed {
                guest: path.to_string(),
                host: added
                    .get(path)
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from(path)),
            };
            if !placed.host.is_file() {
                return Err(ElfDepsError::NoInterpreter {
                    interp: path.to_string(),
                    path: host.clone(),
                });
            }
            needs.push(Need {
                placed,
                rpath_chain: Vec::new(),
                interp: None,
            });
        }
        let origin = origin_of(&obj.placed)?;
        let split = |list: &[&str]| -> Vec<SearchDir> {
            list.iter()
                .flat_map(|s| s.split(':'))
                .filter(|d| !d.is_empty())
                .map(|d| expand_origin(d, &origin))
                .collect()
        };
        let runpath = split(&elf.runpaths);
        let own_rpath = if runpath.is_empty() {
            split(&elf.rpaths)
        } else {
            Vec::new()
        };
        let mut search: Vec<SearchDir> = own_rpath.clone();
        search.extend(obj.rpath_chain.iter().cloned());
        if !runpath.is_empty() {
            search = runpath;
        }
        let mut child_chain = own_rpath;
        child_chain.extend(obj.rpath_chain.iter().cloned());
        let system = self.system_dirs_of(&interp);
        for name in &elf.libraries {
            let placed = self.find(name, &search, &system, added).ok_or_else(|| {
                ElfDepsError::LibraryNotFound {
                    name: name.to_string(),
                    needed_by: host.clone(),
                    guest: obj.placed.guest.clone(),
                    searched: format!(
                        "{}ld.so.cache and {}",
                        if search.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "RPATH/RUNPATH {}, ",
                                search
                                    .iter()
                                    .map(|d| d.host.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(":")
                            )
                        },
                        system.join(", ")
                    ),
                }
            })?;
            needs.push(Need {
                placed,
                rpath_chain: child_chain.clone(),
                interp: Some(interp.clone()),
            });
        }
        Ok(needs)
    }

    /// Where the guest loader will find `name`, and the host file to put there.
    fn find(
        &self,
        name: &str,
        search: &[SearchDir],
        system: &[String],
        added: &BTreeMap<String, PathBuf>,
    ) -> Option<Placed> {
        if name.starts_with('/') {
            let host = added
                .get(name)
                .cloned()
                .unwrap_or_else(|| PathBuf::from(name));
            return host.is_file().then(|| Placed {
                guest: name.to_string(),
                host,
            });
        }
        for dir in search {
            let Some(guest) = normalize_guest(&join(&dir.guest, name)) else {
                // A relative RPATH entry: relative to the process's current
                // folder, which the guest's is not; skipped.
                continue;
            };
            if let Some(host) = added.get(&guest) {
                return Some(Placed {
                    guest,
                    host: host.clone(),
                });
            }
            let host = dir.host.join(name);
            if host.is_file() {
                return Some(Placed { guest, host });
            }
        }
        for dir in system {
            let guest = join(dir, name);
            if let Some(host) = added.get(&guest) {
                return Some(Placed {
                    guest,
                    host: host.clone(),
                });
            }
        }
        let host = self
            .cache
            .get(name)
            .filter(|p| p.is_file())
            .cloned()
            .or_else(|| {
                system
                    .iter()
                    .map(|d| Path::new(d).join(name))
                    .find(|p| p.is_file())
            })?;
        let in_system_dir = host
            .parent()
            .and_then(Path::to_str)
            .is_some_and(|d| system.iter().any(|s| s == d));
        let guest = if in_system_dir {
            host.to_str()?.to_string()
        } else {
            join(system.first()?, name)
        };
        Some(Placed { guest, host })
    }

    /// The system search directories of the interpreter that will load the
    /// program in the guest (glibc's `--help` lists them).
    fn system_dirs_of(&mut self, interp: &str) -> Vec<String> {
        self.system_dirs
            .entry(interp.to_string())
            .or_insert_with(|| {
                let listed: Vec<String> = std::process::Command::new(interp)
                    .arg("--help")
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .filter_map(|l| l.trim().strip_suffix(" (system search path)"))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if listed.is_empty() {
                    FALLBACK_SYSTEM_DIRS.iter().map(|d| d.to_string()).collect()
                } else {
                    listed
                }
            })
            .clone()
    }
}

/// `$ORIGIN` of an object: its folder in the guest, and on the host (with
/// symlinks resolved, as the host loader does for a program).
fn origin_of(placed: &Placed) -> Result<SearchDir> {
    let guest = match placed.guest.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
    };
    let real = placed
        .host
        .canonicalize()
        .map_err(io(format!("resolving {}", placed.host.display())))?;
    let host = real.parent().unwrap_or(Path::new("/")).to_path_buf();
    Ok(SearchDir { guest, host })
}

fn expand_origin(dir: &str, origin: &SearchDir) -> SearchDir {
    let (guest_origin, host_origin) = (
        origin.guest.trim_end_matches('/'),
        origin.host.to_string_lossy(),
    );
    let host_origin = host_origin.trim_end_matches('/');
    let mut guest = dir.to_string();
    let mut host = dir.to_string();
    for token in ["${ORIGIN}", "$ORIGIN"] {
        guest = guest.replace(token, guest_origin);
        host = host.replace(token, host_origin);
    }
    SearchDir {
        guest,
        host: PathBuf::from(host),
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Name to path of the x86-64 glibc libraries in an `ld.so.cache` (the
/// "glibc-ld.so.cache1.1" format; its string offsets count from its own
/// header). A library listed more than once (hwcaps variants) keeps the
/// entry without hwcap requirements.
fn parse_ld_so_cache(bytes: &[u8]) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let Some(start) = bytes
        .windows(CACHE_MAGIC.len())
        .position(|w| w == CACHE_MAGIC)
    else {
        return out;
    };
    let data = &bytes[start..];
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
    };
    let string_at = |off: u32| -> Option<&str> {
        let rest = data.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    };
    let Some(nlibs) = u32_at(20) else {
        return out;
    };
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    for i in 0..nlibs as usize {
        let at = HEADER + i * ENTRY;
        let (Some(flags), Some(key), Some(value)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8))
        else {
            break;
        };
        let hwcap = data
            .get(at + 16..at + 24)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        if flags != CACHE_FLAGS_X86_64_LIBC6 {
            continue;
        }
        let (Some(name), Some(path)) = (string_at(key), string_at(value)) else {
            continue;
        };
        if hwcap == 0 || !out.contains_key(name) {
            out.insert(name.to_string(), PathBuf::from(path));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own cache names libc where the host's loader finds it.
    #[test]
    fn host_cache_finds_libc() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else {
            panic!("this test needs the host's /etc/ld.so.cache (any glibc system has one)");
        };
        let cache = parse_ld_so_cache(&bytes);
        let libc = cache.get("libc.so.6").expect("libc.so.6 in ld.so.cache");
        assert!(libc.is_file(), "{}", libc.display());
        let elf_bytes = std::fs::read(libc).unwrap();
        let elf = goblin::elf::Elf::parse(&elf_bytes).unwrap();
        assert_eq!(elf.soname, Some("libc.so.6"));
        assert_eq!(elf.header.e_machine, goblin::elf::header::EM_X86_64);
    }

    /// This test program is itself dynamically linked against the host's
    /// glibc: every library it needs is found, libc where the guest's
    /// loader looks first, and its interpreter at its PT_INTERP path.
    #[test]
    fn own_executable_needs_are_all_found() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let elf = goblin::elf::Elf::parse(&bytes).unwrap();
        let interp = elf.interpreter.expect("a dynamically linked test binary");
        let root = Placed {
            guest: "/opt/t/test".into(),
            host: exe.clone(),
        };
        let deps = Resolver::new()
            .dependencies(std::slice::from_ref(&root), &BTreeMap::new())
            .unwrap();
        let guests: Vec<&str> = deps.iter().map(|d| d.guest.as_str()).collect();
        assert!(guests.contains(&interp), "{guests:?}");
        assert!(
            guests.contains(&"/lib/x86_64-linux-gnu/libc.so.6"),
            "{guests:?}"
        );
        for needed in &elf.libraries {
            assert!(
                guests.iter().any(|g| g.ends_with(&format!("/{needed}"))),
                "{needed} not placed: {guests:?}"
            );
        }
        for d in &deps {
            assert!(d.host.is_file(), "{}", d.host.display());
        }
    }

    #[test]
    fn origin_expands_on_each_side() {
        let origin = SearchDir {
            guest: "/opt/t".into(),
            host: PathBuf::from("/home/u/build"),
        };
        let d = expand_origin("$ORIGIN/../lib", &origin);
        assert_eq!(d.guest, "/opt/t/../lib");
        assert_eq!(d.host, PathBuf::from("/home/u/build/../lib"));
        let d = expand_origin("${ORIGIN}", &origin);
        assert_eq!(d.guest, "/opt/t");
    }
}
