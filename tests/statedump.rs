//! The statedump's events besides the process states (lttng-modules
//! 2.13's file descriptors, memory maps, interrupts, CPU topology, block
//! devices, network interfaces), held against what the guest's own /proc
//! and /sys say, on both kernel lines (QEMU engine, two vCPUs).
//!
//! The statedump is taken (`--statedump-at /bin/spin`) while a shell that
//! holds /etc/passwd, /tmp/x and the removed /tmp/gone open waits for `/bin/spin`; the shell
//! listed its descriptors and maps just before, and again after. A
//! `/bin/storm` with a thread per vCPU runs meanwhile: every thread has
//! its process state, as lttng-modules lists them.

mod common;
mod record_support;

use std::collections::BTreeSet;

use record_support::{record_on, Ev, Recorded};

const SCRIPT: &str = "exec 3</etc/passwd 4>/tmp/x 5>/tmp/gone; rm /tmp/gone; echo HOLDER $$; \
ip link set lo up; ip addr add 192.168.7.1/24 dev lo; ip -4 -o addr | sed 's/^/ADDR /'; \
/bin/storm 100000000 >/dev/null & S=$!; sleep 0.3; echo THREADS $S $(ls /proc/$S/task); \
ls -l /proc/$$/fd | sed 's/^/FD /'; sed 's/^/MAP1 /' /proc/$$/maps; \
/bin/spin 1; kill $S; \
sed 's/^/MAP2 /' /proc/$$/maps; sed 's/^/IRQ /' /proc/interrupts; \
grep -E '^(processor|vendor_id|cpu family|model|model name|physical id|core id|cpu cores)\\s' /proc/cpuinfo | sed 's/^/CPU /'; \
echo NET $(ls /sys/class/net); echo BLOCK $(ls /sys/class/block)";

/// A field babeltrace2 printed as an integer in any base (octal with a
/// leading 0, as the `flags` field is declared).
fn num(e: &Ev, k: &str) -> u64 {
    let v = e
        .fields
        .get(k)
        .unwrap_or_else(|| panic!("{e:?} has no {k}"));
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else if v.len() > 1 && v.starts_with('0') {
        u64::from_str_radix(&v[1..], 8).unwrap()
    } else {
        v.parse().unwrap()
    }
}

/// The console lines after `tag ` (the guest's own output).
fn tagged<'a>(r: &'a Recorded, tag: &str) -> Vec<&'a str> {
    let t = format!("{tag} ");
    r.console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| {
            if l == tag {
                Some("")
            } else {
                l.strip_prefix(t.as_str())
            }
        })
        .collect()
}

