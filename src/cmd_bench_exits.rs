//! `hvtrace bench exits`.

use anyhow::{Context, Result};

/// `hvtrace bench exits`: one debug exit through the monitor against a bare
/// KVM_RUN loop.
pub fn run() -> Result<()> {
    let probe = vmm::probe_native_virtualization();
    println!("kvm: {}", probe.reason);
    let r = vmm::bench::exits(2000, 9).context("debug-exit benchmark")?;
    println!("{r}");
    println!("ratio {:.3} (goal <= 1.10)", r.ratio);
    for (irqchip, debug, what) in [
        (false, None, "no irqchip, no breakpoint"),
        (true, None, "in-kernel irqchip, no breakpoint"),
        (
            true,
            Some(0x100),
            "in-kernel irqchip, a breakpoint armed on the loop's page",
        ),
    ] {
        let rt = vmm::bench::pio_round_trip_with(2000, 9, irqchip, debug)
            .context("exit round-trip benchmark")?;
        println!(
            "bare exit round trip (port I/O, nothing done in user space; {what}): {:.2} us",
            rt / 1e3
        );
    }
    Ok(())
}
