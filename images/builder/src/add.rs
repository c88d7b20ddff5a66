//! `--add HOST_PATH[:GUEST_PATH]`: the user's own files in the guest,
//! without rebuilding the image. The files (directories recursively, and
//! for each dynamically linked ELF its interpreter and libraries, see
//! [`crate::elf_deps`]) go into a second newc archive that is appended to
//! the base initramfs: Linux unpacks concatenated archives in order, so a
//! file of the layer may also replace one of the image's. The combined
//! initramfs is cached by the content of the base and of every added file
//! with its guest path and mode.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cache;
use crate::cpio::{gzip, NewcArchive};
use crate::elf_deps::{ElfDepsError, Placed, Resolver};
use crate::guest_path::normalize_guest;
use crate::io_context::{io, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("--add {spec}: the guest path after `:` is empty")]
    EmptyGuestPath { spec: String },
    #[error("--add {spec}: the host path is empty")]
    EmptyHostPath { spec: String },
    #[error("--add {spec}: the path is not UTF-8")]
    SpecNotUtf8 { spec: String },
    #[error("--add {spec}: the guest path {guest} is not absolute")]
    NotAbsolute { spec: String, guest: String },
    #[error("--add {origin}: the guest path {guest} is also given by {other}")]
    GivenTwice {
        origin: String,
        guest: String,
        other: String,
    },
    #[error("--add {origin}: {}: {err}", host.display())]
    Host {
        origin: String,
        host: PathBuf,
        err: std::io::Error,
    },
    #[error("{}: {what} is not UTF-8", path.display())]
    NotUtf8 { path: PathBuf, what: &'static str },
    #[error("--add {origin}: {} is {len} bytes, more than the 4 GiB a newc archive holds", host.display())]
    TooLarge {
        origin: String,
        host: PathBuf,
        len: u64,
    },
    #[error("--add {origin}: {} is not a file, folder or symlink", host.display())]
    NotAFile { origin: String, host: PathBuf },
    #[error("--add {origin}: the guest path /init is hvtrace's own /init (it runs the command and reports its exit status); choose another guest path")]
    InitPath { origin: String },
    #[error("--add {origin}: a file cannot take the place of the guest's root folder")]
    RootPath { origin: String },
    #[error("--add {origin}: the guest path {guest} is in {mount}, where hvtrace's /init mounts {fs} at boot: it would be hidden; choose another guest path")]
    UnderMount {
        origin: String,
        guest: String,
        mount: &'static str,
        fs: &'static str,
    },
    #[error("--add: the added files are too large for the guest's memory: a {layer_mib:.1} MiB layer on the {base_mib:.1} MiB initramfs needs {needed_mib:.1} MiB of guest memory (the initramfs as loaded, and the added files once unpacked into the RAM root file system), more than half of --memory {memory_mib} (the other half is the kernel's and the command's); use --memory {suggested_mib} or more")]
    TooLargeForMemory {
        layer_mib: f64,
        base_mib: f64,
        needed_mib: f64,
        memory_mib: u32,
        suggested_mib: u64,
    },
    #[error(transparent)]
    Io(#[from] IoContext),
    #[error(transparent)]
    Deps(#[from] ElfDepsError),
}

type Result<T> = std::result::Result<T, AddError>;

/// Mount points of hvtrace's `/init`: what the layer puts under them is
/// hidden by the file system mounted there at boot.
const INIT_MOUNTS: [(&str, &str); 4] = [
    ("/proc", "proc"),
    ("/sys", "sysfs"),
    ("/dev", "devtmpfs"),
    ("/tmp", "tmpfs"),
];

/// Combined initramfs kept in the cache; older ones go when a new one is made.
const KEEP_COMBINED: usize = 8;

/// One `--add`: a host file or folder and where it goes in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSpec {
    pub host: PathBuf,
    pub guest: String,
}

impl AddSpec {
    /// `HOST_PATH[:GUEST_PATH]`. The guest path is the text after the last
    /// `:` when it is absolute (so a host path may hold `:`); without it,
    /// the host path made absolute (the same path as on the host).
    pub fn parse(spec: &str) -> Result<AddSpec> {
        let (host, guest) = match spec.rsplit_once(':') {
            Some((h, g)) if g.starts_with('/') => (h, Some(g)),
            Some((_, "")) => {
                return Err(AddError::EmptyGuestPath { spec: spec.into() });
            }
            _ => (spec, None),
        };
        if host.is_empty() {
            return Err(AddError::EmptyHostPath { spec: spec.into() });
        }
        let host = PathBuf::from(host);
        let guest_text = match guest {
            Some(g) => g.to_string(),
            None => {
                let abs = std::env::current_dir()
                    .map_err(io("the current folder"))?
                    .join(&host);
                abs.to_str()
                    .ok_or_else(|| AddError::SpecNotUtf8 { spec: spec.into() })?
                    .to_string()
            }
        };
        let Some(guest) = normalize_guest(&guest_text) else {
            return Err(AddError::NotAbsolute {
                spec: spec.into(),
                guest: guest_text,
            });
        };
        Ok(AddSpec { host, guest })
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { host: PathBuf, mode: u32, size: u64 },
    Symlink { target: String },
}

/// The layer's entries by guest path, and the `--add` each came from.
#[derive(Default)]
struct Layer {
    entries: BTreeMap<String, (Entry, String)>,
}

impl Layer {
    fn insert(&mut self, guest: String, entry: Entry, origin: &str) -> Result<()> {
        check_guest_path(&guest, &entry, origin)?;
        if let Some((old, old_origin)) = self.entries.get(&guest) {
            let same = match (old, &entry) {
                (Entry::Dir, Entry::Dir) => true,
                (Entry::File { host: a, .. }, Entry::File { host: b, .. }) => {
                    a.canonicalize().ok() == b.canonicalize().ok()
                }
                _ => false,
            };
            if !same {
                return Err(AddError::GivenTwice {
                    origin: origin.into(),
                    guest,
                    other: old_origin.clone(),
                });
            }
            return Ok(());
        }
        self.entries.insert(guest, (entry, origin.to_string()));
        Ok(())
    }

    /// Walks one `--add` (folders recursively; symlinks inside a folder
    /// stay symlinks, a symlink given itself is followed).
    fn add_spec(&mut self, spec: &AddSpec, origin: &str) -> Result<()> {
        let meta = std::fs::metadata(&spec.host).map_err(|err| AddError::Host {
            origin: origin.into(),
            host: spec.host.clone(),
            err,
        })?;
        self.add_path(&spec.host, spec.guest.clone(), &meta, origin)
    }

    fn add_path(
        &mut self,
        host: &Path,
        guest: String,
        meta: &std::fs::Metadata,
        origin: &str,
    ) -> Result<()> {
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(host)
                .map_err(io(format!("reading the symlink {}", host.display())))?;
            let target = target
                .to_str()
                .ok_or_else(|| AddError::NotUtf8 {
                    path: host.to_path_buf(),
                    what: "the symlink's target",
                })?
                .to_string();
            self.insert(guest, Entry::Symlink { target }, origin)
        } else if kind.is_file() {
            if meta.len() > u64::from(u32::MAX) {
                return Err(AddError::TooLarge {
                    origin: origin.into(),
                    host: host.to_path_buf(),
                    len: meta.len(),
                });
            }
            let mode = meta.permissions().mode() & 0o7777;
            let entry = Entry::File {
                host: host.to_path_buf(),
                mode,
                size: meta.len(),
            };
            self.insert(guest, entry, origin)
        } else if kind.is_dir() {
            if guest != "/" {
                self.insert(guest.clone(), Entry::Dir, origin)?;
            }
            let mut children: Vec<_> = std::fs::read_dir(host)
                .map_err(io(format!("reading the folder {}", host.display())))?
                .collect::<std::io::Result<_>>()
                .map_err(io(format!("reading the folder {}", host.display())))?;
            children.sort_by_key(|c| c.file_name());
            for child in children {
                let name = child.file_name();
                let name = name.to_str().ok_or_else(|| AddError::NotUtf8 {
                    path: child.path(),
                    what: "a file name",
                })?;
                let meta = child
                    .metadata()
                    .map_err(io(format!("reading {}", child.path().display())))?;
                let child_guest = format!("{}/{name}", guest.trim_end_matches('/'));
                self.add_path(&child.path(), child_guest, &meta, origin)?;
            }
            Ok(())
        } else {
            Err(AddError::NotAFile {
                origin: origin.into(),
                host: host.to_path_buf(),
            })
        }
    }

    /// Bytes of the uncompressed newc layer (headers, names, data, padding).
    fn archive_bytes(&self) -> u64 {
        let entry = |name: &str, data: u64| 110 + pad4(name.len() as u64 + 1) + pad4(data);
        self.entries
            .iter()
            .map(|(guest, (e, _))| match e {
                Entry::Dir => entry(guest, 0),
                Entry::File { size, .. } => entry(guest, *size),
                Entry::Symlink { target } => entry(guest, target.len() as u64),
            })
            .sum()
    }
}

fn pad4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

/// Refuses guest paths that would break or lose to hvtrace's own `/init`.
fn check_guest_path(guest: &str, entry: &Entry, origin: &str) -> Result<()> {
    if guest == "/init" {
        return Err(AddError::InitPath {
            origin: origin.into(),
        });
    }
    if guest == "/" && !matches!(entry, Entry::Dir) {
        return Err(AddError::RootPath {
            origin: origin.into(),
        });
    }
    for (mount, fs) in INIT_MOUNTS {
        let under = guest
            .strip_prefix(mount)
            .is_some_and(|rest| rest.starts_with('/'));
        if under || (guest == mount && !matches!(entry, Entry::Dir)) {
            return Err(AddError::UnderMount {
                origin: origin.into(),
                guest: guest.into(),
                mount,
                fs,
            });
        }
    }
    Ok(())
}

/// Builds (or finds in the cache) the base initramfs followed by the
/// layer of `specs`; refuses a layer the guest's `memory_mib` cannot hold.
pub fn combined_initrd(base: &Path, specs: &[String], memory_mib: u32) -> Result<PathBuf> {
    combined_initrd_in(&cache::root().join("added"), base, specs, memory_mib)
}

/// [`combined_initrd`] with its cache folder given.
fn combined_initrd_in(
    dir: &Path,
    base: &Path,
    specs: &[String],
    memory_mib: u32,
) -> Result<PathBuf> {
    let mut layer = Layer::default();
    for text in specs {
        let spec = AddSpec::parse(text)?;
        layer.add_spec(&spec, text)?;
    }
    let added: BTreeMap<String, PathBuf> = layer
        .entries
        .iter()
        .filter_map(|(g, (e, _))| match e {
            Entry::File { host, .. } => Some((g.clone(), host.clone())),
            _ => None,
        })
        .collect();
    let roots: Vec<Placed> = added
        .iter()
        .map(|(guest, host)| Placed {
            guest: guest.clone(),
            host: host.clone(),
        })
        .collect();
    let deps = Resolver::new().dependencies(&roots, &added)?;
    for dep in &deps {
        let meta =
            std::fs::metadata(&dep.host).map_err(io(format!("reading {}", dep.host.display())))?;
        let entry = Entry::File {
            host: dep.host.clone(),
            mode: meta.permissions().mode() & 0o7777,
            size: meta.len(),
        };
        layer.insert(
            dep.guest.clone(),
            entry,
            "(a library or interpreter of an added program)",
        )?;
    }
    // Every folder above an entry, for the kernel creates no parents.
    let parents: BTreeSet<String> = layer
        .entries
        .keys()
        .flat_map(|g| {
            let mut dirs = Vec::new();
            let mut at = g.as_str();
            while let Some((dir, _)) = at.rsplit_once('/') {
                if dir.is_empty() {
                    break;
                }
                dirs.push(dir.to_string());
                at = dir;
            }
            dirs
        })
        .collect();
    for dir in parents {
        layer.insert(dir, Entry::Dir, "(a parent folder)")?;
    }

    let base_len = std::fs::metadata(base)
        .map_err(io(format!("reading {}", base.display())))?
        .len();
    check_fits(base_len, layer.archive_bytes(), memory_mib)?;

    let key = content_key(base, &layer)?;
    let path = dir.join(format!("{key}.img"));
    let files = layer
        .entries
        .values()
        .filter(|(e, _)| matches!(e, Entry::File { .. }))
        .count();
    let summary = format!(
        "{files} files ({} from added programs' dynamic sections), {:.1} MiB",
        deps.len(),
        layer.archive_bytes() as f64 / (1u64 << 20) as f64
    );
    if path.is_file() {
        eprintln!(
            "hvtrace: add: {summary}; cached initramfs {}",
            path.display()
        );
        return Ok(path);
    }
    let combined = build_combined(base, &layer)?;
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let tmp = dir.join(format!(".tmp-{key}-{}", std::process::id()));
    std::fs::write(&tmp, &combined).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))?;
    prune_old(dir, KEEP_COMBINED);
    eprintln!("hvtrace: add: {summary}; initramfs {}", path.display());
    Ok(path)
}

