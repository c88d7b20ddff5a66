//! The real Debian 6.1 and 6.12 kernels on hvtrace's KVM monitor. On KVM-PVM it runs
//! in KVM's instruction emulator and gets only through its first printk
//! lines in a minute; those must show the banner, our exact command line
//! and the e820 map we built, and a hardware breakpoint on `start_kernel`
//! (address from `guest-symbols`) must fire exactly once, on vCPU 0.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::{Action, DebugEvent, HwBreakpoint, VcpuCtx};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kvm_usable() -> bool {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[test]
fn debian_6_1_prints_our_boot_setup_and_hits_start_kernel() {
    early_boot("6.1");
}

#[test]
fn debian_6_12_prints_our_boot_setup_and_hits_start_kernel() {
    early_boot("6.12");
}

fn early_boot(line: &str) {
    if !kvm_usable() {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    let probe = vmm::probe_native_virtualization();
    let vmlinuz = common::image_dir(line).join("vmlinuz");
    let kernel = guest_symbols::KernelImage::open(&vmlinuz).expect("kernel symbols");
    let start_kernel = kernel
        .symbols
        .addr("start_kernel")
        .expect("start_kernel in kallsyms");
    let tmp = std::env::temp_dir().join(format!(
        "hvtrace-kvm-boot-{}-{line}.elf",
        std::process::id()
    ));
    guest_symbols::extract_vmlinux_to(&vmlinuz, &tmp).expect("extract vmlinux");

    let cmdline = format!(
        "nokaslr console=ttyS0 earlyprintk=serial hvtrace.test={}",
        std::process::id()
    );
    let memory_mib = 512;
    let cap = Capture::default();
    let hits: Arc<Vec<AtomicU32>> = Arc::new((0..2).map(|_| AtomicU32::new(0)).collect());
    let h2 = hits.clone();
    let mut cfg = vmm::VmConfig::linux(tmp.clone(), None, cmdline.clone());
    cfg.vcpus = 2;
    cfg.memory_mib = memory_mib;
    cfg.emulator_cpuid = !probe.native;
    cfg.console = Some(Box::new(cap.clone()));
    cfg.handlers = Some(Box::new(move |_| {
        let hits = h2.clone();
        Box::new(move |ctx: &mut VcpuCtx<'_>, ev: DebugEvent| {
            match ev {
                DebugEvent::Started => ctx
                    .set_hw_breakpoint(0, Some(HwBreakpoint::exec(start_kernel)))
                    .unwrap(),
                DebugEvent::HwBreakpoint { slot: 0, pc, .. } => {
                    assert_eq!(pc, start_kernel);
                    hits[ctx.index() as usize].fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
            Action::Continue
        })
    }));
    let mut vm = vmm::build(cfg).expect("build VM");
    vm.start().expect("start");

    let mut want: Vec<String> = vec![
        format!("Linux version {line}."),
        format!("Command line: {cmdline}"),
    ];
    for (addr, size, ty) in vmm::arch::boot_params::e820_map(u64::from(memory_mib) << 20) {
        let kind = if ty == vmm::layout::E820_RAM {
            "usable"
        } else {
            "reserved"
        };
        want.push(format!(
            "BIOS-e820: [mem {addr:#018x}-{:#018x}] {kind}",
            addr + size - 1
        ));
    }
    let t = Instant::now();
    let text = loop {
        let text = String::from_utf8_lossy(&cap.0.lock().unwrap()).into_owned();
        if want.iter().all(|w| text.contains(w.as_str())) || t.elapsed() > Duration::from_secs(60) {
            break text;
        }
        if let Some(exit) = vm.wait(Duration::from_millis(200)) {
            panic!("guest ended early: {exit:?}\n{text}");
        }
    };
    let elapsed = t.elapsed();
    vm.stop();
    vm.shutdown();
    let _ = std::fs::remove_file(&tmp);
    for w in &want {
        assert!(
            text.contains(w.as_str()),
            "missing {w:?} after {elapsed:?}:\n{text}"
        );
    }
    println!("banner, command line and e820 map on the console after {elapsed:?}");
    assert_eq!(
        hits[0].load(Ordering::SeqCst),
        1,
        "start_kernel hit once on vCPU 0"
    );
    assert_eq!(hits[1].load(Ordering::SeqCst), 0, "never on vCPU 1");
}
