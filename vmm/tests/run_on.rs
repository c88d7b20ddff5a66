//! Requests to a vCPU thread with a bound (`VcpuHandle::run_on_within`):
//! answered by a running guest's thread at once, refused in time by one
//! that is busy, so a caller reporting on a hung guest never hangs itself.

use std::sync::mpsc;
use std::time::Duration;

use vmm::{Action, DebugError, DebugEvent, VcpuCtx, VmConfig, VmExit};

const BASE: u64 = vmm::layout::RAW_CODE_START;

#[test]
fn a_bounded_request_is_answered_or_refused_in_time() {
    if std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    // `L: jmp L`, and a handler that holds its thread for 3 s at a kick.
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let held_tx = std::sync::Mutex::new(held_tx);
    let mut cfg = VmConfig::raw(vec![0xeb, 0xfe]);
    cfg.handlers = Some(Box::new(move |_| {
        let tx = held_tx.lock().unwrap().clone();
        Box::new(move |_: &mut VcpuCtx<'_>, ev: DebugEvent| {
            if ev == DebugEvent::Kick {
                let _ = tx.send(());
                std::thread::sleep(Duration::from_secs(3));
            }
            Action::Continue
        })
    }));
    let mut vm = vmm::build(cfg).unwrap();
    vm.start().unwrap();
    let h = vm.vcpu(0).unwrap();
    let rip = h
        .run_on_within(Duration::from_secs(10), |c| c.regs().map(|r| r.rip))
        .unwrap()
        .unwrap();
    assert_eq!(rip, BASE, "the guest spins on its jmp");
    h.kick();
    held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let t = std::time::Instant::now();
    let busy = h.run_on_within(Duration::from_millis(300), |c| c.index());
    assert!(matches!(busy, Err(DebugError::VcpuBusy(0, _))), "{busy:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    vm.stop();
    assert_eq!(vm.wait(Duration::from_secs(30)), Some(VmExit::Stopped));
}
