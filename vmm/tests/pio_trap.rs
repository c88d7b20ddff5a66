//! The 2-byte port-I/O software trap (`out %al,$0xe9`, `TrapKind::PortIo`),
//! the encoding for a KVM that delivers neither int3 nor int1 (KVM nested
//! in QEMU's TCG): exact hit counts on two vCPUs running the same probed
//! code at once, emulated step-over of one instruction and of a 1-byte
//! `push` with the next, of loads, stores and compares by the monitor's
//! wider emulator, the single-step fallback out of a trap covering
//! two instructions (the other vCPU paused), the guest's own writes to the
//! port passed on untouched, and every byte back after removal. Port I/O
//! exits reach user space on every KVM (KVM-PVM included), so this runs
//! wherever /dev/kvm is usable.

mod hits;

use std::time::Duration;

use hits::{counting, read_u64, Hits};
use iced_x86::Code;
use vmm::{StepInsn, StepOver, TrapKind, VmConfig, VmExit};

const BASE: u64 = vmm::layout::RAW_CODE_START;
const WAIT: Duration = Duration::from_secs(120);

fn kvm_usable() -> bool {
    let ok = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        println!("skipped: no usable /dev/kvm");
    }
    ok
}

#[test]
fn port_io_traps_count_exactly_on_two_vcpus_and_restore_every_byte() {
    if !kvm_usable() {
        return;
    }
    const N: u32 = 100;
    let mut c = vec![0x48, 0xc7, 0xc3, 1, 0, 0, 0]; // mov rbx, 1
    c.extend_from_slice(&[0x49, 0xc7, 0xc7, 0x34, 0x12, 0, 0]); // mov r15, 0x1234
    c.extend_from_slice(&[0x4d, 0x31, 0xc0]); // xor r8, r8
    c.extend_from_slice(&[0xb0, b'A', 0xe6, 0xe9]); // the guest's own: mov al,'A'; out 0xe9,al
    c.push(0xb9); // mov ecx, N
    c.extend_from_slice(&N.to_le_bytes());
    let lp = c.len();
    let mut sites = Vec::new();
    let mut site = |c: &mut Vec<u8>, bytes: &[u8], step: StepOver| {
        sites.push((BASE + c.len() as u64, step));
        c.extend_from_slice(bytes);
    };
    let emu = StepOver::Emulated;
    site(&mut c, &[0x0f, 0x1f, 0x44, 0, 0], emu(StepInsn::Nop(5)));
    site(
        &mut c,
        &[0x41, 0x57],
        emu(StepInsn::Push { reg: 15, len: 2 }),
    ); // push r15
    c.extend_from_slice(&[0x41, 0x5f]); // pop r15
                                        // push rbp; mov %rsp,%rbp under one trap
    site(
        &mut c,
        &[0x55, 0x48, 0x89, 0xe5],
        StepOver::EmulatedPair(StepInsn::Push { reg: 5, len: 1 }, StepInsn::MovRspRbp),
    );
    c.push(0x5d); // pop rbp
                  // push rbx; pop rax under one trap: pop is not emulated, so both are
                  // single-stepped (two steps, the trap's bytes lifted meanwhile).
    site(&mut c, &[0x53, 0x58], StepOver::SingleStep);
    c.extend_from_slice(&[0x49, 0x01, 0xc0]); // add r8, rax
                                              // inc qword [0x6000 + rdi*8]: single-stepped.
    site(
        &mut c,
        &[0x48, 0xff, 0x04, 0xfd, 0x00, 0x60, 0, 0],
        StepOver::SingleStep,
    );
    // add qword [0x6400+rdi*8], 3: a read-modify-write emulated by the
    // monitor (arch::emulate).
    site(
        &mut c,
        &[0x48, 0x83, 0x04, 0xfd, 0x00, 0x64, 0, 0, 0x03],
        StepOver::Interpreted(Code::Add_rm64_imm8, None),
    );
    // push rbx; mov rax, [0x6500+rdi*8] under one trap: a push and a load.
    site(
        &mut c,
        &[0x53, 0x48, 0x8b, 0x04, 0xfd, 0x00, 0x65, 0, 0],
        StepOver::Interpreted(Code::Push_r64, Some(Code::Mov_r64_rm64)),
    );
    c.push(0x5b); // pop rbx
    c.extend_from_slice(&[0x48, 0xff, 0xc0]); // inc rax
    c.extend_from_slice(&[0x48, 0x89, 0x04, 0xfd, 0x00, 0x65, 0, 0]); // mov [0x6500+rdi*8], rax
                                                                      // cmp rbx, 1: its flags, set by the monitor, are what sete sees.
    site(
        &mut c,
        &[0x48, 0x83, 0xfb, 0x01],
        StepOver::Interpreted(Code::Cmp_rm64_imm8, None),
    );
    c.extend_from_slice(&[0x0f, 0x94, 0xc0]); // sete al
    c.extend_from_slice(&[0x48, 0x0f, 0xb6, 0xc0]); // movzx rax, al
    c.extend_from_slice(&[0x48, 0x01, 0x04, 0xfd, 0x00, 0x66, 0, 0]); // add [0x6600+rdi*8], rax
    c.extend_from_slice(&[0xff, 0xc9, 0x75]); // dec ecx; jnz L
    c.push((lp as i64 - (c.len() as i64 + 1)) as u8);
    c.extend_from_slice(&[0x4c, 0x89, 0x04, 0xfd, 0x00, 0x61, 0, 0]); // mov [0x6100+rdi*8], r8
    c.extend_from_slice(&[0x4c, 0x89, 0x3c, 0xfd, 0x00, 0x63, 0, 0]); // mov [0x6300+rdi*8], r15
    c.push(0xf4);

    let hits: Hits = Default::default();
    let mut cfg = VmConfig::raw(c.clone());
    cfg.vcpus = 2;
    cfg.sw_breakpoints = true;
    cfg.sw_trap = TrapKind::PortIo;
    cfg.handlers = Some(counting(hits.clone()));
    let mut vm = vmm::build(cfg).unwrap();
    for &(at, step) in &sites {
        assert_eq!(vm.insert_sw_breakpoint(at, at).unwrap(), step, "{at:#x}");
    }
    let t = std::time::Instant::now();
    vm.start().unwrap();
    assert_eq!(vm.wait(WAIT), Some(VmExit::Halted), "both vCPUs ran to hlt");
    let elapsed = t.elapsed();
    let hits = hits.lock().unwrap().clone();
    assert_eq!(
        hits.len(),
        2 * sites.len(),
        "only our traps reported: {hits:?}"
    );
    for cpu in 0..2u32 {
        for &(at, _) in &sites {
            assert_eq!(
                hits.get(&(cpu, at)).copied(),
                Some(u64::from(N)),
                "vCPU {cpu} at {at:#x}: {hits:?}"
            );
        }
        let i = u64::from(cpu);
        assert_eq!(
            read_u64(&vm, 0x6000 + 8 * i),
            u64::from(N),
            "inc once per hit"
        );
        assert_eq!(
            read_u64(&vm, 0x6100 + 8 * i),
            u64::from(N),
            "push rbx / pop rax stepped exactly once per hit"
        );
        assert_eq!(read_u64(&vm, 0x6300 + 8 * i), 0x1234, "push r15 / pop r15");
        assert_eq!(
            read_u64(&vm, 0x6400 + 8 * i),
            3 * u64::from(N),
            "add [mem], 3"
        );
        assert_eq!(read_u64(&vm, 0x6500 + 8 * i), u64::from(N), "push; load");
        assert_eq!(read_u64(&vm, 0x6600 + 8 * i), u64::from(N), "cmp's ZF");
    }
    let s = &vm.sw_breakpoints().stats;
    let n = u64::from(N) * 2;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&s.hits), n * sites.len() as u64);
    assert_eq!(load(&s.emulated), n * 6);
    assert_eq!(load(&s.single_stepped), n * 2);
    assert_eq!(load(&s.reinjected), 0);
    let mut now = vec![0u8; c.len()];
    vm.read_phys(BASE, &mut now).unwrap();
    for &(at, _) in &sites {
        let o = (at - BASE) as usize;
        assert_eq!(now[o..o + 2], [0xe6, 0xe9], "trap at {at:#x}");
    }
    for &(at, _) in &sites {
        vm.remove_sw_breakpoint(at).unwrap();
    }
    vm.read_phys(BASE, &mut now).unwrap();
    assert_eq!(now, c, "every byte restored");
    println!(
        "{} port-I/O trap hits on 2 vCPUs in {elapsed:?}",
        load(&s.hits)
    );
}

