//! The real Debian 6.1 and 6.12 kernels on hvtrace's KVM monitor. On KVM-PVM it runs
//! in KVM's instruction emulator and gets only through its first printk
//! lines in a minute; those must show the banner, our exact command line
//! and the e820 map we built, and a hardware breakpoint on `start_kernel`
//! (address from `guest-symbols`) must fire exactly once, on vCPU 0.
//!
//! At that breakpoint the KVM engine's software page walk
//! (`introspect::paging::translate`, what `engine_kvm::context::KvmContext` reads
//! guest-virtual memory with) runs on the kernel's own page tables (its
//! CR3): `linux_banner` must translate to the same page as KVM_TRANSLATE
//! gives and read "Linux version <line>."; an unmapped user address and a
//! non-canonical one must fail cleanly.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use introspect::paging::{self, WalkError};
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

/// What the software page walk found at `start_kernel`.
#[derive(Debug)]
struct Walk {
    cr3: u64,
    banner: Result<paging::Translation, WalkError>,
    kvm_banner_pa: Option<u64>,
    text: Vec<u8>,
    unmapped: Result<paging::Translation, WalkError>,
    non_canonical: Result<paging::Translation, WalkError>,
}

/// Walks the guest's own page tables at a stop (as the KVM engine does).
fn walk(ctx: &VcpuCtx<'_>, banner_va: u64) -> Walk {
    let s = ctx.sregs().expect("sregs");
    let la57 = s.cr4 & paging::CR4_LA57 != 0;
    let phys = |pa: u64| {
        let mut b = [0u8; 8];
        ctx.read_phys(pa, &mut b)
            .ok()
            .map(|_| u64::from_le_bytes(b))
    };
    let banner = paging::translate(&phys, s.cr3, banner_va, la57);
    // 64 bytes, page by page as the engine reads them.
    let mut text = vec![0u8; 64];
    let mut done = 0;
    while done < text.len() {
        let va = banner_va + done as u64;
        let Ok(t) = paging::translate(&phys, s.cr3, va, la57) else {
            break;
        };
        let n = ((t.page_size - (va & (t.page_size - 1))) as usize).min(text.len() - done);
        ctx.read_phys(t.pa, &mut text[done..done + n])
            .expect("banner bytes");
        done += n;
    }
    Walk {
        cr3: s.cr3,
        banner,
        kvm_banner_pa: ctx.translate(banner_va).ok().flatten(),
        text,
        unmapped: paging::translate(&phys, s.cr3, 0x0000_7fff_f000_0000, la57),
        non_canonical: paging::translate(&phys, s.cr3, 0x0000_8000_0000_0000, la57),
    }
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
    let banner_va = kernel
        .symbols
        .addr("linux_banner")
        .expect("linux_banner in kallsyms");
    let walked: Arc<Mutex<Option<Walk>>> = Arc::default();
    let w2 = walked.clone();
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
        let walked = w2.clone();
        Box::new(move |ctx: &mut VcpuCtx<'_>, ev: DebugEvent| {
            match ev {
                DebugEvent::Started => ctx
                    .set_hw_breakpoint(0, Some(HwBreakpoint::exec(start_kernel)))
                    .unwrap(),
                DebugEvent::HwBreakpoint { slot: 0, pc, .. } => {
                    assert_eq!(pc, start_kernel);
                    hits[ctx.index() as usize].fetch_add(1, Ordering::SeqCst);
                    walked.lock().unwrap().get_or_insert(walk(ctx, banner_va));
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

    let w = walked
        .lock()
        .unwrap()
        .take()
        .expect("walked at start_kernel");
    let t = w
        .banner
        .unwrap_or_else(|e| panic!("linux_banner {banner_va:#x}: {e}"));
    // ELF boot: the kernel image's virtual base __START_KERNEL_map maps
    // physical 0, each segment at its p_paddr.
    assert_eq!(t.pa, banner_va - 0xffff_ffff_8000_0000, "{w:?}");
    assert_eq!(w.kvm_banner_pa, Some(t.pa), "KVM_TRANSLATE agrees: {w:?}");
    let text = String::from_utf8_lossy(&w.text);
    assert!(
        text.starts_with(&format!("Linux version {line}.")),
        "read through the guest's page tables: {text:?}"
    );
    assert!(
        matches!(w.unmapped, Err(WalkError::NotPresent { .. })),
        "{w:?}"
    );
    assert!(
        matches!(w.non_canonical, Err(WalkError::NonCanonical(_))),
        "{w:?}"
    );
    println!(
        "page walk at start_kernel (CR3 {:#x}): linux_banner {banner_va:#x} -> {:#x} in a {} KiB page: {:?}",
        w.cr3,
        t.pa,
        t.page_size >> 10,
        text.lines().next().unwrap_or("")
    );
}
