//! VM-wide software breakpoints on synthetic guests: exact hit counts on
//! two vCPUs running the same probed code at once (emulated step-over for
//! the NOP family, endbr64, push and mov %rsp,%rbp; the single-step
//! fallback with the other vCPU paused for anything else), the guest's own
//! int3 reinjected to its IDT handler, and the exact bytes back after
//! removal.
//!
//! Where KVM delivers #BP exits (hardware KVM) they run on those. Where it
//! does not (KVM-PVM: its instruction emulator fails on int3 instead) they
//! run on the monitor's emulation-failure path, which recognises its own
//! int3s, so the same list, step-over and reinjection logic is exercised;
//! they say which. Without a usable /dev/kvm they print `skipped: ...`.

mod hits;
mod idt;

use std::time::Duration;

use hits::{counting, read_u64, Hits};

use vmm::{StepInsn, StepOver, VmConfig, VmExit};

const BASE: u64 = vmm::layout::RAW_CODE_START;
const WAIT: Duration = Duration::from_secs(120);

/// None if software breakpoints cannot be tested here, else how #BP
/// reaches the monitor.
fn mechanism() -> Option<&'static str> {
    let usable = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        println!("skipped: KVM does not deliver software breakpoints here (no usable /dev/kvm)");
        return None;
    }
    Some(match vmm::probe_sw_breakpoints() {
        Ok(true) => "#BP debug exits (KVM_GUESTDBG_USE_SW_BP)",
        _ => "KVM does not deliver #BP here; the monitor's emulation-failure path",
    })
}

#[test]
fn probes_on_two_vcpus_count_exactly_and_leave_no_byte_changed() {
    let Some(how) = mechanism() else { return };
    const N: u32 = 150;
    let mut c = vec![0x48, 0xc7, 0xc3, 1, 0, 0, 0]; // mov rbx, 1
    c.extend_from_slice(&[0x4d, 0x31, 0xc0]); // xor r8, r8
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
    site(&mut c, &[0xf3, 0x0f, 0x1e, 0xfa], emu(StepInsn::Endbr64));
    site(&mut c, &[0x53], emu(StepInsn::Push { reg: 3, len: 1 })); // push rbx
    c.extend_from_slice(&[0x58, 0x49, 0x01, 0xc0]); // pop rax; add r8, rax
    site(&mut c, &[0x48, 0x89, 0xe5], emu(StepInsn::MovRspRbp));
    // inc qword [0x6000 + rdi*8]: not emulated, single-stepped.
    site(
        &mut c,
        &[0x48, 0xff, 0x04, 0xfd, 0x00, 0x60, 0, 0],
        StepOver::SingleStep,
    );
    c.extend_from_slice(&[0xff, 0xc9, 0x75]); // dec ecx; jnz L
    c.push((lp as i64 - (c.len() as i64 + 1)) as u8);
    c.extend_from_slice(&[0x4c, 0x89, 0x04, 0xfd, 0x00, 0x61, 0, 0]); // mov [0x6100+rdi*8], r8
    c.extend_from_slice(&[0x48, 0x89, 0x2c, 0xfd, 0x00, 0x62, 0, 0]); // mov [0x6200+rdi*8], rbp
    c.push(0xf4);

    let hits: Hits = Default::default();
    let mut cfg = VmConfig::raw(c.clone());
    cfg.vcpus = 2;
    cfg.sw_breakpoints = true;
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
            "inc ran once per hit"
        );
        assert_eq!(
            read_u64(&vm, 0x6100 + 8 * i),
            u64::from(N),
            "push stored rbx"
        );
        assert_eq!(
            read_u64(&vm, 0x6200 + 8 * i),
            vmm::builder::raw_stack(cpu),
            "mov %rsp,%rbp with the stack balanced"
        );
    }
    let s = &vm.sw_breakpoints().stats;
    let n = u64::from(N) * 2;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&s.hits), n * sites.len() as u64);
    assert_eq!(load(&s.emulated), n * 4);
    assert_eq!(load(&s.single_stepped), n);
    assert_eq!(load(&s.reinjected), 0);
    // Removal restores the exact bytes.
    let mut now = vec![0u8; c.len()];
    vm.read_phys(BASE, &mut now).unwrap();
    assert_eq!(now.iter().filter(|&&b| b == 0xcc).count(), sites.len());
    for &(at, _) in &sites {
        vm.remove_sw_breakpoint(at).unwrap();
    }
    vm.read_phys(BASE, &mut now).unwrap();
    assert_eq!(now, c, "every byte restored");
    println!(
        "{} hits on 2 vCPUs in {elapsed:?} through {how}",
        load(&s.hits)
    );
}

#[test]
fn the_guest_own_int3_is_reinjected_and_ours_still_hit() {
    let Some(how) = mechanism() else { return };
    // lidt [0x3000]; nop5 (ours); int3 (the guest's); hlt
    // handler at +0x40: nop5 (ours); mov rax,[rsp]; mov [0x5000],rax; hlt
    let mut c = idt::LIDT.to_vec();
    let ours1 = BASE + c.len() as u64;
    c.extend_from_slice(&[0x0f, 0x1f, 0x44, 0, 0]);
    c.extend_from_slice(&[0xcc, 0xf4]);
    let after_int3 = BASE + c.len() as u64 - 1;
    c.resize(0x40, 0x90);
    let handler = BASE + 0x40;
    c.extend_from_slice(&[0x0f, 0x1f, 0x44, 0, 0]);
    c.extend_from_slice(&idt::STORE_RIP_AND_HALT);

    let hits: Hits = Default::default();
    let mut cfg = VmConfig::raw(c.clone());
    cfg.sw_breakpoints = true;
    cfg.handlers = Some(counting(hits.clone()));
    let mut vm = vmm::build(cfg).unwrap();
    idt::install(&vm, 3, handler);
    vm.insert_sw_breakpoint(ours1, ours1).unwrap();
    vm.insert_sw_breakpoint(handler, handler).unwrap();
    assert!(
        vm.insert_sw_breakpoint(after_int3 - 1, after_int3 - 1)
            .is_err(),
        "the guest's own int3 cannot be taken over"
    );
    vm.start().unwrap();
    assert_eq!(vm.wait(WAIT), Some(VmExit::Halted));
    assert_eq!(
        idt::stored_rip(&vm),
        after_int3,
        "the guest's #BP handler ran with RIP after its int3"
    );
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.get(&(0, ours1)), Some(&1), "{hits:?}");
    assert_eq!(hits.get(&(0, handler)), Some(&1), "{hits:?}");
    assert_eq!(hits.len(), 2, "the guest's int3 is not reported: {hits:?}");
    vm.shutdown();
    let mut now = vec![0u8; c.len()];
    vm.read_phys(BASE, &mut now).unwrap();
    assert_eq!(now, c, "shutdown restored every byte");
    println!("reinjection checked through {how}");
}

#[test]
fn insertion_needs_a_vm_that_traps_int3() {
    if mechanism().is_none() {
        return;
    }
    let vm = vmm::build(VmConfig::raw(vec![0x90, 0xf4])).unwrap();
    assert!(vm.insert_sw_breakpoint(BASE, BASE).is_err());
    let mut b = [0u8; 1];
    vm.read_phys(BASE, &mut b).unwrap();
    assert_eq!(b[0], 0x90);
}
