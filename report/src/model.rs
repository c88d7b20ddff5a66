//! Trace events as the analyses see them: typed, with the task each
//! happened in. Built from the catalog's names and field names, so any
//! trace with lttng-modules' kernel event layout reads the same.

use ltt_writer::reader::{DecodedEvent, FieldValue};

use crate::trace::Trace;

/// A syscall argument value as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Arg {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Int(v) => write!(f, "{v}"),
            Arg::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Switch {
        prev_tid: i32,
        prev_state: i64,
        next_tid: i32,
        next_comm: String,
    },
    /// `sched_waking`: a wakeup begins (the waker is the event's task).
    Waking {
        tid: i32,
    },
    /// `sched_wakeup`: the task is runnable (may be logged on another CPU
    /// than the waker's, so it names no waker).
    Wakeup {
        tid: i32,
    },
    SysEntry {
        name: String,
        args: Vec<(String, Arg)>,
    },
    SysExit {
        name: String,
        ret: i64,
    },
    IrqEntry {
        irq: i64,
        name: String,
    },
    IrqExit {
        irq: i64,
    },
    SoftirqEntry {
        vec: i64,
    },
    SoftirqExit {
        vec: i64,
    },
    Fork {
        parent_tid: i32,
        child_tid: i32,
        child_pid: i32,
        child_comm: String,
    },
    Exec {
        tid: i32,
        filename: String,
    },
    Exit {
        tid: i32,
    },
    Statedump {
        tid: i32,
        pid: i32,
        name: String,
        kernel_thread: bool,
    },
    Other,
}

#[derive(Debug, Clone)]
pub struct Ev {
    pub ts: u64,
    pub cpu: u32,
    pub pid: i32,
    pub tid: i32,
    pub comm: String,
    pub kind: Kind,
}

fn comm(bytes: &[u8; 16]) -> String {
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&bytes[..n]).into_owned()
}

/// Converts every event of a trace.
pub fn events(trace: &Trace) -> Vec<Ev> {
    trace.events.iter().map(|e| convert(trace, e)).collect()
}

fn convert(t: &Trace, e: &DecodedEvent) -> Ev {
    let name = t.name(e);
    let int = |f: &str| t.int(e, f).unwrap_or(-1);
    let tid = |f: &str| int(f) as i32;
    let text = |f: &str| t.text(e, f).unwrap_or_default();
    let kind = match name {
        "sched_switch" => Kind::Switch {
            prev_tid: tid("prev_tid"),
            prev_state: int("prev_state"),
            next_tid: tid("next_tid"),
            next_comm: text("next_comm"),
        },
        "sched_waking" => Kind::Waking { tid: tid("tid") },
        "sched_wakeup" | "sched_wakeup_new" => Kind::Wakeup { tid: tid("tid") },
        "irq_handler_entry" => Kind::IrqEntry {
            irq: int("irq"),
            name: text("name"),
        },
        "irq_handler_exit" => Kind::IrqExit { irq: int("irq") },
        // lttng-modules' events for the local APIC timer (/proc/interrupts LOC).
        "x86_irq_vectors_local_timer_entry" => Kind::IrqEntry {
            irq: int("vector"),
            name: "local timer".into(),
        },
        "x86_irq_vectors_local_timer_exit" => Kind::IrqExit { irq: int("vector") },
        "irq_softirq_entry" => Kind::SoftirqEntry { vec: int("vec") },
        "irq_softirq_exit" => Kind::SoftirqExit { vec: int("vec") },
        "sched_process_fork" => Kind::Fork {
            parent_tid: tid("parent_tid"),
            child_tid: tid("child_tid"),
            child_pid: tid("child_pid"),
            child_comm: text("child_comm"),
        },
        "sched_process_exec" => Kind::Exec {
            tid: tid("tid"),
            filename: text("filename"),
        },
        "sched_process_exit" => Kind::Exit { tid: tid("tid") },
        "lttng_statedump_process_state" => Kind::Statedump {
            tid: tid("tid"),
            pid: tid("pid"),
            name: text("name"),
            // lttng's enum: 0 user thread, 1 kernel thread.
            kernel_thread: int("type") == 1,
        },
        _ => {
            // a 32-bit process's syscalls keep lttng's compat_ prefix:
            // their own rows in the tables, the same meaning to the analyses
            let (compat, name) = match name.strip_prefix("compat_") {
                Some(rest) => ("compat_", rest),
                None => ("", name),
            };
            if let Some(sys) = name.strip_prefix("syscall_entry_") {
                let decl = t.catalog.event(e.id);
                let args = decl
                    .map(|d| {
                        d.fields
                            .iter()
                            .zip(&e.fields)
                            .map(|(f, v)| {
                                let a = match v {
                                    FieldValue::Str(s) => Arg::Str(s.clone()),
                                    other => Arg::Int(other.as_i64().unwrap_or(0)),
                                };
                                (f.name.clone(), a)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Kind::SysEntry {
                    name: format!("{compat}{sys}"),
                    args,
                }
            } else if let Some(sys) = name.strip_prefix("syscall_exit_") {
                Kind::SysExit {
                    name: format!("{compat}{sys}"),
                    ret: int("ret"),
                }
            } else {
                Kind::Other
            }
        }
    };
    Ev {
        ts: e.ts,
        cpu: e.cpu,
        pid: e.ctx.pid,
        tid: e.ctx.tid,
        comm: comm(&e.ctx.procname),
        kind,
    }
}