/// The statedump's events of class `name` (all between its start and end).
fn dumped<'a>(r: &'a Recorded, name: &str) -> Vec<&'a Ev> {
    let at = |n: &str| {
        r.events
            .iter()
            .position(|e| e.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let (start, end) = (at("lttng_statedump_start"), at("lttng_statedump_end"));
    let full = format!("lttng_statedump_{name}");
    let evs: Vec<&Ev> = r.events.iter().filter(|e| e.name == full).collect();
    let inside = r.events[start..end]
        .iter()
        .filter(|e| e.name == full)
        .count();
    assert_eq!(inside, evs.len(), "{full} outside the statedump");
    evs
}

/// (start, end, offset, inode) of /proc/PID/maps lines, [vsyscall] (not
/// a VMA) left out.
fn maps(lines: &[&str]) -> BTreeSet<(u64, u64, u64, u64)> {
    lines
        .iter()
        .filter(|l| !l.contains("[vsyscall]"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (s, e) = w[0].split_once('-').unwrap();
            let h = |x: &str| u64::from_str_radix(x, 16).unwrap();
            (h(s), h(e), h(w[2]), w[4].parse().unwrap())
        })
        .collect()
}

fn statedump_matches_guest(backend: &str, line: &str) {
    let r = record_on(
        backend,
        line,
        2,
        "sdump",
        &["--events", "proc", "--statedump-at", "/bin/spin"],
        &["/bin/sh", "-c", SCRIPT],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let holder: i64 = tagged(&r, "HOLDER")[0].trim().parse().unwrap();

    // -- threads: each of storm's, the same process
    let threads = tagged(&r, "THREADS")[0];
    let mut w = threads
        .split_whitespace()
        .map(|t| t.parse::<i64>().unwrap());
    let storm = w.next().unwrap();
    let listed: BTreeSet<i64> = w.collect();
    assert_eq!(
        listed.len(),
        3,
        "storm's main thread and one per vCPU: {threads}"
    );
    let dumped_tids: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "lttng_statedump_process_state" && e.int("pid") == storm)
        .map(|e| e.int("tid"))
        .collect();
    assert_eq!(dumped_tids, listed, "storm's threads vs /proc/{storm}/task");

    // -- file descriptors: the holder's table, by file_table_address
    let ps = r
        .events
        .iter()
        .find(|e| e.name == "lttng_statedump_process_state" && e.int("pid") == holder)
        .expect("the holder's process state");
    let table = num(ps, "file_table_address");
    assert_ne!(table, 0);
    let fds: BTreeSet<(u64, String)> = dumped(&r, "file_descriptor")
        .into_iter()
        .filter(|e| num(e, "file_table_address") == table)
        .map(|e| (num(e, "fd"), e.text("filename")))
        .collect();
    let listed: BTreeSet<(u64, String)> = tagged(&r, "FD")
        .iter()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(l, target)| {
            let fd = l.split_whitespace().last().unwrap().parse().unwrap();
            (fd, target.trim().to_string())
        })
        .collect();
    assert!(listed.contains(&(3, "/etc/passwd".into())), "{listed:?}");
    assert!(listed.contains(&(4, "/tmp/x".into())), "{listed:?}");
    assert!(
        listed.contains(&(5, "/tmp/gone (deleted)".into())),
        "{listed:?}"
    );
    assert_eq!(fds, listed, "the holder's descriptors vs /proc/{holder}/fd");
    for e in dumped(&r, "file_descriptor") {
        if num(e, "file_table_address") == table {
            // O_RDONLY / O_WRONLY, and FMODE_READ / FMODE_WRITE
            match num(e, "fd") {
                3 => assert!(
                    num(e, "flags") & 3 == 0 && num(e, "fmode") & 3 == 1,
                    "{e:?}"
                ),
                4 => assert!(
                    num(e, "flags") & 3 == 1 && num(e, "fmode") & 3 == 2,
                    "{e:?}"
                ),
                _ => {}
            }
        }
    }

    // -- memory maps: as /proc/PID/maps before or after the statedump
    // (the heap may grow in between); /proc shows 0 as an anonymous
    // map's offset, lttng-modules the raw vm_pgoff
    let vmas: BTreeSet<(u64, u64, u64, u64)> = dumped(&r, "vm_map")
        .into_iter()
        .filter(|e| e.int("pid") == holder)
        .map(|e| {
            let inode = num(e, "inode");
            let pgoff = if inode == 0 { 0 } else { num(e, "pgoff") };
            (num(e, "start"), num(e, "end"), pgoff, inode)
        })
        .collect();
    let (m1, m2) = (maps(&tagged(&r, "MAP1")), maps(&tagged(&r, "MAP2")));
    assert!(m1.len() > 5, "{m1:?}");
    assert!(
        vmas == m1 || vmas == m2,
        "vm_map of {holder}: {vmas:x?}\n/proc maps: {m1:x?}\nafter: {m2:x?}"
    );

    // -- interrupts: (irq, chip, action) of each /proc/interrupts line
    // with actions
    let ncpu = tagged(&r, "CPU")
        .iter()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(ncpu, 2);
    let proc_irqs: BTreeSet<(u64, String, String)> = tagged(&r, "IRQ")
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let irq = w.first()?.strip_suffix(':')?.parse().ok()?;
            let chip = w.get(1 + ncpu)?.to_string();
            // then "HWIRQ-TYPE" ("2-edge"), absent for a chip without an
            // irq domain (the PIC's "XT-PIC"), then the actions
            let mut rest = w.get(2 + ncpu..)?;
            if rest.first().is_some_and(|t| {
                t.contains('-') && t.starts_with(|c: char| c.is_ascii_digit() || c == '-')
            }) {
                rest = &rest[1..];
            }
            let actions = Some(rest).filter(|a| !a.is_empty())?.join(" ");
            Some(
                actions
                    .split(", ")
                    .map(|a| (irq, chip.clone(), a.to_string()))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    let irqs: BTreeSet<(u64, String, String)> = dumped(&r, "interrupt")
        .into_iter()
        .map(|e| (num(e, "irq"), e.text("name"), e.text("action")))
        .collect();
    // the serial console's irq is there on both engines' machines
    assert!(
        proc_irqs.iter().any(|(_, _, a)| a == "ttyS0"),
        "{proc_irqs:?}"
    );
    // /proc/interrupts hides a chained irq that never fired (the PIC's
    // `cascade` on the KVM monitor's machine): the trace may list more,
    // only of irq numbers /proc does not show
    let shown: BTreeSet<u64> = tagged(&r, "IRQ")
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.strip_suffix(':')?.parse().ok())
        .collect();
    assert!(
        irqs.is_superset(&proc_irqs)
            && irqs
                .difference(&proc_irqs)
                .all(|(irq, _, _)| !shown.contains(irq)),
        "interrupts {irqs:?} vs /proc/interrupts {proc_irqs:?}"
    );

    // -- CPU topology: one per vCPU, as /proc/cpuinfo says
    let cpuinfo = tagged(&r, "CPU");
    let field = |cpu: usize, k: &str| -> String {
        let mut n = usize::MAX;
        for l in &cpuinfo {
            let (key, v) = l.split_once(':').unwrap();
            if key.trim() == "processor" {
                n = v.trim().parse().unwrap();
            } else if n == cpu && key.trim() == k {
                return v.trim().to_string();
            }
        }
        panic!("cpuinfo of {cpu} has no {k}: {cpuinfo:?}")
    };
    let topo = dumped(&r, "cpu_topology");
    assert_eq!(topo.len(), 2, "{topo:?}");
    for (i, e) in topo.iter().enumerate() {
        assert_eq!(num(e, "cpu_id"), i as u64);
        assert_eq!(e.text("architecture"), "x86");
        assert_eq!(e.text("vendor"), field(i, "vendor_id"));
        assert_eq!(e.text("model_name"), field(i, "model name"));
        assert_eq!(num(e, "family").to_string(), field(i, "cpu family"));
        assert_eq!(num(e, "model").to_string(), field(i, "model"));
        assert_eq!(num(e, "physical_id").to_string(), field(i, "physical id"));
        assert_eq!(num(e, "core_id").to_string(), field(i, "core id"));
        assert_eq!(num(e, "cores").to_string(), field(i, "cpu cores"));
    }

    // -- network interfaces and block devices: the names /sys lists (the
    // default initramfs has `lo`, brought up here with the kernel's
    // 127.0.0.1 and one more address, and no block device at all)
    let names = |tag: &str| -> BTreeSet<String> {
        tagged(&r, tag)[0]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let net: BTreeSet<String> = dumped(&r, "network_interface")
        .into_iter()
        .map(|e| e.text("name"))
        .collect();
    assert_eq!(net, names("NET"));
    assert!(net.contains("lo"));
    // each IPv4 address as `ip -4 addr` lists it ("1: lo    inet A.B.C.D/N ...")
    let addrs: BTreeSet<(String, String)> = dumped(&r, "network_interface")
        .into_iter()
        .filter(|e| num(e, "address_ipv4") != 0)
        .map(|e| {
            let a = num(e, "address_ipv4") as u32;
            (e.text("name"), std::net::Ipv4Addr::from(a).to_string())
        })
        .collect();
    let listed: BTreeSet<(String, String)> = tagged(&r, "ADDR")
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|&t| t == "inet").unwrap();
            let ip = w[at + 1].split('/').next().unwrap().to_string();
            (w[1].to_string(), ip)
        })
        .collect();
    assert!(
        listed.contains(&("lo".into(), "192.168.7.1".into())),
        "{listed:?}"
    );
    assert_eq!(addrs, listed, "network_interface addresses vs ip -4 addr");
    let block: BTreeSet<String> = dumped(&r, "block_device")
        .into_iter()
        .map(|e| e.text("diskname"))
        .collect();
    assert_eq!(block, names("BLOCK"));

    // -- the tracer's own count (the summary's "N events") counts the
    // statedump's every event, as the writer and babeltrace2 do
    let report = if backend == "kvm" {
        "kvm.json"
    } else {
        "plugin.json"
    };
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.dir.join(report)).unwrap()).unwrap();
    let traced: u64 = report["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["events"].as_u64().unwrap())
        .sum();
    assert_eq!(
        traced,
        r.events.len() as u64,
        "tracer's count vs babeltrace2"
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn statedump_matches_guest_6_1() {
    statedump_matches_guest("qemu", "6.1");
}

#[test]
fn statedump_matches_guest_6_12() {
    statedump_matches_guest("qemu", "6.12");
}

/// The KVM monitor shares the walks (`introspect::runtime`). Ignored by
/// default: without hardware virtualization its guest runs in the
/// stock-KVM harness's L1, too slow for this file's budget; run it with
/// `--ignored` (it says "skipped" where no KVM runs guest code natively).
#[test]
#[ignore = "the stock-KVM L1 run (about 60 s) is beyond the suite budget; run with --ignored"]
fn statedump_matches_guest_kvm_6_1() {
    if common::hvtrace_on_kvm().is_none() {
        return;
    }
    let _machine = common::machine_lock(false);
    statedump_matches_guest("kvm", "6.1");
}
