//! Issue 16, point 1: options out of range are refused before anything
//! boots, with one message, the same on every subcommand and engine; and
//! a disk that fills during a recording stops the trace cleanly (what was
//! written stays readable, the summary says where it stopped).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
}

fn host_memory_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// `hvtrace SUBCOMMAND --backend ENGINE` on the 6.1 image with `args`.
fn hvtrace(sub: &str, backend: &str, args: &[String], out: &Path) -> Output {
    let image = common::image_dir("6.1");
    let mut c = common::hvtrace();
    c.args([sub, "--backend", backend, "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(args);
    if sub != "run" {
        c.arg("-o").arg(out);
    }
    if sub != "latency" {
        c.args(["--", "/bin/true"]);
    }
    c.output().expect("run hvtrace")
}

#[test]
fn options_out_of_range_are_refused_up_front_on_every_command_and_engine() {
    let too_many = (host_cpus() * 4 + 1).to_string();
    let too_much = host_memory_mib() + 1;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    // (subcommands, arguments, exit status, message): 2 is a usage error
    // (the command line's syntax, from clap), 125 hvtrace's own refusal.
    let mut cases: Vec<(&[&str], Vec<String>, i32, String)> = vec![
        (
            &["run", "record", "latency"],
            s(&["--vcpus", "0"]),
            2,
            "invalid value '0' for '--vcpus <VCPUS>'".into(),
        ),
        (
            &["run", "record", "latency"],
            s(&["--vcpus", &too_many]),
            125,
            format!("--vcpus {too_many}: this host runs {} CPU(s)", host_cpus()),
        ),
        (
            &["run", "record", "latency"],
            s(&["--memory", "96"]),
            125,
            "--memory 96 MiB: this kernel and initramfs need at least".into(),
        ),
        (
            &["run", "record", "latency"],
            s(&["--timeout", "0"]),
            2,
            "invalid value '0' for '--timeout <TIMEOUT>'".into(),
        ),
        (
            &["record"],
            s(&["--mode", "sample", "--freq", "0"]),
            2,
            "invalid value '0' for '--freq <FREQ>'".into(),
        ),
        (
            &["record"],
            s(&["--events", "syscalls,bogus"]),
            125,
            "--events syscalls,bogus: unknown class bogus".into(),
        ),
        (
            &["record"],
            s(&["--events", ""]),
            125,
            "--events '' names no event class and no --probe is given".into(),
        ),
        (
            &["record"],
            s(&["--buffer", "flight-recorder", "--trigger", "bogus"]),
            125,
            "--trigger bogus: expected panic, signal-exit or syscall=NAME:ERRNO".into(),
        ),
        (
            &["record"],
            s(&[
                "--buffer",
                "flight-recorder",
                "--trigger",
                "syscall=nosuch:ENOENT",
            ]),
            125,
            "no syscall `nosuch` in this kernel's syscall tables".into(),
        ),
        (
            &["record"],
            s(&[
                "--buffer",
                "flight-recorder",
                "--trigger",
                "syscall=openat:EBOGUS",
            ]),
            125,
            "`EBOGUS` is not an errno name".into(),
        ),
        (
            &["record"],
            s(&["--trigger", "panic"]),
            125,
            "--trigger needs --buffer flight-recorder".into(),
        ),
    ];
    // clap caps --memory at 64 GiB: a larger host cannot be asked for more.
    if too_much <= 65536 {
        cases.push((
            &["run", "record", "latency"],
            vec!["--memory".into(), too_much.to_string()],
            125,
            format!("--memory {too_much} MiB: this host has"),
        ));
    } else {
        println!("skipped: --memory above this host's {too_much} MiB is above clap's 65536 cap");
    }
    let dir = std::env::temp_dir().join(format!("hvtrace-bad-options-{}", std::process::id()));
    for (subs, args, status, says) in &cases {
        for sub in *subs {
            for backend in ["qemu", "kvm"] {
                let out = dir.join(format!("{sub}-{backend}"));
                let t = Instant::now();
                let o = hvtrace(sub, backend, args, &out);
                let err = String::from_utf8_lossy(&o.stderr);
                let what = format!("{sub} --backend {backend} {args:?}");
                assert_eq!(o.status.code(), Some(*status), "{what}: {err}");
                assert!(err.contains(says.as_str()), "{what}: {err}");
                // One message: the last line, nothing of a boot before it.
                assert!(!err.contains("HVTRACE-EXIT"), "{what} booted: {err}");
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "{what}: refused, not booted"
                );
                // Refused before anything is written: no output folder.
                assert!(!out.exists(), "{what} touched its output folder");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs of `mib` MiB mounted for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(mib: u32) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("hvtrace-full-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_stops_the_trace_cleanly_and_says_where() {
    let image = common::image_dir("6.1");
    let disk = match Tmpfs::mount(2) {
        Ok(d) => d,
        Err(e) => {
            println!("skipped: cannot mount a small tmpfs here (needs root): {e}");
            return;
        }
    };
    let out = disk.0.join("t");
    let o = common::hvtrace()
        .args(["record", "--backend", "qemu", "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&out)
        .args(["--", "/bin/syscalls", "3000"])
        .output()
        .expect("run hvtrace record");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    // The guest ran to its end; the trace stopped where the disk filled.
    assert!(err.contains("HVTRACE-EXIT 0"), "{err}");
    let stream = out.join("kernel/channel0_0");
    let written = std::fs::metadata(&stream).unwrap().len();
    let says = format!(
        "the trace stopped early: writing {} failed after {written} bytes",
        stream.display()
    );
    assert!(err.contains(&says), "no {says:?} in:\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("hvtrace: error: the trace is incomplete"),
        "{err}"
    );
    // What was written is whole packets, and babeltrace2 reads all of it.
    let read = std::process::Command::new("babeltrace2")
        .arg(out.join("kernel"))
        .output()
        .expect("babeltrace2 runs");
    let bt_err = String::from_utf8_lossy(&read.stderr);
    assert!(
        read.status.success() && bt_err.trim().is_empty(),
        "{bt_err}"
    );
    let events = String::from_utf8_lossy(&read.stdout).lines().count();
    assert!(events > 1000, "{events} events read");
    println!("disk full after {written} bytes of trace; babeltrace2 read {events} events");
}
