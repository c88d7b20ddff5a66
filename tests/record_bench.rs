//! Benchmark (run explicitly: `cargo test --release --test record_bench --
//! --ignored --nocapture`): on the same guest and workload, in one run,
//! - the slowdown of the traced run (syscalls+sched+irq) against the
//!   untraced one, timed by the guest itself around the workload;
//! - the cost per event of hvtrace against gdb counting a breakpoint
//!   through QEMU's gdbstub (the Debian `gdb` command).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const ROUNDS: &str = "5000";

fn elapsed_line(console: &str) -> f64 {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix("ELAPSED "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ELAPSED line:\n{console}"))
}

fn hvtrace(args: &[&str], image: &Path) -> (String, f64) {
    let t = Instant::now();
    let out = common::hvtrace()
        .args(&args[..1])
        .args(["--backend", "qemu", "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(&args[1..])
        .output()
        .expect("run hvtrace");
    let wall = t.elapsed().as_secs_f64();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hvtrace {args:?} failed:\n{text}");
    (text, wall)
}

/// Boots the image under QEMU with its gdbstub and counts, with gdb, the
/// hits of a breakpoint on `addr` while `/bin/syscalls N` runs (nokaslr, so
/// link-time addresses are runtime ones). Returns (hits, wall seconds).
fn gdb_run(image: &Path, addr: u64, rounds: &str, gdb: bool) -> (u64, f64) {
    let argv = ["/bin/syscalls", rounds].join("\0");
    let hex: String = argv.bytes().map(|b| format!("{b:02x}")).collect();
    let port = 20000 + std::process::id() % 20000;
    let mut q = Command::new("qemu-system-x86_64");
    q.args([
        "-M",
        "pc,accel=tcg",
        "-cpu",
        "max",
        "-m",
        "512",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(image.join("vmlinuz"))
    .arg("-initrd")
    .arg(image.join("initrd.img"))
    .args([
        "-append",
        &format!("console=ttyS0 quiet panic=-1 nokaslr hvtrace.cmd={hex}"),
    ])
    .args(["-serial", "stdio"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if gdb {
        q.args(["-gdb", &format!("tcp:127.0.0.1:{port}"), "-S"]);
    }
    let t = Instant::now();
    let mut qemu = q.spawn().expect("qemu-system-x86_64");
    let mut hits = 0;
    if gdb {
        let script = std::env::temp_dir().join(format!("hvtrace-gdb-{port}.gdb"));
        std::fs::write(
            &script,
            format!(
                "set pagination off\nset confirm off\ntarget remote 127.0.0.1:{port}\n\
                 break *{addr:#x}\ncommands\nsilent\nprintf \"HIT\\n\"\ncontinue\nend\ncontinue\n"
            ),
        )
        .unwrap();
        let out = Command::new("gdb")
            .args(["-q", "-nx", "-batch", "-x"])
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .expect("gdb (Debian package gdb)");
        hits = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim() == "HIT")
            .count() as u64;
    }
    let mut console = String::new();
    for line in BufReader::new(qemu.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        console.push_str(&line);
        console.push('\n');
    }
    let _ = qemu.wait();
    assert!(
        console.contains("HVTRACE-EXIT 0"),
        "guest did not finish:\n{console}"
    );
    (hits, t.elapsed().as_secs_f64())
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (prefer --release)"]
fn record_bench_slowdown_and_cost_per_event() {
    let image = common::image_dir("6.1");
    let cmd = [
        "--",
        "/bin/busybox",
        "time",
        "-f",
        "ELAPSED %e",
        "/bin/syscalls",
        ROUNDS,
    ];
    let (plain, plain_wall) = hvtrace(&[&["run"][..], &cmd].concat(), &image);
    let out = std::env::temp_dir().join(format!("hvtrace-bench-{}", std::process::id()));
    let out_s = out.to_string_lossy().into_owned();
    let (traced, traced_wall) = hvtrace(
        &[
            &["record", "--events", "syscalls,sched,irq", "-o", &out_s][..],
            &cmd,
        ]
        .concat(),
        &image,
    );
    let (u, t) = (elapsed_line(&plain), elapsed_line(&traced));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plugin.json")).unwrap()).unwrap();
    let cpus = report["cpus"].as_array().unwrap();
    let events: u64 = cpus.iter().map(|c| c["events"].as_u64().unwrap()).sum();
    let busy: u64 = cpus.iter().map(|c| c["busy_ns"].as_u64().unwrap()).sum();
    let per_event_us = busy as f64 / 1e3 / events as f64;

    let k = guest_symbols::KernelImage::open(image.join("vmlinuz")).unwrap();
    let addr = k
        .symbols
        .addr("__x64_sys_getpid")
        .expect("__x64_sys_getpid");
    let rounds = "300";
    let (_, no_gdb_wall) = gdb_run(&image, addr, rounds, false);
    let (hits, gdb_wall) = gdb_run(&image, addr, rounds, true);
    let gdb_per_hit_ms = (gdb_wall - no_gdb_wall) * 1e3 / hits.max(1) as f64;

    println!("BENCH workload /bin/syscalls {ROUNDS} (guest-timed): untraced {u:.2} s, traced {t:.2} s, slowdown {:.2}x", t / u);
    println!("BENCH whole runs (host wall, boot included): untraced {plain_wall:.1} s, traced {traced_wall:.1} s");
    println!("BENCH hvtrace: {events} events, {per_event_us:.2} us per event in the plugin");
    println!(
        "BENCH gdb: {hits} hits of __x64_sys_getpid, {gdb_wall:.1} s vs {no_gdb_wall:.1} s without gdb: {gdb_per_hit_ms:.1} ms per hit"
    );
    println!(
        "BENCH hvtrace is {:.0}x cheaper per event than gdb",
        gdb_per_hit_ms * 1e3 / per_event_us
    );
    assert!(hits >= 300, "gdb counted {hits} hits");
    assert!(
        gdb_per_hit_ms * 1e3 / per_event_us >= 1000.0,
        "goal: 1000x cheaper than gdb"
    );
    if !cfg!(debug_assertions) {
        assert!(
            t / u < 1.5,
            "goal: traced/untraced under 1.5x, got {:.2}",
            t / u
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
