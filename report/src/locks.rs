//! Lock waits from syscalls alone: which task holds which `flock`ed file
//! (from openat's filename and returned fd, inherited across fork), who is
//! blocked waiting for it, and the cycles among them (deadlocks).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::model::{Arg, Ev, Kind};

const LOCK_UN: i64 = 8;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LockWait {
    pub tid: i32,
    pub comm: String,
    /// The syscall it is blocked in, e.g. `flock(fd=8, cmd=2)`.
    pub call: String,
    pub file: String,
    pub since_ts: u64,
    /// The task holding the file's lock, when the trace saw it taken.
    pub holder_tid: Option<i32>,
    pub holder_comm: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    pub waits: Vec<LockWait>,
    /// Each cycle as the tids in wait order (a waits for b waits for … a).
    pub cycles: Vec<Vec<i32>>,
}

fn arg_int(args: &[(String, Arg)], name: &str) -> Option<i64> {
    args.iter().find_map(|(n, a)| match a {
        Arg::Int(v) if n == name => Some(*v),
        _ => None,
    })
}

fn arg_str(args: &[(String, Arg)], name: &str) -> Option<String> {
    args.iter().find_map(|(n, a)| match a {
        Arg::Str(s) if n == name => Some(s.clone()),
        _ => None,
    })
}

/// A syscall entered and not yet returned: name, arguments, entry time.
type OpenCall = (String, Vec<(String, Arg)>, u64);

