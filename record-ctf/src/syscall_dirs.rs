//! Which syscall arguments lttng-modules 2.13 records at the syscall's exit.
//!
//! lttng-modules generates one event pair per syscall from the kernel's
//! prototypes and a table of each argument's direction: an input argument
//! (`sc_in`) is a field of `syscall_entry_<name>` only, an output one
//! (`sc_out`, e.g. `read`'s `buf`, `wait4`'s `stat_addr`) a field of
//! `syscall_exit_<name>` only, and one the syscall both reads and writes
//! (`sc_inout`, e.g. `poll`'s `ufds`) a field of both. A few syscalls have
//! hand-written layouts (`execve` and `clone` record every argument at
//! entry; `pipe2`'s `fildes` is the two descriptors, declared so in
//! `decls`). The facts below are those of lttng-modules 2.13's x86-64
//! headers (generated from Linux 5.12's prototypes), by argument position,
//! which the ABI keeps; syscalls not listed take every argument at entry.
//! The compat (i386) table uses the same list by name, as lttng-modules'
//! direction table is per syscall name.

use ltt_writer::ArgDir;

const O: ArgDir = ArgDir::Out;
const B: ArgDir = ArgDir::InOut;

/// (syscall, [(argument position, direction)]) for every syscall that has
/// an output or input-output argument.
const DIRS: &[(&str, &[(u8, ArgDir)])] = &[
    // file system and I/O
    ("read", &[(1, O)]),
    ("pread64", &[(1, O)]),
    ("readv", &[(1, B)]),
    ("writev", &[(1, B)]),
    ("preadv", &[(1, O)]),
    ("preadv2", &[(0, B), (1, B), (2, B), (3, B), (4, B), (5, B)]),
    (
        "pwritev2",
        &[(0, B), (1, B), (2, B), (3, B), (4, B), (5, B)],
    ),
    ("newstat", &[(1, O)]),
    ("newfstat", &[(1, O)]),
    ("newlstat", &[(1, O)]),
    ("newfstatat", &[(2, O)]),
    ("statx", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("statfs", &[(1, O)]),
    ("fstatfs", &[(1, O)]),
    ("ustat", &[(1, O)]),
    ("getdents", &[(1, O)]),
    ("getdents64", &[(1, O)]),
    ("getcwd", &[(0, O)]),
    ("readlink", &[(1, O)]),
    ("readlinkat", &[(2, O)]),
    ("getxattr", &[(2, O)]),
    ("lgetxattr", &[(2, O)]),
    ("fgetxattr", &[(2, O)]),
    ("listxattr", &[(1, O)]),
    ("llistxattr", &[(1, O)]),
    ("flistxattr", &[(1, O)]),
    ("sendfile64", &[(2, B)]),
    (
        "copy_file_range",
        &[(0, B), (1, B), (2, B), (3, B), (4, B), (5, B)],
    ),
    ("openat2", &[(0, B), (1, B), (2, B), (3, B)]),
    ("faccessat2", &[(0, B), (1, B), (2, B), (3, B)]),
    ("renameat2", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("name_to_handle_at", &[(2, B), (3, O)]),
    ("memfd_create", &[(0, B), (1, B)]),
    ("ioctl", &[(2, B)]),
    ("fcntl", &[(2, B)]),
    ("close_range", &[(0, B), (1, B), (2, B)]),
    // pipes, polling, sockets
    ("pipe", &[(0, O)]),
    ("pipe2", &[(0, O)]),
    ("poll", &[(0, B)]),
    ("ppoll", &[(0, B)]),
    ("select", &[(1, B), (2, B), (3, B), (4, B)]),
    ("pselect6", &[(1, B), (2, B), (3, B), (4, B)]),
    ("epoll_wait", &[(1, O)]),
    ("epoll_pwait", &[(1, O)]),
    (
        "epoll_pwait2",
        &[(0, B), (1, B), (2, B), (3, B), (4, B), (5, B)],
    ),
    ("accept", &[(1, O), (2, B)]),
    ("accept4", &[(1, O), (2, B)]),
    ("getsockname", &[(1, O), (2, B)]),
    ("getpeername", &[(1, O), (2, B)]),
    ("socketpair", &[(3, O)]),
    ("getsockopt", &[(3, O), (4, B)]),
    ("recvfrom", &[(1, O), (4, O), (5, B)]),
    ("recvmsg", &[(1, B)]),
    ("recvmmsg", &[(1, O), (4, B)]),
    // processes, signals, scheduling
    ("wait4", &[(1, O), (3, O)]),
    ("waitid", &[(2, O), (4, O)]),
    ("clone3", &[(0, B), (1, B)]),
    ("execveat", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("rt_sigaction", &[(2, O)]),
    ("rt_sigprocmask", &[(2, O)]),
    ("rt_sigpending", &[(0, O)]),
    ("rt_sigtimedwait", &[(0, O), (1, O)]),
    ("sigaltstack", &[(1, B)]),
    ("pidfd_send_signal", &[(0, B), (1, B), (2, B), (3, B)]),
    ("pidfd_open", &[(0, B), (1, B)]),
    ("pidfd_getfd", &[(0, B), (1, B), (2, B)]),
    ("sched_getparam", &[(1, O)]),
    ("sched_rr_get_interval", &[(1, O)]),
    ("sched_getaffinity", &[(2, O)]),
    ("sched_setattr", &[(0, B), (1, B), (2, B)]),
    ("sched_getattr", &[(0, B), (1, B), (2, B), (3, B)]),
    ("getcpu", &[(0, O), (1, O), (2, B)]),
    ("getrlimit", &[(1, O)]),
    ("prlimit64", &[(3, O)]),
    ("getrusage", &[(1, O)]),
    ("getgroups", &[(1, O)]),
    ("getresuid", &[(0, O), (1, O), (2, O)]),
    ("getresgid", &[(0, O), (1, O), (2, O)]),
    ("prctl", &[(1, B)]),
    ("arch_prctl", &[(0, B), (1, B)]),
    ("ptrace", &[(2, B), (3, B)]),
    ("kcmp", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("seccomp", &[(0, B), (1, B), (2, B)]),
    ("rseq", &[(0, B), (1, B), (2, B), (3, B)]),
    ("get_robust_list", &[(1, O), (2, O)]),
    ("futex", &[(0, B), (4, B)]),
    // time
    ("nanosleep", &[(1, O)]),
    ("clock_nanosleep", &[(3, O)]),
    ("clock_gettime", &[(1, O)]),
    ("clock_getres", &[(1, O)]),
    ("clock_adjtime", &[(1, B)]),
    ("adjtimex", &[(0, B)]),
    ("gettimeofday", &[(0, O), (1, O)]),
    ("time", &[(0, O)]),
    ("times", &[(0, O)]),
    ("getitimer", &[(1, O)]),
    ("setitimer", &[(2, O)]),
    ("timer_create", &[(2, O)]),
    ("timer_gettime", &[(1, O)]),
    ("timer_settime", &[(3, O)]),
    ("timerfd_gettime", &[(1, O)]),
    ("timerfd_settime", &[(3, O)]),
    // memory
    ("mincore", &[(2, O)]),
    ("get_mempolicy", &[(0, O), (1, O)]),
    ("move_pages", &[(4, O)]),
    ("process_vm_readv", &[(1, O)]),
    ("process_madvise", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("mlock2", &[(0, B), (1, B), (2, B)]),
    ("pkey_alloc", &[(0, B), (1, B)]),
    ("pkey_free", &[(0, B)]),
    ("pkey_mprotect", &[(0, B), (1, B), (2, B), (3, B)]),
    ("modify_ldt", &[(0, B), (1, B), (2, B)]),
    ("membarrier", &[(0, B), (1, B), (2, B)]),
    ("userfaultfd", &[(0, B)]),
    // IPC, AIO, io_uring
    ("shmctl", &[(2, B)]),
    ("msgctl", &[(2, B)]),
    ("msgrcv", &[(1, O)]),
    ("semctl", &[(3, B)]),
    ("semtimedop", &[(3, B)]),
    ("mq_getsetattr", &[(2, O)]),
    ("mq_timedreceive", &[(1, O), (3, O)]),
    ("io_cancel", &[(2, O)]),
    ("io_getevents", &[(3, O), (4, B)]),
    (
        "io_pgetevents",
        &[(0, B), (1, B), (2, B), (3, B), (4, B), (5, B)],
    ),
    ("io_uring_setup", &[(0, B), (1, B)]),
    (
        "io_uring_enter",
        &[(0, B), (1, B), (2, B), (3, B), (4, B), (5, B)],
    ),
    ("io_uring_register", &[(0, B), (1, B), (2, B), (3, B)]),
    // system
    ("newuname", &[(0, O)]),
    ("sysinfo", &[(0, O)]),
    ("syslog", &[(1, O)]),
    ("quotactl", &[(3, B)]),
    ("iopl", &[(0, B)]),
    ("ioperm", &[(0, B), (1, B), (2, B)]),
    ("bpf", &[(0, B), (1, B), (2, B)]),
    ("getrandom", &[(0, B), (1, B), (2, B)]),
    ("keyctl", &[(1, B), (2, B), (3, B), (4, B)]),
    ("kexec_file_load", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("open_tree", &[(0, B), (1, B), (2, B)]),
    ("fspick", &[(0, B), (1, B), (2, B)]),
    ("fsopen", &[(0, B), (1, B)]),
    ("fsconfig", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("fsmount", &[(0, B), (1, B), (2, B)]),
    ("move_mount", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
    ("mount_setattr", &[(0, B), (1, B), (2, B), (3, B), (4, B)]),
];

/// The direction lttng-modules 2.13 gives argument `index` of syscall
/// `name` (`In` for every argument of a syscall not in its table).
pub fn arg_dir(name: &str, index: usize) -> ArgDir {
    DIRS.iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, args)| args.iter().find(|(i, _)| usize::from(*i) == index))
        .map_or(ArgDir::In, |&(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_recorded_at_exit() {
        assert_eq!(arg_dir("read", 0), ArgDir::In);
        assert_eq!(arg_dir("read", 1), ArgDir::Out);
        assert_eq!(arg_dir("read", 2), ArgDir::In);
        assert_eq!(arg_dir("wait4", 1), ArgDir::Out);
        assert_eq!(arg_dir("wait4", 3), ArgDir::Out);
        assert_eq!(arg_dir("poll", 0), ArgDir::InOut);
        // hand-written layouts of lttng-modules: every argument at entry
        assert_eq!(arg_dir("execve", 0), ArgDir::In);
        assert_eq!(arg_dir("clone", 3), ArgDir::In);
        assert_eq!(arg_dir("getpid", 0), ArgDir::In);
    }

    #[test]
    fn the_table_names_each_syscall_once_with_positions_in_order() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, args) in DIRS {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(!args.is_empty(), "{name}");
            assert!(
                args.windows(2).all(|w| w[0].0 < w[1].0) && args.iter().all(|a| a.0 < 6),
                "{name}: {args:?}"
            );
        }
    }
}
