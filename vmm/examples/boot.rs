//! Boots a kernel on the monitor: `boot KERNEL [INITRD] CMDLINE [SECONDS]`,
//! serial console on stderr.

use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 3 {
        eprintln!("usage: boot KERNEL [INITRD] CMDLINE [SECONDS]");
        std::process::exit(2);
    }
    let (initrd, cmdline, secs) = if a.len() >= 4 && std::path::Path::new(&a[2]).exists() {
        (Some(a[2].clone().into()), a[3].clone(), a.get(4))
    } else {
        (None, a[2].clone(), a.get(3))
    };
    let secs: u64 = secs.and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut cfg = vmm::VmConfig::linux(a[1].clone().into(), initrd, cmdline);
    cfg.console = Some(Box::new(std::io::stderr()));
    cfg.emulator_cpuid = std::env::var_os("EMULATOR_CPUID").is_some();
    let t = Instant::now();
    let mut vm = vmm::build(cfg).expect("build");
    vm.start().expect("start");
    let r = vm.wait(Duration::from_secs(secs));
    eprintln!("\n[boot] after {:?}: {:?}", t.elapsed(), r);
    if let Some(h) = vm.vcpu(0) {
        if vm.pause_all(Duration::from_secs(5)) {
            if let Ok(r) = h.regs() {
                eprintln!("[boot] vcpu0 rip {:#x}", r.rip);
            }
        }
    }
}
