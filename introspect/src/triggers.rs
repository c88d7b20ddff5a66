//! Flight-recorder triggers: the conditions, prepared on the host from the
//! image's symbols and syscall table, on which an engine writes the
//! flight recorder's window (`hvtrace record --trigger`).

use serde::{Deserialize, Serialize};

/// Errors loading a trigger plan.
#[derive(Debug, thiserror::Error)]
pub enum TriggerPlanError {
    #[error("reading trigger plan {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing trigger plan")]
    Parse(#[from] serde_json::Error),
}

/// What makes a trigger fire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// A kernel function is entered (e.g. `panic`, `oops_begin`).
    Enter { link: u64 },
    /// Syscall `nr` returns `ret`: probed at the return sites of calls to
    /// `do_syscall_64` (link address), where RSP points at `pt_regs`.
    SyscallReturns {
        do_syscall_64: u64,
        nr: u32,
        ret: i64,
    },
    /// Compat (i386) syscall `nr` returns `ret`: probed at the return
    /// sites of calls to `ia32_sys_call` (link address); the number is the
    /// `orig_ax` of the task's own `pt_regs`.
    CompatSyscallReturns {
        ia32_sys_call: u64,
        nr: u32,
        ret: i64,
    },
    /// `do_exit(code)` (link address) with a signal in `code & 0x7f`.
    SignalExit { do_exit: u64 },
}

/// One armed trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The `--trigger` spec it comes from (e.g. "panic").
    pub spec: String,
    /// What fired, as shown in the trace and the log (e.g. "oops_begin").
    pub name: String,
    pub cond: Condition,
}

/// Everything an engine needs for triggers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerPlan {
    pub triggers: Vec<Trigger>,
    /// A FIFO: each byte written to it asks for a snapshot (SIGUSR1 to
    /// hvtrace). Empty: none.
    pub request_fifo: String,
    /// Where the engine appends one JSON line per snapshot it writes.
    pub log: String,
}

/// One line of the trigger log (`TriggerPlan::log`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Snapshot number (folder `snapshot-<n>`).
    pub n: u64,
    /// The spec that fired ("sigusr1" for a request through the FIFO).
    pub spec: String,
    pub name: String,
    /// vCPU, task and trace time (ns since the Epoch) of the trap; absent
    /// for requests from outside the guest.
    pub cpu: Option<u32>,
    pub pid: Option<i32>,
    pub tid: Option<i32>,
    pub comm: Option<String>,
    pub unix_ns: u64,
    /// Syscall return value or exit code of the trap, 0 otherwise.
    pub detail: i64,
    /// Further hits of any trigger while this snapshot was being written.
    pub coalesced: u64,
    /// The snapshot's trace folder; None if it could not be written.
    pub snapshot: Option<String>,
}

impl LogEntry {
    /// The entry as one line of JSON (with its newline).
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses a line written by [`LogEntry::to_json_line`].
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok()
    }
}

impl TriggerPlan {
    /// Reads a plan from a JSON file.
    pub fn load(path: &str) -> Result<Self, TriggerPlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| TriggerPlanError::Io {
            path: path.to_string(),
            source,
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Serializes the plan.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips() {
        let p = TriggerPlan {
            triggers: vec![
                Trigger {
                    spec: "panic".into(),
                    name: "panic".into(),
                    cond: Condition::Enter {
                        link: 0xffff_ffff_81a0_1cb0,
                    },
                },
                Trigger {
                    spec: "syscall=openat:ENOENT".into(),
                    name: "syscall=openat:ENOENT".into(),
                    cond: Condition::SyscallReturns {
                        do_syscall_64: 0xffff_ffff_81a4_3dc0,
                        nr: 257,
                        ret: -2,
                    },
                },
            ],
            request_fifo: "/tmp/x/trigger.fifo".into(),
            log: "/tmp/x/triggers.log".into(),
        };
        let back: TriggerPlan = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }
}
