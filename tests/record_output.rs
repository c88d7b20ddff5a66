//! `record -o DIR` refuses, before anything boots, a DIR it would fail to
//! write or would lose data in: a file in its place, a folder it cannot
//! write in, a folder holding a trace already (unless `--force`). On both
//! engines, with one message and exit status 125.

mod common;

use std::process::Output;

fn record(backend: &str, out: &std::path::Path, extra: &[&str]) -> Output {
    let image = common::image_dir("6.1");
    common::hvtrace()
        .args(["record", "--backend", backend, "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(extra)
        .arg("-o")
        .arg(out)
        .args(["--", "/bin/true"])
        .output()
        .expect("run hvtrace record")
}

#[test]
fn bad_output_folders_are_refused_before_anything_boots() {
    let dir = std::env::temp_dir().join(format!("hvtrace-record-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // An earlier trace: its metadata must survive a refused run.
    let old = dir.join("old");
    std::fs::create_dir_all(old.join("kernel")).unwrap();
    std::fs::write(old.join("kernel/metadata"), b"an earlier trace").unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let cases: [(&std::path::Path, &str); 3] = [
        (&old, "holds a trace already"),
        (&file, "exists and is not a folder"),
        // Not writable even by root.
        (std::path::Path::new("/sys/kernel"), "cannot write in it"),
    ];
    for backend in ["qemu", "kvm"] {
        if backend == "kvm" && !std::path::Path::new("/dev/kvm").exists() {
            println!("skipped for kvm: no /dev/kvm here");
            continue;
        }
        for (out, says) in cases {
            let t = std::time::Instant::now();
            let o = record(backend, out, &[]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(125), "{backend} {out:?}: {err}");
            assert!(err.contains(says), "{backend} {out:?}: {err}");
            assert!(
                t.elapsed() < std::time::Duration::from_secs(20),
                "refused, not booted"
            );
        }
    }
    assert_eq!(
        std::fs::read(old.join("kernel/metadata")).unwrap(),
        b"an earlier trace"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
