//! Format details: the TSDL text, empty strings on disk.

mod common;

use common::{assert_cli_clean, bt2_read, tmp};
use ltt_writer::*;
use serde_json::json;

fn catalog() -> Catalog {
    let a = |name: &str, kind, dir| SyscallArg {
        name: name.into(),
        kind,
        dir,
    };
    let openat = SyscallDecl {
        nr: 257,
        name: "openat".into(),
        args: vec![
            a("dfd", ArgKind::Signed(32), ArgDir::In),
            a("filename", ArgKind::String, ArgDir::In),
            a("flags", ArgKind::Signed(32), ArgDir::In),
            a("mode", ArgKind::Unsigned(16), ArgDir::In),
        ],
    };
    Catalog::kernel(&[openat]).unwrap()
}

#[test]
fn metadata_is_lttng_kernel_tsdl() {
    let dir = tmp();
    let (w, ps) = TraceWriter::create(dir.path(), TraceConfig::new(2, catalog())).unwrap();
    drop(ps);
    w.finish().unwrap();
    let md = std::fs::read_to_string(dir.path().join("kernel/metadata")).unwrap();
    assert!(md.starts_with("/* CTF 1.8"));
    for s in [
        "uint32_t magic;",
        "uint8_t  uuid[16];",
        "uint32_t stream_id;",
        "uint64_t stream_instance_id;",
        "timestamp_begin;",
        "timestamp_end;",
        "content_size;",
        "packet_size;",
        "packet_seq_num;",
        "unsigned long events_discarded;",
        "uint32_t cpu_id;",
        "extended = 31",
        "uint27_clock_monotonic_t timestamp;",
        "_pid;",
        "_tid;",
        "_procname[16];",
        "name = \"syscall_entry_openat\";",
        "name = \"syscall_exit_openat\";",
    ] {
        assert!(md.contains(s), "metadata lacks `{s}`");
    }
    assert!(
        dir.path().join("kernel/channel0_0").exists()
            && dir.path().join("kernel/channel0_1").exists()
    );
}

/// Empty strings are NUL-padded/terminated on disk. babeltrace2 2.0.x
/// reads a zero-length string right only when no earlier event of the
/// class had a non-empty value, so it checks the first event and the bytes
/// check them all.
#[test]
fn empty_strings_are_encoded_empty() {
    let dir = tmp();
    let cat = catalog();
    let mut cfg = TraceConfig::new(1, cat.clone());
    cfg.packet_size = 4096;
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg).unwrap();
    let ctx = TaskCtx::new(1, 1, b"");
    let t = TaskRef {
        comm: b"",
        tid: 5,
        prio: 0,
    };
    for i in 0..3 {
        ps[0].irq_handler_entry(10 + i, &ctx, 1, b"").unwrap();
        ps[0].sched_process_exit(20 + i, &ctx, t).unwrap();
    }
    drop(ps);
    w.finish().unwrap();
    let read = bt2_read(dir.path());
    let ev = read.events();
    assert_eq!(ev.len(), 6);
    assert_eq!(ev[0]["fields"], json!({"irq":1,"name":""}));
    assert_eq!(ev[0]["ctx"]["procname"], "");
    assert_eq!(ev[3]["fields"], json!({"comm":"","tid":5,"prio":0}));
    let raw = ltt_writer::reader::read_trace(dir.path(), &cat, HeaderKind::Compact).unwrap();
    assert_eq!(raw.len(), 6);
    let data = std::fs::read(dir.path().join("kernel/channel0_0")).unwrap();
    // Event 0: compact escape header (13) + context (24, procname all NUL)
    // + irq (4) + "" (one NUL).
    let e0 = &data[84..84 + 13 + 24 + 4 + 1];
    assert_eq!(e0[0], 31);
    assert!(e0[13 + 8..13 + 24].iter().all(|&b| b == 0));
    assert_eq!(e0[13 + 24..13 + 28], 1i32.to_le_bytes());
    assert_eq!(e0[13 + 28], 0);
    assert_cli_clean(dir.path(), 6);
}

