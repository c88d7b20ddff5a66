//! `--add`: a program built on the host at test time (dynamically linked
//! against the host's glibc and a library of its own found through
//! `RUNPATH=$ORIGIN/../lib`), put into the guest by hvtrace and traced
//! there on both kernel lines; its own syscall counts must equal the
//! trace's. And the refusals, each before anything boots (exit 125).

mod common;
mod record_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

long addtest_getpid(void);

/* N rounds of getpid (in libaddtest.so), openat+read+close of the data
   file, write of 8 bytes to /dev/null; counted between the openat and
   the close of /dev/null, as /bin/syscalls does. */
int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 10;
    const char *data = argc > 2 ? argv[2] : "/opt/addtest/share/current";
    long getpid_n = 0, openat_n = 0, read_n = 0, close_n = 0, write_n = 0, bytes = 0;
    char buf[256];
    pid_t self = getpid(); /* before the counted window */
    long devnull = syscall(SYS_openat, AT_FDCWD, "/dev/null", O_WRONLY);
    if (devnull < 0) return 2;
    openat_n++;
    for (long i = 0; i < rounds; i++) {
        if (addtest_getpid() != self) return 3;
        getpid_n++;
        long fd = syscall(SYS_openat, AT_FDCWD, data, O_RDONLY);
        if (fd < 0) return 4;
        openat_n++;
        long n = syscall(SYS_read, fd, buf, sizeof buf);
        if (n < 0) return 5;
        read_n++;
        bytes += n;
        syscall(SYS_close, fd);
        close_n++;
        syscall(SYS_write, devnull, buf, 8);
        write_n++;
    }
    syscall(SYS_close, devnull);
    close_n++;
    printf("COUNTS {\"getpid\":%ld,\"openat\":%ld,\"read\":%ld,\"close\":%ld,\"write\":%ld,\"bytes\":%ld}\n",
           getpid_n, openat_n, read_n, close_n, write_n, bytes);
    return 0;
}
"#;

const LIBRARY: &str = r#"
#include <sys/syscall.h>
#include <unistd.h>
long addtest_getpid(void) { return syscall(SYS_getpid); }
"#;

