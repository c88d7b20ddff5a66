//! Prints what a guest sees for CPUID leaf 1 (with and without the
//! emulator-safe normalisation).
fn main() {
    for emu in [false, true] {
        // mov eax,1; cpuid; jmp $
        let mut cfg = vmm::VmConfig::raw(vec![0xb8, 1, 0, 0, 0, 0x0f, 0xa2, 0xeb, 0xfe]);
        cfg.emulator_cpuid = emu;
        let mut vm = vmm::build(cfg).unwrap();
        vm.start().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        vm.pause_all(std::time::Duration::from_secs(5));
        let r = vm.vcpu(0).unwrap().regs().unwrap();
        println!(
            "emulator_cpuid={emu}: leaf1 ecx {:#010x} edx {:#010x} ebx {:#010x}",
            r.rcx, r.rdx, r.rbx
        );
    }
}
