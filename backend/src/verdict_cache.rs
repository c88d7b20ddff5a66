//! Remembers `--backend auto`'s verdict (does /dev/kvm run guest code
//! natively?) so that only the first call of a host boot pays for the probe
//! guest.
//!
//! The verdict is stored with everything that decides it: the host's boot id,
//! the identity of /dev/kvm (device, inode, rdev), of every loaded `kvm*`
//! module (sysfs inode, srcversion, version, size, parameter values) and of
//! the probe itself (hvtrace's version, iterations, threshold). Any
//! difference is a miss. So is a file that cannot be read, parsed or whose
//! checksum does not match. Writes go to a temporary file renamed over the
//! old one, so concurrent hvtrace processes see either file whole.
//!
//! Only clear verdicts are stored: a failed probe (nothing measured) is not,
//! nor a loop speed between the threshold and [`EMULATED_MIN_NS`], where a
//! busy native host that was preempted mid-probe could land.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Bumped when the file layout or the meaning of its fields changes.
const FORMAT: u32 = 1;

/// Environment variable that forces a fresh probe (any value but empty or `0`).
pub const REPROBE_ENV: &str = "HVTRACE_REPROBE";

/// An "emulated" verdict is stored only at or above this many ns per loop
/// iteration (10× the probe's threshold; KVM-PVM measures ~460–1400 ns).
pub const EMULATED_MIN_NS: f64 = 10.0 * vmm::probe::NATIVE_THRESHOLD_NS;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{path} is empty")]
    EmptyBootId { path: PathBuf },
}

/// What decides the probe's verdict on this host, as canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub boot_id: String,
    pub kvm_device: String,
    pub kvm_modules: String,
    pub prober: String,
}

impl HostKey {
    /// Reads the key of the running host (a few dozen small sysfs reads)
    /// for hvtrace `version`.
    pub fn read(version: &str) -> Result<Self, CacheError> {
        Self::read_from(
            Path::new("/proc/sys/kernel/random/boot_id"),
            Path::new("/dev/kvm"),
            Path::new("/sys/module"),
            version,
        )
    }

    /// Reads the key from the given boot-id file, device node and sysfs
    /// module folder, for hvtrace `version`.
    pub fn read_from(
        boot_id: &Path,
        dev_kvm: &Path,
        sys_module: &Path,
        version: &str,
    ) -> Result<Self, CacheError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Read { path, source }
        };
        let id = std::fs::read_to_string(boot_id).map_err(read_err(boot_id))?;
        let id = id.trim();
        if id.is_empty() {
            return Err(CacheError::EmptyBootId {
                path: boot_id.to_path_buf(),
            });
        }
        let dev = std::fs::metadata(dev_kvm).map_err(read_err(dev_kvm))?;
        let kvm_device = format!("dev={} ino={} rdev={}", dev.dev(), dev.ino(), dev.rdev());
        Ok(Self {
            boot_id: id.to_string(),
            kvm_device,
            kvm_modules: kvm_modules(sys_module)?,
            prober: format!(
                "hvtrace {version} format {FORMAT} iterations {} threshold {}",
                vmm::probe::PROBE_ITERATIONS,
                vmm::probe::NATIVE_THRESHOLD_NS
            ),
        })
    }

    fn text(&self) -> String {
        format!(
            "boot_id {}\nkvm_device {}\n{}prober {}\n",
            self.boot_id, self.kvm_device, self.kvm_modules, self.prober
        )
    }
}

/// One line per `kvm*` module in sorted order, with its sysfs inode (new on
/// every load), srcversion/version/coresize where sysfs has them (loadable
/// modules) and every readable parameter value.
fn kvm_modules(sys_module: &Path) -> Result<String, CacheError> {
    let entries = std::fs::read_dir(sys_module).map_err(|source| CacheError::Read {
        path: sys_module.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("kvm"))
        .collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let dir = sys_module.join(&name);
        let ino = std::fs::metadata(&dir).map(|m| m.ino()).unwrap_or(0);
        let _ = write!(out, "module {name} ino={ino}");
        for attr in ["srcversion", "version", "coresize", "initstate"] {
            if let Ok(v) = std::fs::read_to_string(dir.join(attr)) {
                let _ = write!(out, " {attr}={}", v.trim());
            }
        }
        let mut params: Vec<(String, String)> = std::fs::read_dir(dir.join("parameters"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let value = std::fs::read_to_string(e.path()).ok()?;
                Some((e.file_name().into_string().ok()?, value.trim().to_string()))
            })
            .collect();
        params.sort();
        for (p, v) in params {
            let _ = write!(out, " {p}={v}");
        }
        out.push('\n');
    }
    Ok(out)
}

