//! Where each task's time went, replayed from scheduler, syscall and
//! interrupt events: running in user space, in the kernel per syscall,
//! waiting for a CPU, blocked (per syscall), and who woke whom.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::model::{Arg, Ev, Kind};

const KTHREADD: i32 = 2;
/// `TASK_DEAD` in a switched-out task's state: its last switch, from
/// do_exit (stable across the kernels hvtrace reads). A trace that lacks
/// the task's `sched_process_exit` still ends its books there.
const TASK_DEAD: i64 = 0x80;
/// Where a kernel thread's running time is booked in `syscall_ns`.
pub const KTHREAD_KEY: &str = "(kernel thread)";

/// Where a task is, as far as the trace has shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Unknown,
    Running {
        since: u64,
    },
    Runnable {
        since: u64,
    },
    Blocked {
        since: u64,
    },
    /// Exited: its last switch-out is not a block.
    Dead,
}

/// A syscall a task is inside.
#[derive(Debug, Clone, Serialize)]
pub struct OpenSyscall {
    pub name: String,
    pub args: Vec<(String, Arg)>,
    pub entry_ts: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct TaskTime {
    pub tid: i32,
    pub pid: i32,
    pub comm: String,
    pub user_ns: u64,
    /// Running in the kernel inside each syscall.
    pub syscall_ns: BTreeMap<String, u64>,
    pub wait_cpu_ns: u64,
    /// Blocked (switched out not runnable), keyed by the syscall it was in.
    pub blocked_ns: BTreeMap<String, u64>,
    pub switches_out: u64,
    pub preempted: u64,
    /// A kernel thread: all its running time is kernel time.
    pub kernel_thread: bool,
    /// Set when the trace ends with the task blocked: where and since when.
    pub blocked_at_end: Option<OpenSyscall>,
    pub blocked_since: Option<u64>,
    /// A program the task ran before a later exec (its own row; the task's
    /// row as it is now has this false).
    pub earlier_program: bool,
    #[serde(skip)]
    state: State,
    #[serde(skip)]
    in_syscall: Option<OpenSyscall>,
    #[serde(skip)]
    mark: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyStats {
    pub count: u64,
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl LatencyStats {
    pub fn from(mut samples: Vec<u64>) -> LatencyStats {
        samples.sort_unstable();
        let pct = |p: f64| -> u64 {
            if samples.is_empty() {
                return 0;
            }
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        LatencyStats {
            count: samples.len() as u64,
            total_ns: samples.iter().sum(),
            p50_ns: pct(50.0),
            p99_ns: pct(99.0),
            max_ns: samples.last().copied().unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Wakeup {
    pub waker_tid: i32,
    pub waker_comm: String,
    pub wakee_tid: i32,
    pub wakee_comm: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct Analysis {
    pub start_ts: u64,
    pub end_ts: u64,
    pub tasks: Vec<TaskTime>,
    pub syscalls: BTreeMap<String, LatencyStats>,
    /// Keyed by "irq name" (e.g. "4 ttyS0").
    pub irqs: BTreeMap<String, LatencyStats>,
    pub softirqs: BTreeMap<String, LatencyStats>,
    pub wakeups: Vec<Wakeup>,
}

/// Replays the events (in time order) and accounts every task's time.
pub fn analyze(events: &[Ev]) -> Analysis {
    let mut tasks: HashMap<i32, TaskTime> = HashMap::new();
    let mut sys_samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut irq_samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut softirq_samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut irq_stack: HashMap<u32, Vec<(i64, String, u64)>> = HashMap::new();
    let mut softirq_stack: HashMap<u32, Vec<(i64, u64)>> = HashMap::new();
    let mut wakes: HashMap<(i32, i32), u64> = HashMap::new();
    let start_ts = events.first().map_or(0, |e| e.ts);
    let end_ts = events.last().map_or(0, |e| e.ts);
    // A task's earlier programs (before each exec), each its own row.
    let mut earlier: Vec<TaskTime> = Vec::new();

    fn task<'a>(
        tasks: &'a mut HashMap<i32, TaskTime>,
        tid: i32,
        pid: i32,
        comm: &str,
    ) -> &'a mut TaskTime {
        let t = tasks.entry(tid).or_insert_with(|| TaskTime {
            tid,
            pid,
            ..Default::default()
        });
        if !comm.is_empty() {
            t.comm = comm.to_string();
        }
        if pid > 0 {
            t.pid = pid;
        }
        t
    }

    for e in events {
        match &e.kind {
            Kind::Switch {
                prev_tid,
                prev_state,
                next_tid,
                next_comm,
            } => {
                if *prev_tid > 0 {
                    let t = task(&mut tasks, *prev_tid, -1, "");
                    t.charge_running(e.ts);
                    t.switches_out += 1;
                    let st = if t.get() == State::Dead || *prev_state & TASK_DEAD != 0 {
                        State::Dead
                    } else if *prev_state == 0 {
                        t.preempted += 1;
                        State::Runnable { since: e.ts }
                    } else {
                        State::Blocked { since: e.ts }
                    };
                    t.set(st);
                }
                if *next_tid > 0 {
                    let t = task(&mut tasks, *next_tid, -1, next_comm);
                    match t.get() {
                        State::Runnable { since } => t.wait_cpu_ns += e.ts - since,
                        State::Blocked { since } => t.charge_blocked(e.ts - since),
                        _ => {}
                    }
                    t.set(State::Running { since: e.ts });
                    t.mark = e.ts;
                }
            }
            Kind::Waking { tid } => {
                if *tid > 0 {
                    let t = task(&mut tasks, *tid, -1, "");
                    if let State::Blocked { since } = t.get() {
                        t.charge_blocked(e.ts - since);
                        t.set(State::Runnable { since: e.ts });
                    }
                    *wakes.entry((e.tid, *tid)).or_default() += 1;
                }
            }
            // Follows its sched_waking, which already made the task
            // runnable; alone (a trace without sched_waking) it does that.
            Kind::Wakeup { tid } => {
                if *tid > 0 {
                    let t = task(&mut tasks, *tid, -1, "");
                    if let State::Blocked { since } = t.get() {
                        t.charge_blocked(e.ts - since);
                        t.set(State::Runnable { since: e.ts });
                        *wakes.entry((e.tid, *tid)).or_default() += 1;
                    }
                }
            }
            Kind::SysEntry { name, args } => {
                let t = task(&mut tasks, e.tid, e.pid, &e.comm);
                t.charge_running(e.ts);
                t.in_syscall = Some(OpenSyscall {
                    name: name.clone(),
                    args: args.clone(),
                    entry_ts: e.ts,
                });
            }
            Kind::SysExit { name, .. } => {
                let t = task(&mut tasks, e.tid, e.pid, &e.comm);
                t.charge_running(e.ts);
                if let Some(open) = t.in_syscall.take() {
                    if &open.name == name {
                        sys_samples
                            .entry(name.clone())
                            .or_default()
                            .push(e.ts - open.entry_ts);
                    }
                }
            }
            Kind::IrqEntry { irq, name } => {
                irq_stack
                    .entry(e.cpu)
                    .or_default()
                    .push((*irq, name.clone(), e.ts));
            }
            Kind::IrqExit { irq } => {
                if let Some((i, name, ts)) = irq_stack.entry(e.cpu).or_default().pop() {
                    if i == *irq {
                        irq_samples
                            .entry(format!("{i} {name}"))
                            .or_default()
                            .push(e.ts - ts);
                    }
                }
            }
            Kind::SoftirqEntry { vec } => {
                softirq_stack.entry(e.cpu).or_default().push((*vec, e.ts))
            }
            Kind::SoftirqExit { vec } => {
                if let Some((v, ts)) = softirq_stack.entry(e.cpu).or_default().pop() {
                    if v == *vec {
                        softirq_samples
                            .entry(softirq_name(v))
                            .or_default()
                            .push(e.ts - ts);
                    }
                }
            }
            Kind::Fork {
                parent_tid,
                child_tid,
                child_pid,
                child_comm,
            } => {
                let t = task(&mut tasks, *child_tid, *child_pid, child_comm);
                t.set(State::Runnable { since: e.ts });
                // kthreadd (tid 2) is the parent of every kernel thread.
                t.kernel_thread |= *parent_tid == KTHREADD;
            }
            Kind::Statedump {
                tid,
                pid,
                name,
                kernel_thread,
                ..
            } => {
                let t = task(&mut tasks, *tid, *pid, name);
                t.kernel_thread |= *kernel_thread || *tid == KTHREADD;
            }
            Kind::Exec { filename, .. } => {
                // The event's context already names the new program (as at
                // the kernel's tracepoint): the old name is the task's own.
                let t = task(&mut tasks, e.tid, e.pid, "");
                if let Some(before) = t.new_program(e.ts, filename) {
                    earlier.push(before);
                }
            }
            Kind::Exit { tid } => {
                let t = task(&mut tasks, *tid, -1, "");
                t.charge_running(e.ts);
                t.in_syscall = None;
                t.set(State::Dead);
            }
            Kind::Other => {}
        }
    }

    // Close the books at the end of the trace.
    for t in tasks.values_mut() {
        match t.get() {
            State::Running { .. } => t.charge_running(end_ts),
            State::Runnable { since } => t.wait_cpu_ns += end_ts - since,
            State::Blocked { since } => {
                t.charge_blocked(end_ts - since);
                t.blocked_at_end = t.in_syscall.clone();
                t.blocked_since = Some(since);
            }
            State::Unknown | State::Dead => {}
        }
        if t.kernel_thread && t.user_ns > 0 {
            *t.syscall_ns.entry(KTHREAD_KEY.into()).or_default() += std::mem::take(&mut t.user_ns);
        }
    }

    let comm_of = |tasks: &HashMap<i32, TaskTime>, tid: i32| {
        tasks.get(&tid).map(|t| t.comm.clone()).unwrap_or_else(|| {
            if tid == 0 {
                "swapper".into()
            } else {
                "?".into()
            }
        })
    };
    let mut wakeups: Vec<Wakeup> = wakes
        .into_iter()
        .map(|((waker, wakee), count)| Wakeup {
            waker_tid: waker,
            waker_comm: comm_of(&tasks, waker),
            wakee_tid: wakee,
            wakee_comm: comm_of(&tasks, wakee),
            count,
        })
        .collect();
    wakeups.sort_by(|a, b| b.count.cmp(&a.count).then(a.waker_tid.cmp(&b.waker_tid)));
    // A task's row as it is now first (what a lookup by tid finds), then
    // the programs it ran before, newest first.
    let mut tasks: Vec<TaskTime> = tasks
        .into_values()
        .chain(earlier.into_iter().rev())
        .collect();
    tasks.sort_by_key(|t| (t.pid, t.tid, t.earlier_program));
    let stats = |m: BTreeMap<String, Vec<u64>>| {
        m.into_iter()
            .map(|(k, v)| (k, LatencyStats::from(v)))
            .collect()
    };
    Analysis {
        start_ts,
        end_ts,
        tasks,
        syscalls: stats(sys_samples),
        irqs: stats(irq_samples),
        softirqs: stats(softirq_samples),
        wakeups,
    }
}

impl TaskTime {
    fn get(&self) -> State {
        self.state
    }

    fn set(&mut self, s: State) {
        self.state = s;
    }

    /// Charges running time since the last mark to user space or to the
    /// syscall the task is in.
    fn charge_running(&mut self, ts: u64) {
        if let State::Running { .. } = self.get() {
            let d = ts.saturating_sub(self.mark);
            match &self.in_syscall {
                Some(s) => *self.syscall_ns.entry(s.name.clone()).or_default() += d,
                None => self.user_ns += d,
            }
        }
        self.mark = ts;
    }

    /// An exec: the program so far gets its own row (returned) unless the
    /// task had no name yet; this row goes on with the new program (named
    /// as the kernel names it, by the file's base name), in the same state
    /// and the same `execve` call.
    fn new_program(&mut self, ts: u64, filename: &str) -> Option<TaskTime> {
        self.charge_running(ts);
        let base = filename.rsplit('/').next().unwrap_or(filename);
        let comm: String = base.chars().take(15).collect();
        if self.comm.is_empty() || self.comm == comm {
            self.comm = comm;
            return None;
        }
        let next = TaskTime {
            tid: self.tid,
            pid: self.pid,
            comm,
            state: self.state,
            in_syscall: self.in_syscall.clone(),
            mark: ts,
            ..TaskTime::default()
        };
        let mut before = std::mem::replace(self, next);
        before.in_syscall = None;
        before.state = State::Dead;
        before.earlier_program = true;
        // pid 1 before it execs /init is the kernel's own init thread:
        // all of its time was kernel time.
        if before.kernel_thread || before.comm.starts_with("swapper") {
            before.kernel_thread = true;
            let user = std::mem::take(&mut before.user_ns);
            *before.syscall_ns.entry(KTHREAD_KEY.into()).or_default() += user;
        }
        Some(before)
    }

    fn charge_blocked(&mut self, d: u64) {
        let key = self
            .in_syscall
            .as_ref()
            .map_or_else(|| "(no syscall)".to_string(), |s| s.name.clone());
        *self.blocked_ns.entry(key).or_default() += d;
    }

    pub fn kernel_ns(&self) -> u64 {
        self.syscall_ns.values().sum()
    }

    pub fn blocked_total_ns(&self) -> u64 {
        self.blocked_ns.values().sum()
    }
}

/// Linux's softirq vector names (include/linux/interrupt.h).
pub fn softirq_name(vec: i64) -> String {
    const NAMES: [&str; 10] = [
        "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER",
        "RCU",
    ];
    usize::try_from(vec)
        .ok()
        .and_then(|v| NAMES.get(v))
        .map_or_else(|| format!("vec {vec}"), |n| n.to_string())
}

/// Interrupt rows in irq-number order (the keys are "N name").
pub fn irqs_by_number(a: &Analysis) -> Vec<(&String, &LatencyStats)> {
    let mut v: Vec<_> = a.irqs.iter().collect();
    v.sort_by_key(|(k, _)| {
        k.split(' ')
            .next()
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(i64::MAX)
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, tid: i32, kind: Kind) -> Ev {
        Ev {
            ts,
            cpu: 0,
            pid: tid,
            tid,
            comm: format!("t{tid}"),
            kind,
        }
    }

    fn switch(ts: u64, prev: i32, state: i64, next: i32) -> Ev {
        ev(
            ts,
            prev,
            Kind::Switch {
                prev_tid: prev,
                prev_state: state,
                next_tid: next,
                next_comm: format!("t{next}"),
            },
        )
    }

    /// A hand-made schedule whose every interval is known.
    #[test]
    fn time_is_split_into_user_kernel_wait_and_blocked() {
        let read = |ts| {
            ev(
                ts,
                1,
                Kind::SysEntry {
                    name: "read".into(),
                    args: vec![],
                },
            )
        };
        let events = vec![
            switch(0, 0, 0, 1),                 // t1 runs
            read(10),                           // 10 user
            switch(15, 1, 1, 2),                // 5 in read, blocks
            ev(40, 2, Kind::Waking { tid: 1 }), // blocked 25 in read
            switch(50, 2, 0, 1),                // t1 waited 10; t2 preempted
            ev(
                53,
                1,
                Kind::SysExit {
                    name: "read".into(),
                    ret: 1,
                },
            ), // 3 more in read
            switch(60, 1, 0, 2),                // 7 user; t2 waited 10
        ];
        let a = analyze(&events);
        let t1 = a.tasks.iter().find(|t| t.tid == 1).unwrap();
        assert_eq!(t1.user_ns, 10 + 7);
        assert_eq!(t1.syscall_ns["read"], 5 + 3);
        assert_eq!(t1.blocked_ns["read"], 25);
        assert_eq!(t1.wait_cpu_ns, 10);
        assert_eq!(a.syscalls["read"].count, 1);
        assert_eq!(a.syscalls["read"].max_ns, 43);
        let t2 = a.tasks.iter().find(|t| t.tid == 2).unwrap();
        assert_eq!(t2.preempted, 1);
        assert_eq!(a.wakeups[0].waker_tid, 2);
        assert_eq!(a.wakeups[0].wakee_tid, 1);
    }

    /// sched_wakeup after its sched_waking changes nothing; alone (a
    /// trace without sched_waking) it ends the blocked time.
    #[test]
    fn wakeup_counts_once_with_or_without_waking() {
        let both = vec![
            switch(0, 0, 0, 1),
            switch(15, 1, 1, 2),                // t1 blocks
            ev(40, 2, Kind::Waking { tid: 1 }), // t2 wakes it
            ev(42, 0, Kind::Wakeup { tid: 1 }), // runnable, logged elsewhere
            switch(50, 2, 0, 1),
        ];
        let a = analyze(&both);
        let t1 = a.tasks.iter().find(|t| t.tid == 1).unwrap();
        assert_eq!(
            (t1.blocked_ns.values().sum::<u64>(), t1.wait_cpu_ns),
            (25, 10)
        );
        assert_eq!(a.wakeups.len(), 1);
        assert_eq!((a.wakeups[0].waker_tid, a.wakeups[0].count), (2, 1));

        let alone: Vec<Ev> = both
            .into_iter()
            .filter(|e| !matches!(e.kind, Kind::Waking { .. }))
            .collect();
        let a = analyze(&alone);
        let t1 = a.tasks.iter().find(|t| t.tid == 1).unwrap();
        assert_eq!(
            (t1.blocked_ns.values().sum::<u64>(), t1.wait_cpu_ns),
            (27, 8)
        );
        assert_eq!((a.wakeups[0].waker_tid, a.wakeups[0].count), (0, 1));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = LatencyStats::from((1..=100).collect());
        assert_eq!((s.p50_ns, s.p99_ns, s.max_ns, s.count), (50, 99, 100, 100));
        let one = LatencyStats::from(vec![7]);
        assert_eq!((one.p50_ns, one.p99_ns), (7, 7));
    }

    #[test]
    fn a_task_blocked_at_the_end_says_where() {
        let events = vec![
            switch(0, 0, 0, 1),
            ev(
                5,
                1,
                Kind::SysEntry {
                    name: "flock".into(),
                    args: vec![("fd".into(), Arg::Int(4))],
                },
            ),
            switch(6, 1, 1, 0),
            ev(100, 0, Kind::Other),
        ];
        let a = analyze(&events);
        let t1 = a.tasks.iter().find(|t| t.tid == 1).unwrap();
        assert_eq!(t1.blocked_at_end.as_ref().unwrap().name, "flock");
        assert_eq!(t1.blocked_since, Some(6));
        assert_eq!(t1.blocked_ns["flock"], 94);
    }
}
