//! The events of the round trip: a catalog with every event type, one of
//! each written with known field values (edge values included), and what
//! babeltrace2 must read back for each.

use ltt_writer::*;
use serde_json::{json, Value as Json};

fn syscalls() -> Vec<SyscallDecl> {
    let a = |name: &str, kind, dir| SyscallArg {
        name: name.into(),
        kind,
        dir,
    };
    vec![
        SyscallDecl {
            nr: 0,
            name: "read".into(),
            args: vec![
                a("fd", ArgKind::Unsigned(32), ArgDir::In),
                a("buf", ArgKind::Pointer, ArgDir::Out),
                a("count", ArgKind::Unsigned(64), ArgDir::In),
            ],
        },
        SyscallDecl {
            nr: 257,
            name: "openat".into(),
            args: vec![
                a("dfd", ArgKind::Signed(32), ArgDir::In),
                a("filename", ArgKind::String, ArgDir::In),
                a("flags", ArgKind::Signed(32), ArgDir::In),
                a("mode", ArgKind::Unsigned(16), ArgDir::In),
            ],
        },
        SyscallDecl {
            nr: 7,
            name: "poll".into(),
            args: vec![
                a("ufds", ArgKind::Pointer, ArgDir::InOut),
                a("nfds", ArgKind::Unsigned(32), ArgDir::In),
                a("timeout_msecs", ArgKind::Signed(32), ArgDir::In),
            ],
        },
        SyscallDecl {
            nr: 231,
            name: "exit_group".into(),
            args: vec![a("error_code", ArgKind::Signed(32), ArgDir::In)],
        },
    ]
}

pub fn catalog() -> Catalog {
    let mut c = Catalog::kernel(&syscalls()).unwrap();
    // Push the probe's id past 31 so compact headers must escape it.
    for i in 0..12 {
        c.add_event(&format!("probe_pad_{i}"), vec![]).unwrap();
    }
    let f = FieldDecl::new;
    c.add_event(
        "probe_custom",
        vec![
            f("a", FieldType::int(8, false)),
            f("b", FieldType::int(16, true)),
            f("c", FieldType::hex(32)),
            f("d", FieldType::I64),
            f("e", FieldType::Text { len: 8 }),
            f("s", FieldType::Str),
            f(
                "g",
                FieldType::IntArray {
                    bits: 16,
                    signed: false,
                    base: Base::Dec,
                    len: 3,
                },
            ),
            f(
                "h",
                FieldType::IntSeq {
                    bits: 32,
                    signed: true,
                    base: Base::Dec,
                },
            ),
        ],
    )
    .unwrap();
    c
}

/// An event as written, and what babeltrace2 must read back.
pub struct Exp {
    pub ts: u64,
    pub name: &'static str,
    pub ctx: TaskCtx,
    pub fields: Json,
}

/// Timestamps with small steps, equal steps and jumps across the 27- and
/// 32-bit boundaries of the compact and large headers.
pub struct Ts(pub u64, pub usize);
impl Ts {
    fn next(&mut self) -> u64 {
        const STEPS: [u64; 10] = [1, 3, 1 << 27, 100, (1 << 27) - 1, 7, 1 << 32, 2, 0, 50_000];
        self.0 += STEPS[self.1 % STEPS.len()];
        self.1 += 1;
        self.0
    }
}