/// Packet headers and contexts, which babeltrace2 consumes without showing:
/// magic, the metadata's uuid, stream id 0, stream_instance_id = cpu_id =
/// the vCPU, contiguous packet_seq_num, sizes in bits, timestamps that
/// bracket the packet and follow each other.
#[test]
fn packet_headers_follow_the_metadata() {
    let dir = tmp();
    let mut cfg = TraceConfig::new(3, catalog());
    cfg.packet_size = 8192;
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg).unwrap();
    let ctx = TaskCtx::new(1, 1, b"x");
    for (cpu, p) in ps.iter_mut().enumerate() {
        for i in 0..(400 * (cpu as u64 + 1)) {
            p.irq_softirq_raise(1000 * i + cpu as u64, &ctx, 3).unwrap();
        }
    }
    drop(ps);
    w.finish().unwrap();
    let md = std::fs::read_to_string(dir.path().join("kernel/metadata")).unwrap();
    let at = md.find("uuid = \"").unwrap() + 8;
    let uuid_text: String = md[at..at + 36].chars().filter(|c| *c != '-').collect();
    let uuid: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&uuid_text[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    for cpu in 0..3u32 {
        let data = std::fs::read(dir.path().join(format!("kernel/channel0_{cpu}"))).unwrap();
        assert_eq!(data.len() % 8192, 0);
        let mut last_end = 0;
        for (seq, p) in data.chunks(8192).enumerate() {
            assert_eq!(u32_at(p, 0), 0xC1FC1FC1);
            assert_eq!(&p[4..20], &uuid[..]);
            assert_eq!(u32_at(p, 20), 0, "stream_id");
            assert_eq!(u64_at(p, 24), cpu as u64, "stream_instance_id");
            let (begin, end) = (u64_at(p, 32), u64_at(p, 40));
            assert!(begin <= end && begin >= last_end);
            last_end = end;
            let (content, size) = (u64_at(p, 48), u64_at(p, 56));
            assert_eq!(size, 8192 * 8);
            assert!(content <= size && content % 8 == 0 && content > 84 * 8);
            // Padding after the content is zero.
            assert!(p[(content / 8) as usize..].iter().all(|&b| b == 0));
            assert_eq!(u64_at(p, 64), seq as u64, "packet_seq_num");
            assert_eq!(u64_at(p, 72), 0, "events_discarded");
            assert_eq!(u32_at(p, 80), cpu, "cpu_id");
        }
    }
    assert_cli_clean(dir.path(), 400 + 800 + 1200);
}

fn spec(fc: &serde_json::Value) -> String {
    match fc["kind"].as_str().unwrap() {
        "signed" => format!("i{}", fc["bits"]),
        "unsigned" if fc["base"] == 16 => format!("x{}", fc["bits"]),
        "unsigned" => format!("u{}", fc["bits"]),
        "string" => "s".into(),
        "array" => format!("array{}({})", fc["len"], spec(&fc["elem"])),
        "sequence" => format!("seq({})", spec(&fc["elem"])),
        "struct" => fc["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}:{}", m[0].as_str().unwrap(), spec(&m[1])))
            .collect::<Vec<_>>()
            .join(" "),
        k => k.to_string(),
    }
}

