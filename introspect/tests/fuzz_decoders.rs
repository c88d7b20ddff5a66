//! Decoders, task walks and slide discovery on random and hostile guest
//! memory: they must neither panic nor loop, and mark what they cannot read.

mod support;

use std::cell::Cell;
use std::collections::HashMap;

use support::{kernel, RandomGuest, Rng, KINDS};

use introspect::codec::{decode as decode_rec, decode_all, encode, MAX_RECORD};
use introspect::decode::{GuestStr, SyscallStrings, SYSCALL_SLOTS};
use introspect::kernel::{find_slide, Kernel};
use introspect::plan::Offsets;
use introspect::task::{for_each_task, read_task, MAX_TASKS};
use introspect::{decode, Event, ProbeKind, Record, Reg, Task, VcpuContext, VcpuState};

#[test]
fn decoders_survive_random_memory_and_roundtrip_through_the_codec() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let strings = vec![0xffu8; 2 * SYSCALL_SLOTS];
    let mut st = VcpuState::default();
    for round in 0..3000 {
        let mut regs = [0u64; Reg::ALL.len()];
        for r in regs.iter_mut() {
            // kernel-looking, user-looking and garbage values
            *r = match rng.next() % 3 {
                0 => 0xffff_8880_0000_0000 | (rng.next() & 0xffff_ffff),
                1 => rng.next() & 0x7fff_ffff_ffff,
                _ => rng.next(),
            };
        }
        let g = RandomGuest {
            seed: rng.next(),
            regs,
            reads: Cell::new(0),
            overrides: HashMap::new(),
        };
        let k = kernel(&mut rng);
        let kind = KINDS[round % KINDS.len()];
        let mut rec = Record {
            cpu: 0,
            ts: 0,
            current: Task::UNKNOWN,
            event: Event::IrqExit { irq: 0, ret: 0 },
        };
        if decode(kind, &g, &k, &SyscallStrings(&strings), &mut st, &mut rec) {
            // bounded work per trap
            assert!(g.reads.get() < 200, "{kind:?}: {} reads", g.reads.get());
            let mut buf = [0u8; MAX_RECORD];
            let n = encode(&rec, &mut buf);
            let (back, used) = decode_rec(&buf[..n]).expect("own encoding decodes");
            assert_eq!(used, n);
            assert_eq!(back.event_tag(), rec.event_tag());
            assert_eq!(back.current.tid, rec.current.tid);
            match (back.event, rec.event) {
                (
                    Event::CompatSyscallEntry { nr, args, .. },
                    Event::CompatSyscallEntry {
                        nr: n2, args: a2, ..
                    },
                ) => {
                    assert_eq!((nr, args), (n2, a2));
                    // i386 registers: 32-bit values
                    assert!(args.iter().all(|&a| a <= u64::from(u32::MAX)));
                }
                (Event::CompatSyscallExit { nr, ret, args, fds }, e) => {
                    assert_eq!(Event::CompatSyscallExit { nr, ret, args, fds }, e)
                }
                (_, Event::CompatSyscallEntry { .. } | Event::CompatSyscallExit { .. }) => {
                    panic!("a compat event decoded as another")
                }
                _ => {}
            }
        }
        // a random task list stops within the cap
        let walked = for_each_task(&g, &k, |_, _| {});
        assert!(walked <= MAX_TASKS);
        let _ = read_task(&g, &k, regs[0]);
        let _ = GuestStr::read(&g, regs[1]);
        let _ = find_slide(&g, 0xffff_ffff_8200_0000, b"Linux version 6.1.0 ");
    }
}

#[test]
fn codec_rejects_garbage_without_panicking() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = (rng.next() % 600) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = decode_rec(&bytes);
        let (recs, used) = decode_all(&bytes);
        assert!(used <= bytes.len());
        assert!(recs.len() <= bytes.len() / 3 + 1);
    }
}

/// A task list that loops back to its second element (not the head) ends
/// after a bounded number of steps.
#[test]
fn cyclic_task_list_terminates() {
    let mut rng = Rng(7);
    let k = kernel(&mut rng);
    let tasks_off = k.off.task_tasks;
    let nodes = [
        k.init_task,
        k.init_task + 0x10000,
        k.init_task + 0x20000,
        k.init_task + 0x30000,
    ];
    let mut ov = HashMap::new();
    // 0 -> 1 -> 2 -> 3 -> 1 ...
    let next = [1usize, 2, 3, 1];
    for (i, &n) in nodes.iter().enumerate() {
        let link = nodes[next[i]] + tasks_off;
        for (j, b) in link.to_le_bytes().iter().enumerate() {
            ov.insert(n + tasks_off + j as u64, *b);
        }
    }
    let mut seen = 0;
    for seed in 0..64u64 {
        let g = RandomGuest {
            seed,
            regs: [0; Reg::ALL.len()],
            reads: Cell::new(0),
            overrides: ov.clone(),
        };
        let n = for_each_task(&g, &k, |_, _| {});
        assert!(n <= 16, "walked {n} tasks of a 4-node cycle");
        seen = seen.max(n);
    }
    assert!(seen >= 4, "some seed maps every node");
}

