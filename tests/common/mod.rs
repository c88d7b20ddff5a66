//! Shared helpers of the end-to-end tests: guest images come from the
//! project's own `hvtrace image build`, never from files placed by hand.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Path of the `hvtrace` binary cargo built for these tests.
pub fn hvtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hvtrace"))
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds (or reuses from the cache) the default image of a kernel line
/// ("6.1" or "6.12") and returns its folder, which holds `vmlinuz`,
/// `initrd.img` and `manifest.json`.
pub fn image_dir(line: &str) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = hvtrace()
        .args(["image", "build", "--kernel-line", line])
        .output()
        .expect("run hvtrace image build");
    assert!(
        out.status.success(),
        "hvtrace image build --kernel-line {line} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let last = stdout
        .lines()
        .last()
        .expect("image build printed its folder");
    PathBuf::from(last.trim())
}