/// What the test built in its temp folder.
struct Built {
    root: PathBuf,
    program: PathBuf,
    data: PathBuf,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn gcc(args: &[&str]) {
    let out = Command::new("gcc").args(args).output().unwrap_or_else(|e| {
        panic!("this test compiles a C program with the host's gcc ({e}); scripts/install-deps.sh installs gcc")
    });
    assert!(
        out.status.success(),
        "gcc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ROOT/bin/addtest` linked against `ROOT/lib/libaddtest.so` (found by
/// its RUNPATH `$ORIGIN/../lib`) and glibc; `ROOT/share/data.txt` and
/// the symlink `ROOT/share/current` to it, which the program reads.
fn build(tag: &str) -> Built {
    let root = std::env::temp_dir().join(format!("hvtrace-add-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["src", "bin", "lib"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let p = |rel: &str| root.join(rel).to_str().unwrap().to_string();
    std::fs::write(root.join("src/addtest.c"), PROGRAM).unwrap();
    std::fs::write(root.join("src/libaddtest.c"), LIBRARY).unwrap();
    gcc(&[
        "-O2",
        "-shared",
        "-fPIC",
        "-o",
        &p("lib/libaddtest.so"),
        &p("src/libaddtest.c"),
    ]);
    gcc(&[
        "-O2",
        "-o",
        &p("bin/addtest"),
        &p("src/addtest.c"),
        &format!("-L{}", p("lib")),
        "-laddtest",
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib",
    ]);
    std::fs::create_dir_all(root.join("share")).unwrap();
    let data = root.join("share/data.txt");
    std::fs::write(&data, "data of the added program, read each round\n").unwrap();
    std::os::unix::fs::symlink("data.txt", root.join("share/current")).unwrap();
    Built {
        program: root.join("bin/addtest"),
        data,
        root,
    }
}

/// The program must really be dynamic: it has an interpreter, and its
/// dynamic section needs libaddtest.so and libc.so.6.
fn assert_dynamic(program: &Path) {
    let out = Command::new("readelf")
        .args(["-l", "-d"])
        .arg(program)
        .output()
        .expect("readelf (binutils, with gcc) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Requesting program interpreter"), "{text}");
    assert!(text.contains("Shared library: [libaddtest.so]"), "{text}");
    assert!(text.contains("Shared library: [libc.so.6]"), "{text}");
    assert!(text.contains("(RUNPATH)"), "{text}");
}

fn traced_counts_match(backend: &str, line: &str) {
    let built = build(&format!("trace-{backend}-{line}"));
    assert_dynamic(&built.program);
    let rounds: i64 = 40;
    let add_prog = format!("{}:/opt/addtest/bin/addtest", built.program.display());
    // A folder: its symlink stays a symlink, to the file beside it.
    let add_data = format!(
        "{}:/opt/addtest/share",
        built.data.parent().unwrap().display()
    );
    let started = std::time::Instant::now();
    let r = record_support::record_on(
        backend,
        line,
        1,
        "add",
        &["--add", &add_prog, "--add", &add_data],
        &["/opt/addtest/bin/addtest", &rounds.to_string()],
    );
    println!(
        "{backend} {line}: record with --add took {:.1} s wall",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(r.status, 0, "{}", r.console);
    assert!(r.console.contains("hvtrace: add: "), "{}", r.console);
    let counts = r.counts();
    let pid = r
        .events
        .iter()
        .find(|e| {
            e.name == "sched_process_exec" && e.text("filename") == "/opt/addtest/bin/addtest"
        })
        .map(|e| e.tid)
        .expect("exec of /opt/addtest/bin/addtest traced");
    let mine: Vec<&record_support::Ev> = r
        .events
        .iter()
        .filter(|e| e.tid == pid && e.name.starts_with("syscall_"))
        .collect();
    // The guest's loader opened the libraries where hvtrace placed them:
    // libaddtest.so through RUNPATH ($ORIGIN is /opt/addtest/bin), libc in
    // the loader's first system folder (the guest has no ld.so.cache).
    for lib in [
        "/opt/addtest/bin/../lib/libaddtest.so",
        "/lib/x86_64-linux-gnu/libc.so.6",
    ] {
        let at = mine
            .iter()
            .position(|e| e.name == "syscall_entry_openat" && e.text("filename") == lib)
            .unwrap_or_else(|| panic!("the loader did not try {lib}"));
        let ret = mine[at + 1..]
            .iter()
            .find(|e| e.name == "syscall_exit_openat")
            .map(|e| e.int("ret"))
            .expect("its return");
        assert!(ret >= 0, "openat({lib}) returned {ret}");
    }
    let (traced, window, _) = record_support::counted_window(&mine);
    let own: BTreeMap<String, u64> = counts
        .iter()
        .filter(|(k, _)| k.as_str() != "bytes")
        .map(|(k, v)| (k.clone(), v.parse().unwrap()))
        .collect();
    assert_eq!(traced, own, "traced entries vs the program's own COUNTS");
    assert_eq!(own["getpid"], rounds as u64);
    // What it read is the added file, every round: the trace's read
    // returns sum to the program's count and to the host file's size.
    let read_bytes: i64 = window
        .iter()
        .filter(|e| e.name == "syscall_exit_read")
        .map(|e| e.int("ret"))
        .sum();
    let size = std::fs::metadata(&built.data).unwrap().len() as i64;
    assert_eq!(read_bytes, counts["bytes"].parse::<i64>().unwrap());
    assert_eq!(read_bytes, size * rounds);
    println!(
        "{backend} {line}: {} syscall entries of the added program in its window, each name's count equal to its own: {own:?}",
        own.values().sum::<u64>()
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn added_program_traced_6_1() {
    traced_counts_match("qemu", "6.1");
}

#[test]
fn added_program_traced_6_12() {
    traced_counts_match("qemu", "6.12");
}

/// The same on the KVM monitor (its own initrd loading): here with
/// hardware virtualization, else in the stock-KVM harness's L1, which
/// sees the test's temp folder and the cache at the same paths. One line
/// here (the newer): the loading is the monitor's, not the kernel's.
#[test]
fn added_program_traced_on_kvm_6_12() {
    if common::hvtrace_on_kvm().is_none() {
        return;
    }
    let _machine = common::machine_lock(false);
    traced_counts_match("kvm", "6.12");
}

/// Runs hvtrace `args` on the 6.1 image and returns (status, stderr,
/// seconds); it must fail before any guest boots.
fn refused(subcommand: &str, opts: &[&str]) -> (i32, String) {
    let image = common::image_dir("6.1");
    let started = std::time::Instant::now();
    let out = common::hvtrace()
        .args([subcommand, "--backend", "qemu"])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(opts)
        .args(["--", "/bin/true"])
        .output()
        .expect("run hvtrace");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("HVTRACE-EXIT") && !stderr.contains("Linux version"),
        "a guest booted: {stderr}"
    );
    println!(
        "{subcommand} {opts:?}: exit {:?} in {:.2} s: {}",
        out.status.code(),
        started.elapsed().as_secs_f64(),
        stderr.trim()
    );
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn refusals_before_boot() {
    let built = build("refused");
    let prog = built.program.to_str().unwrap();

    let (status, err) = refused("run", &["--add", "/nonexistent/hvtrace-add-test"]);
    assert_eq!(status, 125);
    assert!(
        err.contains("--add /nonexistent/hvtrace-add-test: /nonexistent/hvtrace-add-test: No such file or directory"),
        "{err}"
    );

    let (status, err) = refused("run", &["--add", &format!("{prog}:/init")]);
    assert_eq!(status, 125);
    assert!(
        err.contains("the guest path /init is hvtrace's own /init"),
        "{err}"
    );

    let (status, err) = refused("run", &["--add", &format!("{prog}:/tmp/addtest")]);
    assert_eq!(status, 125);
    assert!(
        err.contains("/tmp/addtest is in /tmp, where hvtrace's /init mounts tmpfs"),
        "{err}"
    );

    // Linked against a library that is then deleted: nothing on the host
    // (RUNPATH, ld.so.cache, system folders) has it.
    let gone_dir = built.root.join("gone");
    std::fs::create_dir_all(&gone_dir).unwrap();
    let gone_so = gone_dir.join("libhvtracegone.so");
    let lib_src = built.root.join("src/libaddtest.c");
    gcc(&[
        "-shared",
        "-fPIC",
        "-o",
        gone_so.to_str().unwrap(),
        lib_src.to_str().unwrap(),
    ]);
    let needs_gone = built.root.join("bin/needs-gone");
    gcc(&[
        "-o",
        needs_gone.to_str().unwrap(),
        built.root.join("src/addtest.c").to_str().unwrap(),
        &format!("-L{}", gone_dir.display()),
        "-lhvtracegone",
    ]);
    std::fs::remove_file(&gone_so).unwrap();
    let out_dir = built.root.join("trace-never");
    let (status, err) = refused(
        "record",
        &[
            "--add",
            &format!("{}:/opt/needs-gone", needs_gone.display()),
            "-o",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(status, 125);
    assert!(
        err.contains(&format!(
            "the library libhvtracegone.so, needed by {} (guest path /opt/needs-gone), is not found on the host",
            needs_gone.display()
        )),
        "{err}"
    );
    assert!(
        !out_dir.exists(),
        "record created its output before refusing"
    );

    // 200 MiB (sparse: nothing is written) in a 256 MiB guest.
    let big = built.root.join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let (status, err) = refused(
        "latency",
        &[
            "--memory",
            "256",
            "--add",
            &format!("{}:/opt/big.bin", big.display()),
        ],
    );
    assert_eq!(status, 125);
    assert!(
        err.contains("the added files are too large for the guest's memory")
            && err.contains("more than half of --memory 256"),
        "{err}"
    );
}