#[test]
fn a_trap_never_crosses_a_page_or_overlaps_another() {
    if !kvm_usable() {
        return;
    }
    let mut c = vec![0x90; 0x1000];
    c[0xfff] = 0x90;
    c.extend_from_slice(&[0x90, 0xf4]);
    let mut cfg = VmConfig::raw(c.clone());
    cfg.sw_breakpoints = true;
    cfg.sw_trap = TrapKind::PortIo;
    let vm = vmm::build(cfg).unwrap();
    let page_end = BASE + 0xfff;
    assert!(vm.insert_sw_breakpoint(page_end, page_end).is_err());
    vm.insert_sw_breakpoint(BASE + 0x10, BASE + 0x10).unwrap();
    assert!(vm.insert_sw_breakpoint(BASE + 0x11, BASE + 0x11).is_err());
    assert!(vm.insert_sw_breakpoint(BASE + 0xf, BASE + 0xf).is_err());
    vm.insert_sw_breakpoint(BASE + 0x12, BASE + 0x12).unwrap();
    vm.remove_sw_breakpoint(BASE + 0x10).unwrap();
    vm.remove_sw_breakpoint(BASE + 0x12).unwrap();
    let mut now = vec![0u8; c.len()];
    vm.read_phys(BASE, &mut now).unwrap();
    assert_eq!(now, c);
}
