//! End-to-end test of `hvtrace latency` on the default image, on both
//! engines: keys typed by the host at known instants are followed through
//! the guest, and the hops the trace shows must be causally ordered between
//! the two instants the host measured itself (typing and seeing the echo).

mod common;

#[test]
fn each_key_is_followed_from_the_serial_interrupt_to_the_echo() {
    keys_followed(common::hvtrace(), "qemu");
}

/// The same on hvtrace's own monitor (the stock-KVM harness here): the host
/// types into the monitor's 16550.
#[test]
fn each_key_is_followed_on_the_kvm_monitor() {
    let Some((cmd, _machine)) = common::hvtrace_on_kvm_locked() else {
        return;
    };
    keys_followed(cmd, "kvm");
}

fn keys_followed(mut hvtrace: std::process::Command, backend: &str) {
    common::image_dir("6.1");
    let dir = std::env::temp_dir().join(format!(
        "hvtrace-latency-test-{backend}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let out = hvtrace
        .args([
            "latency",
            "--backend",
            backend,
            "--key",
            "x",
            "--count",
            "5",
            // A key typed before the reader is back in read() has no
            // wake-up hop; under the nested KVM a traced write can take
            // 300 ms past its echo, so the pause after an echo is long.
            "--interval-ms",
            if backend == "kvm" { "1500" } else { "100" },
            "--json",
            "-o",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["lost"], 0);
    let keys = r["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 5);
    let hops = [
        "serial_irq",
        "wakeup",
        "runnable",
        "scheduled",
        "read_returns",
        "write_entry",
        "write_returns",
        "echo_at_host",
    ];
    for k in keys {
        let t: Vec<u64> = hops
            .iter()
            .map(|h| {
                k[h].as_u64()
                    .unwrap_or_else(|| panic!("hop {h} not seen: {k}"))
            })
            .collect();
        // Causal order: interrupt, waking, runnable, run, read returns,
        // write begins;
        // then the byte leaves during the write, so the host sees the echo
        // after the write began (and maybe before it returns). The trace's
        // clock and the host's must agree for this to hold.
        assert!(
            t[..7].windows(2).all(|w| w[0] <= w[1]),
            "hops out of order: {k}"
        );
        assert!(t[7] >= t[5], "echo seen before the write began: {k}");
        assert!(
            t[7] < 5_000_000_000,
            "echo within the driver's timeout: {k}"
        );
    }
    assert_eq!(r["end_to_end"]["count"], 5);
    // Each key interrupt came from the serial port's irq line.
    let text = common::hvtrace()
        .arg("report")
        .arg(&dir)
        .arg("--json")
        .output()
        .unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&text.stdout).unwrap();
    let serial = rep["irqs"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("ttyS0"))
        .expect("ttyS0 irq in the trace");
    assert!(serial.1["count"].as_u64().unwrap() >= 5, "{serial:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
