//! Remembers apt's answers (which version of a package it would fetch)
//! until one of apt's inputs changes. `apt-cache` rebuilds its package
//! cache in memory on every call where it cannot write it (a read-only
//! root, as in the stock-KVM harness's L1) and takes tens of seconds there
//! under TCG; the answer only changes with the package lists, apt's
//! configuration or dpkg's status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files and folders whose contents decide apt's answers.
const APT_INPUTS: &[&str] = &[
    "/var/lib/apt/lists",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences",
    "/etc/apt/preferences.d",
    "/etc/apt/apt.conf.d",
    "/var/lib/dpkg/status",
];

/// A fingerprint of apt's inputs: every file's path, size and modification
/// time (apt itself decides staleness of its cache the same way).
pub fn apt_state(inputs: &[&Path]) -> String {
    let mut lines = Vec::new();
    for input in inputs {
        let mut files = Vec::new();
        collect_files(input, &mut files);
        files.sort();
        for f in files {
            if let Ok(m) = std::fs::metadata(&f) {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                lines.push(format!("{} {} {mtime}", f.display(), m.len()));
            }
        }
    }
    crate::cache::sha256_hex(lines.join("\n").as_bytes())
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    collect_files(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        Err(_) if path.is_file() => out.push(path.to_path_buf()),
        Err(_) => {}
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Memo {
    state: String,
    answers: BTreeMap<String, String>,
}

/// Answers kept in one small JSON file; a stale or unreadable file is
/// simply ignored (the answer is then asked of apt again).
pub struct AptMemo {
    path: PathBuf,
    memo: Memo,
}

impl AptMemo {
    pub fn open(path: PathBuf) -> Self {
        let paths: Vec<&Path> = APT_INPUTS.iter().map(Path::new).collect();
        Self::open_with_state(path, apt_state(&paths))
    }

    pub fn open_with_state(path: PathBuf, state: String) -> Self {
        let memo = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
            .filter(|m| m.state == state)
            .unwrap_or(Memo {
                state,
                answers: BTreeMap::new(),
            });
        AptMemo { path, memo }
    }

    /// The remembered answer to `question`, or `ask()`'s (then remembered).
    pub fn get_or<E>(
        &mut self,
        question: &str,
        ask: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        if let Some(a) = self.memo.answers.get(question) {
            return Ok(a.clone());
        }
        let answer = ask()?;
        self.memo
            .answers
            .insert(question.to_string(), answer.clone());
        // Best effort: a cache folder that cannot be written only costs time.
        if let Ok(bytes) = serde_json::to_vec_pretty(&self.memo) {
            let tmp = self
                .path
                .with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("hvtrace-aptmemo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    #[test]
    fn answers_are_kept_until_apts_inputs_change() {
        let dir = temp_dir("keep");
        let lists = dir.0.join("lists");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("Packages"), "a").unwrap();
        let memo_path = dir.0.join("memo.json");
        let state = || apt_state(&[lists.as_path()]);

        let mut asked = 0;
        let mut m = AptMemo::open_with_state(memo_path.clone(), state());
        let a: Result<String, ()> = m.get_or("candidate x", || {
            asked += 1;
            Ok("1.0".into())
        });
        assert_eq!(a, Ok("1.0".to_string()));

        // A new process with the same inputs does not ask apt again.
        let mut m = AptMemo::open_with_state(memo_path.clone(), state());
        let a: Result<String, ()> = m.get_or("candidate x", || {
            asked += 1;
            Ok("2.0".into())
        });
        assert_eq!((a, asked), (Ok("1.0".to_string()), 1));

        // New package lists (another size): asked again.
        std::fs::write(lists.join("Packages"), "ab").unwrap();
        let mut m = AptMemo::open_with_state(memo_path, state());
        let a: Result<String, ()> = m.get_or("candidate x", || {
            asked += 1;
            Ok("2.0".into())
        });
        assert_eq!((a, asked), (Ok("2.0".to_string()), 2));
    }

    #[test]
    fn errors_are_not_remembered() {
        let dir = temp_dir("err");
        let path = dir.0.join("memo.json");
        let mut m = AptMemo::open_with_state(path.clone(), "s".into());
        let e: Result<String, &str> = m.get_or("q", || Err("no such package"));
        assert_eq!(e, Err("no such package"));
        let mut m = AptMemo::open_with_state(path, "s".into());
        let a: Result<String, &str> = m.get_or("q", || Ok("found".into()));
        assert_eq!(a, Ok("found".to_string()));
    }
}