/// The probe's finding, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub native: bool,
    /// NaN when the probe guest did not run.
    pub ns_per_iteration: f64,
    pub reason: String,
}

impl Verdict {
    /// Whether this verdict is clear enough to be reused for the whole boot.
    pub fn cacheable(&self) -> bool {
        let ns = self.ns_per_iteration;
        ns.is_finite()
            && if self.native {
                ns <= vmm::probe::NATIVE_THRESHOLD_NS
            } else {
                ns >= EMULATED_MIN_NS
            }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    format: u32,
    key: String,
    verdict: Verdict,
}

/// Where a verdict came from.
#[derive(Debug)]
pub enum Source {
    /// The stored verdict of this boot.
    Cache,
    /// The probe ran now; `stored` says whether the verdict was saved, and
    /// why not otherwise.
    Probe { stored: Result<(), String> },
}

/// The cache file in the cache folder `root`.
pub fn path_in(root: &Path) -> PathBuf {
    root.join("backend").join("kvm-probe.json")
}

/// The stored verdict for `key`: `Ok(None)` when there is none for this key
/// (another boot, module, device or hvtrace version).
pub fn load(path: &Path, key: &HostKey) -> Result<Option<Verdict>, CacheError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = |why: &str| CacheError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    // First line: SHA-256 of the rest, which is the JSON entry.
    let (sum, body) = text
        .split_once('\n')
        .ok_or_else(|| corrupt("no checksum line"))?;
    if sha256_hex(body.as_bytes()) != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let entry: Entry = serde_json::from_str(body).map_err(|e| corrupt(&e.to_string()))?;
    if entry.format != FORMAT || entry.key != key.text() {
        return Ok(None);
    }
    Ok(Some(entry.verdict))
}