/// Field names and types as babeltrace2 sees them, against lttng-modules'
/// declarations (`ctf_integer(pid_t, ...)` → int32, `long` → int64,
/// `unsigned int` → uint32, `ctf_array_text` → string, hex pointers).
#[test]
fn event_classes_have_lttng_modules_types() {
    let dir = tmp();
    let (w, ps) = TraceWriter::create(dir.path(), TraceConfig::new(1, catalog())).unwrap();
    drop(ps);
    w.finish().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bt2_dump.py");
    let out = std::process::Command::new(common::PYTHON)
        .arg(script)
        .arg(dir.path())
        .arg("--classes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = std::collections::BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = if r["t"] == "context" {
            "(context)".to_string()
        } else {
            r["name"].as_str().unwrap().to_string()
        };
        let s = if r["fc"].is_null() {
            String::new()
        } else {
            spec(&r["fc"])
        };
        got.insert(name, s);
    }
    let sched = "comm:s tid:i32 prio:i32 target_cpu:i32";
    let proc = "comm:s tid:i32 prio:i32";
    let args6 = "array6(u64)";
    let want = [
        ("(context)", "pid:i32 tid:i32 procname:s".to_string()),
        (
            "sched_switch",
            "prev_comm:s prev_tid:i32 prev_prio:i32 prev_state:i64 next_comm:s next_tid:i32 next_prio:i32".into(),
        ),
        ("sched_waking", sched.into()),
        ("sched_wakeup", sched.into()),
        ("sched_wakeup_new", sched.into()),
        (
            "sched_process_fork",
            "parent_comm:s parent_tid:i32 parent_pid:i32 parent_ns_inum:u32 child_comm:s child_tid:i32 \
             _vtids_length:u8 vtids:seq(i32) child_pid:i32 child_ns_inum:u32"
                .into(),
        ),
        ("sched_process_exec", "filename:s tid:i32 old_tid:i32".into()),
        ("sched_process_exit", proc.into()),
        ("sched_process_free", proc.into()),
        ("irq_handler_entry", "irq:i32 name:s".into()),
        ("irq_handler_exit", "irq:i32 ret:i32".into()),
        ("irq_softirq_entry", "vec:u32".into()),
        ("irq_softirq_exit", "vec:u32".into()),
        ("irq_softirq_raise", "vec:u32".into()),
        ("lttng_statedump_start", String::new()),
        ("lttng_statedump_end", String::new()),
        (
            "lttng_statedump_process_state",
            "tid:i32 pid:i32 ppid:i32 name:s type:i32 mode:i32 submode:i32 status:i32 cpu:u32 file_table_address:x64"
                .into(),
        ),
        // lttng-modules 2.13's lttng-statedump.h (flags: octal u32)
        (
            "lttng_statedump_file_descriptor",
            "file_table_address:x64 fd:i32 flags:u32 fmode:x32 filename:s".into(),
        ),
        (
            "lttng_statedump_vm_map",
            "pid:i32 start:x64 end:x64 flags:x64 inode:u64 pgoff:u64".into(),
        ),
        (
            "lttng_statedump_interrupt",
            "irq:u32 name:s action:s tid:i32".into(),
        ),
        (
            "lttng_statedump_cpu_topology",
            "architecture:s cpu_id:u16 vendor:s family:u8 model:u8 model_name:s physical_id:u16 core_id:u16 cores:u16"
                .into(),
        ),
        ("lttng_statedump_block_device", "dev:u32 diskname:s".into()),
        (
            "lttng_statedump_network_interface",
            "name:s address_ipv4:x32".into(),
        ),
        ("syscall_entry_unknown", format!("id:i32 args:{args6}")),
        ("syscall_exit_unknown", format!("id:i32 ret:i64 args:{args6}")),
        ("syscall_entry_openat", "dfd:i32 filename:s flags:i32 mode:u16".into()),
        ("syscall_exit_openat", "ret:i64".into()),
    ];
    let want: std::collections::BTreeMap<String, String> =
        want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(got, want);
    // babeltrace2's classes do not show byte order: the metadata does.
    // `ctf_integer_network_hex` is big-endian; every other integer follows
    // the trace's native little-endian order.
    let metadata = std::fs::read_to_string(dir.path().join("kernel/metadata")).unwrap();
    let be: Vec<&str> = metadata
        .lines()
        .filter(|l| l.contains("byte_order = be"))
        .map(|l| l.trim().rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(be, ["_address_ipv4;"], "big-endian fields");
}