#[test]
fn slide_found_from_banner() {
    let mut ov = HashMap::new();
    let banner = b"Linux version 6.1.0-56-amd64 (x)";
    let link = 0xffff_ffff_8216_1900u64;
    let slide = 0x20c0_0000u64;
    for (i, b) in banner.iter().enumerate() {
        ov.insert(link + slide + i as u64, *b);
    }
    for seed in 0..64u64 {
        let g = RandomGuest {
            seed,
            regs: [0; Reg::ALL.len()],
            reads: Cell::new(0),
            overrides: ov.clone(),
        };
        if g.read_virt(link + slide, &mut [0u8; 32]).is_ok() {
            assert_eq!(
                find_slide(&g, link, b"Linux version 6.1.0-56-amd64 "),
                Ok(slide)
            );
            return;
        }
    }
    panic!("no seed mapped the banner page");
}

/// The compat decoders on a known guest: the entry takes the number from
/// esi and the arguments from pt_regs' bx, cx, dx, si, di, bp (32 bits),
/// the string from the argument the syscall declares; the exit takes the
/// number from `orig_ax` of the pt_regs at the top of the current task's
/// stack and the value from rax.
#[test]
fn compat_decoders_read_the_i386_registers_and_the_tasks_own_pt_regs() {
    const PERCPU: u64 = 0xffff_8880_0010_0000;
    const TASK: u64 = 0xffff_8880_0020_0000;
    const STACK: u64 = 0xffff_c900_0040_0000;
    const REGS: u64 = STACK + 0x4000 - 168;
    const PATH: u64 = 0x0804_80a0;
    let k = Kernel {
        off: Offsets {
            percpu_current_task: 0x20,
            task_pid: 0x10,
            task_tgid: 0x14,
            task_comm: 0x40,
            task_stack: 0x30,
            thread_size: 0x4000,
            ..Offsets::default()
        },
        ..Kernel::default()
    };
    let mut ov = HashMap::new();
    let mut put = |at: u64, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            ov.insert(at + i as u64, *b);
        }
    };
    put(PERCPU + 0x20, &TASK.to_le_bytes());
    put(TASK + 0x10, &7u32.to_le_bytes());
    put(TASK + 0x14, &7u32.to_le_bytes());
    put(TASK + 0x40, b"compat32\0\0\0\0\0\0\0\0");
    put(TASK + 0x30, &STACK.to_le_bytes());
    // pt_regs: bx, cx, dx, si, di, bp with junk in their upper halves
    for (off, v) in [
        (40u64, PATH),
        (88, 2),
        (96, 0o644),
        (104, 4),
        (112, 5),
        (32, 6),
    ] {
        put(REGS + off, &(v | 0xdead_0000_0000_0000).to_le_bytes());
    }
    put(REGS + 120, &5u64.to_le_bytes()); // orig_ax
    put(PATH, b"/compat32-missing\0");
    let mut regs = [0u64; Reg::ALL.len()];
    regs[Reg::GsBase as usize] = PERCPU;
    regs[Reg::Rdi as usize] = REGS;
    regs[Reg::Rsi as usize] = 5;
    regs[Reg::Rax as usize] = (-2i64) as u64;
    let needed = [PERCPU, TASK, STACK + 0x3000, PATH];
    let g = (0..4096u64)
        .map(|seed| RandomGuest {
            seed,
            regs,
            reads: Cell::new(0),
            overrides: ov.clone(),
        })
        .find(|g| {
            needed
                .iter()
                .all(|&a| g.read_virt(a, &mut [0u8; 1]).is_ok())
        })
        .expect("a seed maps every page the test uses");
    // open (i386 5): its first argument is a string
    let mut strings = vec![0u8; 2 * SYSCALL_SLOTS];
    strings[SYSCALL_SLOTS + 5] = 0b1;
    let mut st = VcpuState::default();
    let mut rec = Record {
        cpu: 0,
        ts: 0,
        current: Task::UNKNOWN,
        event: Event::IrqExit { irq: 0, ret: 0 },
    };
    let mut run = |kind| {
        assert!(decode(
            kind,
            &g,
            &k,
            &SyscallStrings(&strings),
            &mut st,
            &mut rec
        ));
        rec
    };
    let entry = run(ProbeKind::CompatSyscallEntry);
    assert_eq!(entry.current.tid, 7);
    assert_eq!(entry.current.comm_str(), "compat32");
    let Event::CompatSyscallEntry {
        nr,
        args,
        str_arg,
        string,
    } = entry.event
    else {
        panic!("{entry:?}");
    };
    assert_eq!((nr, args), (5, [PATH, 2, 0o644, 4, 5, 6]));
    assert_eq!(str_arg, Some(0));
    assert_eq!(string.as_str(), "/compat32-missing");
    let exit = run(ProbeKind::CompatSyscallExit);
    // the exit reads the argument registers from the same pt_regs
    assert_eq!(
        exit.event,
        Event::CompatSyscallExit {
            nr: 5,
            ret: -2,
            args: [PATH, 2, 0o644, 4, 5, 6],
            fds: [0; 2],
        }
    );
    // unknown THREAD_SIZE: no exit rather than a wrong number
    let mut k0 = k.clone();
    k0.off.thread_size = 0;
    assert!(!decode(
        ProbeKind::CompatSyscallExit,
        &g,
        &k0,
        &SyscallStrings(&strings),
        &mut VcpuState::default(),
        &mut rec
    ));
}
