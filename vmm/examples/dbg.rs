use vmm::*;
fn main() {
    let mut c = vec![0x31, 0xc0, 0xff, 0xc0, 0xff, 0xc0, 0xeb, 0xfa];
    if std::env::args().nth(1).as_deref() == Some("step") {
        c = vec![0x90, 0x90, 0x31, 0xc0, 0xff, 0xc0, 0xf4];
    }
    if std::env::args().nth(1).as_deref() == Some("watch") {
        c = vec![
            0xb8, 0x34, 0x12, 0, 0, 0x89, 0x04, 0x25, 0x00, 0x50, 0, 0, 0x90, 0x90, 0xf4,
        ];
    }
    let mut cfg = VmConfig::raw(c);
    let mode = std::env::args().nth(1).unwrap_or_default();
    cfg.handlers = Some(Box::new(move |_| {
        let mode = mode.clone();
        let mut n = 0;
        Box::new(move |ctx: &mut VcpuCtx<'_>, ev: DebugEvent| {
            if ev == DebugEvent::Started {
                if mode == "step" {
                    ctx.set_single_step(true).unwrap();
                } else if mode == "watch" {
                    ctx.set_hw_breakpoint(0, Some(HwBreakpoint::write(0x5000, 8)))
                        .unwrap();
                } else {
                    ctx.set_hw_breakpoint(0, Some(HwBreakpoint::exec(0x100002)))
                        .unwrap();
                }
            }
            let r = ctx.regs().unwrap();
            eprintln!(
                "{ev:?} rip {:#x} rax {} rflags {:#x}",
                r.rip, r.rax, r.rflags
            );
            n += 1;
            if n > 8 {
                Action::Stop
            } else {
                Action::Continue
            }
        })
    }));
    let mut vm = build(cfg).unwrap();
    vm.start().unwrap();
    eprintln!("{:?}", vm.wait(std::time::Duration::from_secs(5)));
}