/// The guest must hold the initramfs as loaded (base and layer, the layer
/// counted uncompressed) and the added files once unpacked into its RAM
/// root file system, in at most half of its memory: the other half is the
/// kernel's and the command's.
fn check_fits(base_len: u64, layer_bytes: u64, memory_mib: u32) -> Result<()> {
    const MIB: u64 = 1 << 20;
    let needed = base_len + 2 * layer_bytes;
    let budget = u64::from(memory_mib) * MIB / 2;
    if needed > budget {
        let mib = |b: u64| b as f64 / MIB as f64;
        return Err(AddError::TooLargeForMemory {
            layer_mib: mib(layer_bytes),
            base_mib: mib(base_len),
            needed_mib: mib(needed),
            memory_mib,
            suggested_mib: (2 * needed).div_ceil(MIB),
        });
    }
    Ok(())
}

/// SHA-256 of the base's content and of every entry's guest path, kind,
/// mode and content (16 hex digits).
fn content_key(base: &Path, layer: &Layer) -> Result<String> {
    let mut text = format!(
        "layer-v1 base {}\n",
        cache::sha256_file(base).map_err(io(format!("reading {}", base.display())))?
    );
    for (guest, (entry, _)) in &layer.entries {
        let line = match entry {
            Entry::Dir => format!("dir {guest}\n"),
            Entry::File { host, mode, .. } => format!(
                "file {guest} {mode:o} {}\n",
                cache::sha256_file(host).map_err(io(format!("reading {}", host.display())))?
            ),
            Entry::Symlink { target } => format!("symlink {guest} {target}\n"),
        };
        text.push_str(&line);
    }
    Ok(cache::sha256_hex(text.as_bytes())[..16].to_string())
}