/// Writes one of every event type (`round` varies the values) and what
/// each must read back as.
pub fn emit_all(p: &mut Producer, ts: &mut Ts, exp: &mut Vec<Exp>, round: i32) {
    let ctx = TaskCtx::new(1000 + round, 1001 + round, b"bash");
    let kctx = TaskCtx::new(0, 0, b"swapper/1");
    let mut push = |ts: u64, name: &'static str, ctx: TaskCtx, fields: Json| {
        exp.push(Exp {
            ts,
            name,
            ctx,
            fields,
        })
    };

    let t = ts.next();
    let prev = TaskRef {
        comm: b"bash",
        tid: 1001 + round,
        prio: 20,
    };
    let next = TaskRef {
        comm: b"a-very-long-command-name",
        tid: i32::MAX,
        prio: -99,
    };
    p.sched_switch(t, &ctx, prev, 1, next).unwrap();
    push(
        t,
        "sched_switch",
        ctx,
        json!({"prev_comm":"bash","prev_tid":1001 + round,"prev_prio":20,"prev_state":1,
        "next_comm":"a-very-long-com","next_tid":i32::MAX,"next_prio":-99}),
    );

    let t = ts.next();
    let prev = TaskRef {
        comm: b"kworker/u8:1-ev",
        tid: 55,
        prio: 0,
    };
    let next = TaskRef {
        comm: b"swapper/1",
        tid: 0,
        prio: 20,
    };
    p.sched_switch(t, &kctx, prev, 256, next).unwrap();
    push(
        t,
        "sched_switch",
        kctx,
        json!({"prev_comm":"kworker/u8:1-ev","prev_tid":55,"prev_prio":0,"prev_state":256,
        "next_comm":"swapper/1","next_tid":0,"next_prio":20}),
    );

    let sleepy = TaskRef {
        comm: b"sleepy",
        tid: 77 + round,
        prio: -1,
    };
    let t = ts.next();
    p.sched_waking(t, &ctx, sleepy, 1).unwrap();
    push(
        t,
        "sched_waking",
        ctx,
        json!({"comm":"sleepy","tid":77 + round,"prio":-1,"target_cpu":1}),
    );
    let t = ts.next();
    p.sched_wakeup(t, &ctx, sleepy, 0).unwrap();
    push(
        t,
        "sched_wakeup",
        ctx,
        json!({"comm":"sleepy","tid":77 + round,"prio":-1,"target_cpu":0}),
    );
    let t = ts.next();
    p.sched_wakeup_new(t, &ctx, sleepy, 3).unwrap();
    push(
        t,
        "sched_wakeup_new",
        ctx,
        json!({"comm":"sleepy","tid":77 + round,"prio":-1,"target_cpu":3}),
    );

    let t = ts.next();
    let vtids = [1300 + round, 5];
    p.sched_process_fork(
        t,
        &ctx,
        &Fork {
            parent_comm: b"bash",
            parent_tid: 1001 + round,
            parent_pid: 1000 + round,
            parent_ns_inum: 4026531836,
            child_comm: b"bash",
            child_tid: 1300 + round,
            vtids: &vtids,
            child_pid: 1300 + round,
            child_ns_inum: 4026532000,
        },
    )
    .unwrap();
    push(
        t,
        "sched_process_fork",
        ctx,
        json!({"parent_comm":"bash","parent_tid":1001 + round,"parent_pid":1000 + round,
        "parent_ns_inum":4026531836u32,"child_comm":"bash","child_tid":1300 + round,"_vtids_length":2,"vtids":[1300 + round, 5],
        "child_pid":1300 + round,"child_ns_inum":4026532000u32}),
    );

    let long = "/opt/".to_string() + &"x".repeat(300);
    let t = ts.next();
    p.sched_process_exec(t, &ctx, long.as_bytes(), 1300 + round, 1301 + round)
        .unwrap();
    push(
        t,
        "sched_process_exec",
        ctx,
        json!({"filename":long,"tid":1300 + round,"old_tid":1301 + round}),
    );

    let ls = TaskRef {
        comm: b"ls",
        tid: 1300 + round,
        prio: 20,
    };
    let t = ts.next();
    p.sched_process_exit(t, &ctx, ls).unwrap();
    push(
        t,
        "sched_process_exit",
        ctx,
        json!({"comm":"ls","tid":1300 + round,"prio":20}),
    );
    let t = ts.next();
    p.sched_process_free(t, &kctx, ls).unwrap();
    push(
        t,
        "sched_process_free",
        kctx,
        json!({"comm":"ls","tid":1300 + round,"prio":20}),
    );

    let t = ts.next();
    p.irq_handler_entry(t, &ctx, 4, b"ttyS0").unwrap();
    push(t, "irq_handler_entry", ctx, json!({"irq":4,"name":"ttyS0"}));
    let t = ts.next();
    p.irq_handler_exit(t, &ctx, 4, 1).unwrap();
    push(t, "irq_handler_exit", ctx, json!({"irq":4,"ret":1}));
    let t = ts.next();
    p.irq_softirq_raise(t, &ctx, 9).unwrap();
    push(t, "irq_softirq_raise", ctx, json!({"vec":9}));
    let t = ts.next();
    p.irq_softirq_entry(t, &ctx, 1).unwrap();
    push(t, "irq_softirq_entry", ctx, json!({"vec":1}));
    let t = ts.next();
    p.irq_softirq_exit(t, &ctx, 1).unwrap();
    push(t, "irq_softirq_exit", ctx, json!({"vec":1}));

    let t = ts.next();
    p.lttng_statedump_start(t, &kctx).unwrap();
    push(t, "lttng_statedump_start", kctx, json!({}));
    let t = ts.next();
    let st = ProcessState {
        tid: 1,
        pid: 1,
        ppid: 0,
        name: b"init",
        kind: 0,
        mode: 5,
        submode: 0,
        status: 5,
        cpu: 1,
        file_table_address: 0xffff_8880_03a4_c000,
    };
    p.lttng_statedump_process_state(t, &kctx, &st).unwrap();
    push(
        t,
        "lttng_statedump_process_state",
        kctx,
        json!({"tid":1,"pid":1,"ppid":0,"name":"init","type":0,"mode":5,
        "submode":0,"status":5,"cpu":1,"file_table_address":0xffff_8880_03a4_c000u64}),
    );
    let t = ts.next();
    p.lttng_statedump_end(t, &kctx).unwrap();
    push(t, "lttng_statedump_end", kctx, json!({}));
    // the statedump's other events, by name and in field order
    use ltt_writer::statedump as sd;
    let table = 0xffff_8880_03a4_c000u64;
    let rows: [(&str, Vec<Value<'_>>, Json); 6] = [
        (
            sd::FILE_DESCRIPTOR,
            vec![
                Value::U(table),
                Value::I(3),
                Value::U(0o2100000),
                Value::U(0x1d),
                Value::Str(b"/etc/passwd"),
            ],
            json!({"file_table_address":table,"fd":3,"flags":0o2100000,"fmode":0x1d,"filename":"/etc/passwd"}),
        ),
        (
            sd::VM_MAP,
            vec![
                Value::I(1),
                Value::U(0x40_0000),
                Value::U(0x40_1000),
                Value::U(0x75),
                Value::U(15),
                Value::U(4096),
            ],
            json!({"pid":1,"start":0x40_0000,"end":0x40_1000,"flags":0x75,"inode":15,"pgoff":4096}),
        ),
        (
            sd::INTERRUPT,
            vec![
                Value::U(4),
                Value::Str(b"IO-APIC"),
                Value::Str(b"ttyS0"),
                Value::I(0),
            ],
            json!({"irq":4,"name":"IO-APIC","action":"ttyS0","tid":0}),
        ),
        (
            sd::CPU_TOPOLOGY,
            vec![
                Value::Str(b"x86"),
                Value::U(1),
                Value::Str(b"AuthenticAMD"),
                Value::U(6),
                Value::U(6),
                Value::Str(b"QEMU TCG CPU"),
                Value::U(0),
                Value::U(1),
                Value::U(2),
            ],
            json!({"architecture":"x86","cpu_id":1,"vendor":"AuthenticAMD","family":6,"model":6,
            "model_name":"QEMU TCG CPU","physical_id":0,"core_id":1,"cores":2}),
        ),
        (
            sd::BLOCK_DEVICE,
            vec![Value::U(0x0fc0_0001), Value::Str(b"vda1")],
            json!({"dev":0x0fc0_0001,"diskname":"vda1"}),
        ),
        (
            sd::NETWORK_INTERFACE,
            vec![Value::Str(b"lo"), Value::U(0x7f00_0001)],
            json!({"name":"lo","address_ipv4":0x7f00_0001}),
        ),
    ];
    for (name, vals, fields) in rows {
        let t = ts.next();
        p.statedump_event(name, t, &kctx, &vals).unwrap();
        push(t, name, kctx, fields);
    }

    let read = [Value::U(3), Value::U(0x7ffd_1000), Value::U(4096)];
    let t = ts.next();
    p.syscall_entry(t, &ctx, 0, &read).unwrap();
    push(t, "syscall_entry_read", ctx, json!({"fd":3,"count":4096}));
    let t = ts.next();
    p.syscall_exit(t, &ctx, 0, -11, &read).unwrap();
    push(
        t,
        "syscall_exit_read",
        ctx,
        json!({"ret":-11,"buf":0x7ffd_1000u64}),
    );
    let open = [
        Value::I(-100),
        Value::Str(b"/etc/passwd"),
        Value::I(0o2000000),
        Value::U(0o644),
    ];
    let t = ts.next();
    p.syscall_entry(t, &ctx, 257, &open).unwrap();
    push(
        t,
        "syscall_entry_openat",
        ctx,
        json!({"dfd":-100,"filename":"/etc/passwd","flags":0o2000000,"mode":0o644}),
    );
    let t = ts.next();
    p.syscall_exit(t, &ctx, 257, 3, &open).unwrap();
    push(t, "syscall_exit_openat", ctx, json!({"ret":3}));
    let poll = [Value::U(0x7ffd_2000), Value::U(2), Value::I(-1)];
    let t = ts.next();
    p.syscall_entry(t, &ctx, 7, &poll).unwrap();
    push(
        t,
        "syscall_entry_poll",
        ctx,
        json!({"ufds":0x7ffd_2000u64,"nfds":2,"timeout_msecs":-1}),
    );
    let t = ts.next();
    p.syscall_exit(t, &ctx, 7, 1, &poll).unwrap();
    push(
        t,
        "syscall_exit_poll",
        ctx,
        json!({"ret":1,"ufds":0x7ffd_2000u64}),
    );
    let t = ts.next();
    p.syscall_entry(t, &ctx, 231, &[Value::I(-round as i64)])
        .unwrap();
    push(
        t,
        "syscall_entry_exit_group",
        ctx,
        json!({"error_code":-round}),
    );
    let t = ts.next();
    p.syscall_entry(
        t,
        &ctx,
        999,
        &[Value::U(1), Value::U(2), Value::U(u64::MAX)],
    )
    .unwrap();
    push(
        t,
        "syscall_entry_unknown",
        ctx,
        json!({"id":999,"args":[1,2,u64::MAX,0,0,0]}),
    );
    let t = ts.next();
    p.syscall_exit(t, &ctx, 999, -38, &[Value::U(1)]).unwrap();
    push(
        t,
        "syscall_exit_unknown",
        ctx,
        json!({"id":999,"ret":-38,"args":[1,0,0,0,0,0]}),
    );

    let id = p.catalog().id_of("probe_custom").unwrap();
    assert!(id > 31);
    let t = ts.next();
    let vals = [
        Value::U(255),
        Value::I(-2),
        Value::U(0xdead_beef),
        Value::I(i64::MIN),
        Value::Str(b"abcdefghijk"),
        Value::Str(b"h\xc3\xa9llo \xffbad"),
        Value::Ints(&[1, 2, 65535]),
        Value::Ints(&[(-1i64) as u64, 7]),
    ];
    p.emit(id, t, &ctx, &vals).unwrap();
    push(
        t,
        "probe_custom",
        ctx,
        json!({"a":255,"b":-2,"c":0xdead_beefu32,"d":i64::MIN,"e":"abcdefg",
        "s":"h\u{e9}llo ?bad","g":[1,2,65535],"_h_length":2,"h":[-1,7]}),
    );
    let t = ts.next();
    // Empty text arrays and strings are left out here: babeltrace2 2.0.x
    // shows a zero-length string field with the previous event's value
    // (a reader bug, fixed upstream; see `empty_strings_are_encoded_empty`).
    p.emit(
        id,
        t,
        &ctx,
        &[
            Value::U(0),
            Value::I(0),
            Value::U(0),
            Value::I(0),
            Value::Str(b"z\0ignored"),
            Value::Str(b"bad\xff\xfe"),
            Value::Ints(&[]),
            Value::Ints(&[]),
        ],
    )
    .unwrap();
    push(
        t,
        "probe_custom",
        ctx,
        json!({"a":0,"b":0,"c":0,"d":0,"e":"z","s":"bad??","g":[0,0,0],"_h_length":0,"h":[]}),
    );
}

/// A task's name as babeltrace2 shows it.
pub fn name(ctx: &TaskCtx) -> String {
    let n = ctx.procname.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&ctx.procname[..n]).into_owned()
}
