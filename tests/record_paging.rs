//! The TCG engine on both x86-64 paging modes. QEMU's `-cpu max` has LA57,
//! so Debian's kernels run with 5-level paging (CONFIG_X86_5LEVEL) in every
//! other end-to-end test; `no5lvl` on the command line gives 4-level. The
//! task pointers `__switch_to` receives show which mode ran: the direct
//! map, where task_structs live, starts at 0xff11_0000_0000_0000 (plus the
//! KASLR offset) under 5-level paging and at 0xffff_8880_0000_0000 (plus
//! the offset) under 4-level.

mod common;
mod record_support;

use record_support::{checks, record_with};

/// First address of the 4-level kernel half (everything a 5-level direct
/// map address is below).
const FOUR_LEVEL_KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

#[test]
fn paging_mode_is_the_one_asked_for() {
    for (opts, five_level) in [(&[][..], true), (&["--append", "no5lvl"][..], false)] {
        let mut all = vec![
            "--events",
            "sched",
            "--probe",
            "sw=__switch_to prev=%di:x64",
        ];
        all.extend_from_slice(opts);
        let tag = if five_level { "la57" } else { "no5lvl" };
        let r = record_with("6.12", 1, tag, &all, &["/bin/true"]);
        assert_eq!(r.status, 0, "{}", r.console);
        let tasks: Vec<u64> = r
            .events
            .iter()
            .filter(|e| e.name == "sw")
            .map(|e| e.int("prev") as u64)
            // init_task (pid 0) is in the kernel image, not the direct map
            .filter(|&p| p < 0xffff_ffff_8000_0000)
            .collect();
        assert!(tasks.len() > 10, "{tag}: {} task pointers", tasks.len());
        for p in tasks {
            assert!(p >> 56 == 0xff, "{tag}: {p:#x} is not a kernel address");
            assert_eq!(
                p < FOUR_LEVEL_KERNEL_HALF,
                five_level,
                "{tag}: task at {p:#x}"
            );
        }
    }
}

/// The syscall checks of the 5-level runs, on 4-level paging.
#[test]
fn record_syscalls_on_4_level_paging_6_1() {
    let r = checks::syscalls_match("qemu", &["--append", "no5lvl"], "6.1", 1);
    let _ = std::fs::remove_dir_all(&r.dir);
}