/// Stores `verdict` for `key`, atomically (temporary file, then rename).
pub fn store(path: &Path, key: &HostKey, verdict: &Verdict) -> Result<(), CacheError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Write { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let entry = Entry {
        format: FORMAT,
        key: key.text(),
        verdict: verdict.clone(),
    };
    let body = serde_json::to_string_pretty(&entry).map_err(|e| CacheError::Write {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let text = format!("{}\n{body}", sha256_hex(body.as_bytes()));
    let tmp = dir.join(format!(
        ".kvm-probe.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err(path))
}

/// The verdict for `key`: the stored one unless `reprobe`, else `probe()`'s,
/// stored when it is clear. A cache file that cannot be used is a miss.
pub fn decide(
    path: &Path,
    key: &HostKey,
    reprobe: bool,
    probe: impl FnOnce() -> Verdict,
) -> (Verdict, Source) {
    if !reprobe {
        if let Ok(Some(verdict)) = load(path, key) {
            return (verdict, Source::Cache);
        }
    }
    let verdict = probe();
    let stored = if verdict.cacheable() {
        store(path, key, &verdict).map_err(|e| with_causes(&e))
    } else {
        Err("verdict not clear enough to keep".into())
    };
    (verdict, Source::Probe { stored })
}

/// Hex SHA-256 of a byte string.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error and its causes, `: `-separated.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    text
}

/// Whether the environment asks for a fresh probe.
pub fn reprobe_requested() -> bool {
    std::env::var_os(REPROBE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// The hvtrace version the keys of these tests are read for.
    const VERSION: &str = "0.1.0";

    /// A fresh folder under the system's temporary folder, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "hvtrace-backend-cache-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn real_probe() -> Verdict {
        let p = vmm::probe_native_virtualization();
        Verdict {
            native: p.native,
            ns_per_iteration: p.ns_per_iteration,
            reason: p.reason,
        }
    }

    fn emulated() -> Verdict {
        Verdict {
            native: false,
            ns_per_iteration: 460.0,
            reason: "emulated".into(),
        }
    }

    /// A key of this host, or of a made-up one where there is no /dev/kvm.
    fn host_key() -> HostKey {
        HostKey::read(VERSION).unwrap_or_else(|_| HostKey {
            boot_id: "00000000-0000-0000-0000-000000000001".into(),
            kvm_device: "dev=6 ino=82 rdev=2792".into(),
            kvm_modules: "module kvm ino=1\n".into(),
            prober: "test".into(),
        })
    }

    #[test]
    fn host_key_reads_this_host() {
        if !Path::new("/dev/kvm").exists() {
            eprintln!("skipped: no /dev/kvm");
            return;
        }
        let key = HostKey::read(VERSION).unwrap();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert_eq!(key.boot_id, boot_id.trim());
        let rdev = std::fs::metadata("/dev/kvm").unwrap().rdev();
        assert!(key.kvm_device.ends_with(&format!("rdev={rdev}")));
        // /dev/kvm exists, so a kvm module (loadable or built in) is in sysfs.
        assert!(
            key.kvm_modules.starts_with("module kvm"),
            "{}",
            key.kvm_modules
        );
        assert!(key.prober.contains(VERSION));
        // Stable between two reads of the same boot.
        assert_eq!(key, HostKey::read(VERSION).unwrap());
    }

    #[test]
    fn second_call_hits_the_cache_with_the_probes_verdict() {
        let dir = TempDir::new("hit");
        let path = path_in(&dir.0);
        let key = host_key();
        let have_kvm = Path::new("/dev/kvm").exists();
        let probes = Cell::new(0);
        let probe = || {
            probes.set(probes.get() + 1);
            if have_kvm {
                real_probe()
            } else {
                emulated()
            }
        };
        let (first, source) = decide(&path, &key, false, probe);
        assert_eq!(probes.get(), 1);
        let Source::Probe { stored } = source else {
            panic!("empty cache hit: {source:?}");
        };
        if !first.cacheable() {
            // A failed or ambiguous probe is not kept; nothing more to check.
            assert!(stored.is_err());
            assert!(!path.exists());
            eprintln!("skipped: probe verdict not cacheable: {first:?}");
            return;
        }
        stored.unwrap();
        let (second, source) = decide(&path, &key, false, || {
            probes.set(probes.get() + 1);
            real_probe()
        });
        assert!(matches!(source, Source::Cache), "{source:?}");
        assert_eq!(probes.get(), 1, "the probe ran again");
        assert_eq!(second, first);

        // Asking for a fresh probe runs it even though the cache holds one.
        let (_, source) = decide(&path, &key, true, || {
            probes.set(probes.get() + 1);
            first.clone()
        });
        assert!(
            matches!(source, Source::Probe { stored: Ok(()) }),
            "{source:?}"
        );
        assert_eq!(probes.get(), 2);
    }

    #[test]
    fn corrupt_file_is_a_miss_and_is_rewritten() {
        let dir = TempDir::new("corrupt");
        let path = path_in(&dir.0);
        let key = host_key();
        store(&path, &key, &emulated()).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        assert_eq!(load(&path, &key).unwrap(), Some(emulated()));

        // A flipped verdict that still parses as JSON, a truncated file,
        // garbage, and an empty file.
        let flipped = good.replace("\"native\": false", "\"native\": true");
        assert_ne!(flipped, good);
        let truncated = good[..good.len() / 2].to_string();
        for bad in [
            flipped,
            truncated,
            "\u{0}\u{1}garbage".into(),
            String::new(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(load(&path, &key).is_err(), "accepted {bad:?}");
            let mut ran = false;
            let (verdict, source) = decide(&path, &key, false, || {
                ran = true;
                emulated()
            });
            assert!(ran, "a corrupt file was used: {bad:?}");
            assert!(
                matches!(source, Source::Probe { stored: Ok(()) }),
                "{source:?}"
            );
            assert_eq!(verdict, emulated());
            // Rewritten whole.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
            assert_eq!(load(&path, &key).unwrap(), Some(emulated()));
        }
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kvm-probe.json")]);
    }

    #[test]
    fn another_boot_module_or_device_is_a_miss() {
        let dir = TempDir::new("key");
        let path = path_in(&dir.0);
        let key = host_key();
        store(&path, &key, &emulated()).unwrap();
        let mut rebooted = key.clone();
        rebooted.boot_id = "6b1d0c8e-0000-4000-8000-000000000000".into();
        let mut reloaded = key.clone();
        reloaded.kvm_modules.push_str("module kvm_intel ino=4242\n");
        let mut recreated = key.clone();
        recreated.kvm_device.push('0');
        for other in [&rebooted, &reloaded, &recreated] {
            assert_eq!(load(&path, other).unwrap(), None);
            let mut ran = false;
            let (_, source) = decide(&path, other, false, || {
                ran = true;
                emulated()
            });
            assert!(ran && matches!(source, Source::Probe { stored: Ok(()) }));
            // The new boot's verdict replaced the old one.
            assert_eq!(load(&path, other).unwrap(), Some(emulated()));
            assert_eq!(load(&path, &key).unwrap(), None);
            store(&path, &key, &emulated()).unwrap();
        }
    }

    #[test]
    fn key_follows_the_boot_id_file() {
        let dir = TempDir::new("bootid");
        let boot = dir.0.join("boot_id");
        let sys = dir.0.join("module");
        std::fs::create_dir_all(sys.join("kvm/parameters")).unwrap();
        std::fs::write(sys.join("kvm/parameters/halt_poll_ns"), "200000\n").unwrap();
        std::fs::create_dir_all(sys.join("ext4")).unwrap();
        // Any existing file stands in for the device node.
        let dev = dir.0.join("kvm");
        std::fs::write(&dev, "").unwrap();
        std::fs::write(&boot, "aaaa\n").unwrap();
        let a = HostKey::read_from(&boot, &dev, &sys, VERSION).unwrap();
        assert_eq!(a.boot_id, "aaaa");
        assert!(a.kvm_modules.starts_with("module kvm ino="));
        assert!(a.kvm_modules.ends_with(" halt_poll_ns=200000\n"));
        assert!(!a.kvm_modules.contains("ext4"));
        std::fs::write(&boot, "bbbb\n").unwrap();
        let b = HostKey::read_from(&boot, &dev, &sys, VERSION).unwrap();
        assert_ne!(a.text(), b.text());
        // A changed module parameter changes the key too.
        std::fs::write(sys.join("kvm/parameters/halt_poll_ns"), "0\n").unwrap();
        let c = HostKey::read_from(&boot, &dev, &sys, VERSION).unwrap();
        assert_ne!(b.text(), c.text());
        std::fs::write(&boot, "\n").unwrap();
        assert!(matches!(
            HostKey::read_from(&boot, &dev, &sys, VERSION),
            Err(CacheError::EmptyBootId { .. })
        ));
    }

    #[test]
    fn concurrent_writers_never_expose_a_partial_file() {
        let dir = TempDir::new("race");
        let path = path_in(&dir.0);
        let key = host_key();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (path, key) = (&path, &key);
                s.spawn(move || {
                    for i in 0..200 {
                        let v = Verdict {
                            native: false,
                            ns_per_iteration: 1000.0 + f64::from(t * 1000 + i),
                            reason: "x".repeat(i as usize),
                        };
                        store(path, key, &v).unwrap();
                        // Whatever writer won last, the file is whole: its
                        // two fields come from one and the same write.
                        let got = load(path, key).unwrap().unwrap();
                        assert_eq!(got.ns_per_iteration % 1000.0, got.reason.len() as f64);
                    }
                });
            }
        });
        let names = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(names, 1, "temporary files left behind");
    }

    #[test]
    fn only_clear_verdicts_are_kept() {
        let v = |native, ns| Verdict {
            native,
            ns_per_iteration: ns,
            reason: String::new(),
        };
        assert!(v(true, 1.2).cacheable());
        assert!(v(false, 460.0).cacheable());
        assert!(!v(false, f64::NAN).cacheable());
        assert!(!v(false, 35.0).cacheable());
        let dir = TempDir::new("unclear");
        let path = path_in(&dir.0);
        let (_, source) = decide(&path, &host_key(), false, || v(false, f64::NAN));
        assert!(matches!(source, Source::Probe { stored: Err(_) }));
        assert!(!path.exists());
    }
}