pub fn analyze(events: &[Ev]) -> LockReport {
    let mut fds: HashMap<i32, HashMap<i64, String>> = HashMap::new();
    let mut pending: HashMap<i32, OpenCall> = HashMap::new();
    let mut holder: HashMap<String, i32> = HashMap::new();
    let mut comms: HashMap<i32, String> = HashMap::new();

    for e in events {
        if !e.comm.is_empty() && e.tid > 0 {
            comms.insert(e.tid, e.comm.clone());
        }
        match &e.kind {
            Kind::Fork {
                parent_tid,
                child_tid,
                child_comm,
                ..
            } => {
                let table = fds.get(parent_tid).cloned().unwrap_or_default();
                fds.insert(*child_tid, table);
                comms.insert(*child_tid, child_comm.clone());
            }
            Kind::SysEntry { name, args } => {
                pending.insert(e.tid, (name.clone(), args.clone(), e.ts));
            }
            Kind::SysExit { name, ret } => {
                let Some((entry, args, _)) = pending.remove(&e.tid) else {
                    continue;
                };
                if &entry != name {
                    continue;
                }
                let table = fds.entry(e.tid).or_default();
                match name.strip_prefix("compat_").unwrap_or(name) {
                    "openat" | "open" if *ret >= 0 => {
                        if let Some(path) = arg_str(&args, "filename") {
                            table.insert(*ret, path);
                        }
                    }
                    "close" if *ret == 0 => {
                        if let Some(path) = arg_int(&args, "fd").and_then(|fd| table.remove(&fd)) {
                            if holder.get(&path) == Some(&e.tid) {
                                holder.remove(&path);
                            }
                        }
                    }
                    "flock" if *ret == 0 => {
                        let fd = arg_int(&args, "fd").unwrap_or(-1);
                        let cmd = arg_int(&args, "cmd").unwrap_or(0);
                        if let Some(path) = table.get(&fd).cloned() {
                            if cmd & LOCK_UN != 0 {
                                holder.remove(&path);
                            } else {
                                holder.insert(path, e.tid);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Kind::Exit { tid } => {
                holder.retain(|_, h| h != tid);
                pending.remove(tid);
            }
            _ => {}
        }
    }

    let mut waits: Vec<LockWait> = pending
        .iter()
        .filter(|(_, (name, _, _))| name.strip_prefix("compat_").unwrap_or(name) == "flock")
        .filter_map(|(tid, (_, args, ts))| {
            let fd = arg_int(args, "fd")?;
            let cmd = arg_int(args, "cmd").unwrap_or(0);
            if cmd & LOCK_UN != 0 {
                return None;
            }
            let file = fds
                .get(tid)
                .and_then(|t| t.get(&fd))
                .cloned()
                .unwrap_or_else(|| format!("fd {fd}"));
            let holder_tid = holder.get(&file).copied().filter(|h| h != tid);
            Some(LockWait {
                tid: *tid,
                comm: comms.get(tid).cloned().unwrap_or_default(),
                call: format!("flock(fd={fd}, cmd={cmd})"),
                file,
                since_ts: *ts,
                holder_tid,
                holder_comm: holder_tid.and_then(|h| comms.get(&h).cloned()),
            })
        })
        .collect();
    waits.sort_by_key(|w| w.tid);
    let cycles = find_cycles(&waits);
    LockReport { waits, cycles }
}

/// Cycles in the waits-for graph (each task waits for at most one holder).
fn find_cycles(waits: &[LockWait]) -> Vec<Vec<i32>> {
    let next: BTreeMap<i32, i32> = waits
        .iter()
        .filter_map(|w| Some((w.tid, w.holder_tid?)))
        .collect();
    let mut cycles: Vec<Vec<i32>> = Vec::new();
    for &start in next.keys() {
        let mut path = vec![start];
        let mut cur = start;
        while let Some(&n) = next.get(&cur) {
            if n == start {
                // Report each cycle once, from its smallest tid.
                if path.iter().min() == Some(&start) {
                    cycles.push(path.clone());
                }
                break;
            }
            if path.contains(&n) || path.len() > next.len() {
                break;
            }
            path.push(n);
            cur = n;
        }
    }
    cycles
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
            comm: "deadlock".into(),
            kind,
        }
    }
    fn open(ts: u64, tid: i32, path: &str, fd: i64) -> [Ev; 2] {
        [
            ev(
                ts,
                tid,
                Kind::SysEntry {
                    name: "openat".into(),
                    args: vec![("filename".into(), Arg::Str(path.into()))],
                },
            ),
            ev(
                ts + 1,
                tid,
                Kind::SysExit {
                    name: "openat".into(),
                    ret: fd,
                },
            ),
        ]
    }
    fn flock(ts: u64, tid: i32, fd: i64, done: bool) -> Vec<Ev> {
        let args = vec![("fd".into(), Arg::Int(fd)), ("cmd".into(), Arg::Int(2))];
        let mut v = vec![ev(
            ts,
            tid,
            Kind::SysEntry {
                name: "flock".into(),
                args,
            },
        )];
        if done {
            v.push(ev(
                ts + 1,
                tid,
                Kind::SysExit {
                    name: "flock".into(),
                    ret: 0,
                },
            ));
        }
        v
    }

    #[test]
    fn opposite_lock_order_is_a_cycle() {
        let mut evs = Vec::new();
        evs.extend(open(0, 10, "/tmp/lock-a", 3));
        evs.push(ev(
            2,
            10,
            Kind::Fork {
                parent_tid: 10,
                child_tid: 11,
                child_pid: 11,
                child_comm: "deadlock".into(),
            },
        ));
        evs.extend(open(3, 11, "/tmp/lock-b", 4));
        evs.extend(open(5, 11, "/tmp/lock-a", 5));
        evs.extend(flock(7, 10, 3, true));
        evs.extend(flock(9, 11, 4, true));
        evs.extend(open(11, 10, "/tmp/lock-b", 4));
        evs.extend(flock(13, 10, 4, false));
        evs.extend(flock(14, 11, 5, false));
        let r = analyze(&evs);
        assert_eq!(r.waits.len(), 2);
        assert_eq!(r.waits[0].file, "/tmp/lock-b");
        assert_eq!(r.waits[0].holder_tid, Some(11));
        assert_eq!(r.waits[1].file, "/tmp/lock-a");
        assert_eq!(r.waits[1].holder_tid, Some(10));
        assert_eq!(r.cycles, vec![vec![10, 11]]);
    }

    #[test]
    fn a_released_lock_is_not_held() {
        let mut evs = Vec::new();
        evs.extend(open(0, 10, "/tmp/l", 3));
        evs.extend(flock(2, 10, 3, true));
        evs.push(ev(
            4,
            10,
            Kind::SysEntry {
                name: "close".into(),
                args: vec![("fd".into(), Arg::Int(3))],
            },
        ));
        evs.push(ev(
            5,
            10,
            Kind::SysExit {
                name: "close".into(),
                ret: 0,
            },
        ));
        evs.extend(open(6, 12, "/tmp/l", 3));
        evs.extend(flock(8, 12, 3, false));
        let r = analyze(&evs);
        assert_eq!(r.waits.len(), 1);
        assert_eq!(r.waits[0].holder_tid, None);
        assert!(r.cycles.is_empty());
    }

    /// A 32-bit process's flock (compat_ events) takes part the same way.
    #[test]
    fn compat_syscalls_hold_and_wait_too() {
        let compat = |mut e: Ev| {
            match &mut e.kind {
                Kind::SysEntry { name, .. } | Kind::SysExit { name, .. } => {
                    *name = format!("compat_{name}")
                }
                _ => {}
            }
            e
        };
        let mut evs = Vec::new();
        evs.extend(open(0, 10, "/tmp/l", 3).map(compat));
        evs.extend(flock(2, 10, 3, true).into_iter().map(compat));
        evs.extend(open(4, 12, "/tmp/l", 3));
        evs.extend(flock(6, 12, 3, false));
        let r = analyze(&evs);
        assert_eq!(r.waits.len(), 1);
        assert_eq!(r.waits[0].holder_tid, Some(10));
    }
}
