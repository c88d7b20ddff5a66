//! `storm ROUNDS`: one thread pinned to each online CPU, all released at
//! once, each making ROUNDS `getppid` calls and a `nanosleep` of 1 ns after
//! every 8th (a timer interrupt on its own CPU each time): a syscall and
//! interrupt storm on every vCPU. Prints per CPU the thread's tid and what
//! it did, as `cpuN_tid`, `cpuN_getppid`, `cpuN_nanosleep`, plus `cpus`.

use std::sync::{Arc, Barrier};

use workloads::{arg_u64, check};

/// What one pinned thread did.
struct Done {
    cpu: usize,
    tid: i64,
    getppid: u64,
    nanosleep: u64,
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity get a valid pointer to it and its size.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    check(i64::from(r), "sched_setaffinity");
}

fn storm(cpu: usize, rounds: u64, start: &Barrier) -> Done {
    pin_to(cpu);
    // SAFETY: gettid has no arguments.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    start.wait();
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1,
    };
    let (mut getppid, mut nanosleep) = (0, 0);
    for i in 0..rounds {
        // SAFETY: getppid has no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
        getppid += 1;
        if i % 8 == 7 {
            // SAFETY: a valid timespec; no remainder wanted.
            unsafe {
                libc::syscall(
                    libc::SYS_nanosleep,
                    &pause as *const libc::timespec,
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            nanosleep += 1;
        }
    }
    Done {
        cpu,
        tid,
        getppid,
        nanosleep,
    }
}

fn main() {
    let rounds = arg_u64("storm ROUNDS");
    // SAFETY: sysconf has no memory arguments.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let start = Arc::new(Barrier::new(cpus));
    let threads: Vec<_> = (0..cpus)
        .map(|cpu| {
            let start = start.clone();
            std::thread::spawn(move || storm(cpu, rounds, &start))
        })
        .collect();
    let mut fields = vec![("cpus".to_string(), cpus.to_string())];
    for t in threads {
        let d = t.join().unwrap_or_else(|_| {
            eprintln!("storm: a thread panicked");
            std::process::exit(1)
        });
        let c = d.cpu;
        fields.push((format!("cpu{c}_tid"), d.tid.to_string()));
        fields.push((format!("cpu{c}_getppid"), d.getppid.to_string()));
        fields.push((format!("cpu{c}_nanosleep"), d.nanosleep.to_string()));
    }
    let extra: Vec<(&str, String)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    workloads::Counts::default().print(&extra);
}