/// The base's bytes, zeros to a 4-byte boundary (where the kernel looks
/// for the next archive), then the gzip-compressed layer.
fn build_combined(base: &Path, layer: &Layer) -> Result<Vec<u8>> {
    let mut archive = NewcArchive::default();
    // Folders first (sorted, so a parent precedes its children).
    for (guest, (entry, _)) in &layer.entries {
        if matches!(entry, Entry::Dir) {
            archive.dir(&guest[1..]);
        }
    }
    for (guest, (entry, _)) in &layer.entries {
        match entry {
            Entry::Dir => {}
            Entry::File { host, mode, .. } => {
                let data =
                    std::fs::read(host).map_err(io(format!("reading {}", host.display())))?;
                archive.file(&guest[1..], *mode, &data);
            }
            Entry::Symlink { target } => archive.symlink(&guest[1..], target),
        }
    }
    let mut out = std::fs::read(base).map_err(io(format!("reading {}", base.display())))?;
    out.resize(out.len().div_ceil(4) * 4, 0);
    out.extend_from_slice(&gzip(&archive.finish()).map_err(io("compressing the added layer"))?);
    Ok(out)
}

fn prune_old(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(i64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "img"))
        .filter_map(|e| Some((e.metadata().ok()?.mtime(), e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_splits_at_an_absolute_guest_path() {
        let s = AddSpec::parse("./build/t:/opt/t").unwrap();
        assert_eq!(s.host, PathBuf::from("./build/t"));
        assert_eq!(s.guest, "/opt/t");
        let s = AddSpec::parse("/a:b/c").unwrap();
        assert_eq!(s.host, PathBuf::from("/a:b/c"));
        assert_eq!(s.guest, "/a:b/c");
        let s = AddSpec::parse("/x/y:/opt/./z/../w//").unwrap();
        assert_eq!(s.guest, "/opt/w");
        assert!(AddSpec::parse(":/opt").is_err());
        assert!(AddSpec::parse("/x:").is_err());
    }

    #[test]
    fn init_and_mounted_folders_are_refused() {
        let file = Entry::Symlink { target: "x".into() };
        assert!(check_guest_path("/init", &file, "a").is_err());
        assert!(check_guest_path("/tmp/x", &file, "a").is_err());
        assert!(check_guest_path("/proc", &file, "a").is_err());
        assert!(check_guest_path("/dev", &Entry::Dir, "a").is_ok());
        assert!(check_guest_path("/devices/x", &file, "a").is_ok());
        assert!(check_guest_path("/opt/init", &file, "a").is_ok());
    }

    /// A folder with a file, a symlink and a program: the combined file is
    /// the base, zero padding to 4 bytes and a gzip stream that GNU cpio
    /// lists with every parent folder first and the symlink kept; the
    /// same inputs give the same cached file.
    #[test]
    fn layer_follows_the_base_and_is_cached() {
        let tmp = std::env::temp_dir().join(format!("hvtrace-add-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("tree/sub")).unwrap();
        std::fs::write(tmp.join("tree/sub/a.txt"), b"abc").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", tmp.join("tree/link")).unwrap();
        let base = tmp.join("base.img");
        std::fs::write(&base, b"070701 not really a base, 27 b").unwrap();
        let specs = vec![format!("{}:/opt/x/tree", tmp.join("tree").display())];
        let cache_dir = tmp.join("cache");
        let path = combined_initrd_in(&cache_dir, &base, &specs, 512).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(&std::fs::read(&base).unwrap()));
        assert_eq!(&bytes[30..32], &[0, 0]);
        assert_eq!(&bytes[32..34], &[0x1f, 0x8b]);
        let mut layer = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&bytes[32..])
            .read_to_end(&mut layer)
            .unwrap();
        let mut cpio = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the cpio tool (scripts/install-deps.sh installs it)");
        use std::io::Write;
        cpio.stdin.take().unwrap().write_all(&layer).unwrap();
        let out = cpio.wait_with_output().unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        let expected = [
            " opt",
            " opt/x",
            " opt/x/tree",
            " opt/x/tree/sub",
            " opt/x/tree/link -> sub/a.txt",
            " opt/x/tree/sub/a.txt",
        ];
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{listing}");
        for (line, end) in lines.iter().zip(expected) {
            assert!(line.ends_with(end), "{line} should end with {end}");
        }
        assert!(lines[4].starts_with('l') && lines[0].starts_with('d'));
        let again = combined_initrd_in(&cache_dir, &base, &specs, 512).unwrap();
        assert_eq!(again, path);
        // Another content is another key.
        std::fs::write(tmp.join("tree/sub/a.txt"), b"abd").unwrap();
        let other = combined_initrd_in(&cache_dir, &base, &specs, 512).unwrap();
        assert_ne!(other, path);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn memory_bound_is_half_the_guest() {
        // 64 MiB of guest: 32 MiB for base + twice the layer.
        assert!(check_fits(8 << 20, 12 << 20, 64).is_ok());
        let e = check_fits(8 << 20, 13 << 20, 64).unwrap_err().to_string();
        assert!(e.contains("--memory 68 or more"), "{e}");
    }
}
