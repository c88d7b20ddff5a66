//! The probe plan: everything the core needs to know about a kernel image,
//! prepared on the host from the image's own symbols and types, handed to
//! an engine (the TCG plugin reads it as JSON).

use serde::{Deserialize, Serialize};

/// Errors loading a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading probe plan {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing probe plan")]
    Parse(#[from] serde_json::Error),
    #[error("probe plan lacks {0}")]
    Missing(&'static str),
}

/// Event classes a user can ask for.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventClasses {
    pub syscalls: bool,
    pub sched: bool,
    pub irq: bool,
    pub proc: bool,
}

impl EventClasses {
    /// All classes.
    pub fn all() -> Self {
        Self {
            syscalls: true,
            sched: true,
            irq: true,
            proc: true,
        }
    }
    /// Parses "syscalls,sched,irq,proc" (or "all").
    pub fn parse(s: &str) -> Option<Self> {
        let mut c = Self::default();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "all" => c = Self::all(),
                "syscalls" | "syscall" => c.syscalls = true,
                "sched" => c.sched = true,
                "irq" => c.irq = true,
                "proc" => c.proc = true,
                _ => return None,
            }
        }
        Some(c)
    }
}

/// Link-time (unrelocated) addresses of the symbols the probes use.
/// Absent symbols are 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Symbols {
    pub linux_banner: u64,
    pub entry_syscall_64: u64,
    pub entry_syscall_64_size: u64,
    pub do_syscall_64: u64,
    pub switch_to: u64,
    pub try_to_wake_up: u64,
    pub wake_up_new_task: u64,
    pub begin_new_exec: u64,
    pub do_exit: u64,
    pub handle_irq_event: u64,
    pub sysvec_apic_timer_interrupt: u64,
    pub init_task: u64,
    /// The variable holding the direct map's base (CONFIG_RANDOMIZE_MEMORY).
    #[serde(default)]
    pub page_offset_base: u64,
    /// Static-branch sites of the tracepoints probed where they sit (see
    /// `guest_symbols::tracepoints`), by tracepoint name: those of
    /// [`SITE_TRACEPOINTS`]. Events such as `sched_wakeup` have no function
    /// of their own, and at its sites `sched_waking` is exact where
    /// `try_to_wake_up`'s entry can only guess.
    #[serde(default)]
    pub tracepoints: std::collections::BTreeMap<String, Vec<ArgSite>>,
    /// The compat syscall dispatcher `ia32_sys_call(regs, nr)` (0: absent).
    #[serde(default)]
    pub ia32_sys_call: u64,
}

/// The tracepoints probed at their static-branch sites.
pub const SITE_TRACEPOINTS: [&str; 6] = [
    "sched_waking",
    "sched_wakeup",
    "sched_wakeup_new",
    "softirq_entry",
    "softirq_exit",
    "softirq_raise",
];

impl Symbols {
    /// The sites of tracepoint `name` (empty: none known).
    pub fn sites(&self, name: &str) -> &[ArgSite] {
        self.tracepoints.get(name).map_or(&[], Vec::as_slice)
    }
}

/// A probe point inside a function, where a value the decoder needs is in
/// a register the compiler chose.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArgSite {
    /// Link-time address.
    pub addr: u64,
    /// The register, by x86 encoding number (see [`crate::Reg::from_x86`]).
    pub reg: u8,
    /// The value itself when the compiler passes a constant (then `reg`
    /// means nothing).
    #[serde(default)]
    pub constant: Option<u32>,
}

/// Structure offsets (bytes) from BTF.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Offsets {
    pub task_pid: u64,
    pub task_tgid: u64,
    pub task_comm: u64,
    pub task_prio: u64,
    pub task_state: u64,
    /// Size of the state field (4 for `unsigned int __state`, 8 for `long state`).
    pub task_state_size: u64,
    pub task_real_parent: u64,
    pub task_tasks: u64,
    pub task_cpu: u64,
    /// Offset of the current-task pointer in the per-CPU area
    /// (`pcpu_hot.current_task` or the `current_task` per-cpu variable).
    pub percpu_current_task: u64,
    pub binprm_filename: u64,
    pub irq_desc_irq: u64,
    pub irq_desc_action: u64,
    pub irqaction_name: u64,
    /// `task_struct.mm` and `mm_struct.pgd` (0: unknown).
    #[serde(default)]
    pub task_mm: u64,
    #[serde(default)]
    pub mm_pgd: u64,
    /// `task_struct.stack` and THREAD_SIZE (the size of `thread_union`),
    /// for `task_pt_regs` (0: unknown).
    #[serde(default)]
    pub task_stack: u64,
    #[serde(default)]
    pub thread_size: u64,
}

/// One syscall of the kernel's table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Syscall {
    pub nr: u32,
    pub name: String,
    pub args: Vec<String>,
    /// C types of the arguments, as the kernel's syscall metadata gives them.
    #[serde(default)]
    pub arg_types: Vec<String>,
    /// Bit i set: argument i is a user string (`const char __user *`).
    pub string_args: u8,
}

/// The whole plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbePlan {
    /// Expected start of the running kernel's `linux_banner`, e.g.
    /// "Linux version 6.1.0-56-amd64 ".
    pub banner_prefix: String,
    pub kernel_release: String,
    pub symbols: Symbols,
    pub offsets: Offsets,
    pub syscalls: Vec<Syscall>,
    pub events: EventClasses,
    /// Output folder of the engine.
    pub out_dir: String,
    /// Take the statedump when a task execs this file (the traced
    /// command); empty: at the first probe hit.
    #[serde(default)]
    pub statedump_exec: String,
    /// Buffering: "lossless" (default), "discard", or "flight-recorder"
    /// (keep the newest `flight_bytes` per vCPU, written at the end).
    #[serde(default)]
    pub buffer: String,
    #[serde(default)]
    pub flight_bytes: u64,
    /// Bytes per sub-buffer (CTF packet) of each vCPU's stream, and
    /// sub-buffers per vCPU in the lossless and discard pools (0: the
    /// writer's defaults).
    #[serde(default)]
    pub subbuf_size: u64,
    #[serde(default)]
    pub num_subbuf: u32,
    /// Also write each vCPU's records in the raw codec form
    /// (`raw/cpuN.bin`, see `codec`), for debugging.
    #[serde(default)]
    pub raw: bool,
    /// Sample mode: samples per second per vCPU (0: trap mode).
    #[serde(default)]
    pub sample_hz: u32,
    /// User-defined probes (`--probe`), as given (see `userprobe`); the
    /// engine parses them again and resolves their symbols with
    /// `user_probe_symbols`.
    #[serde(default)]
    pub user_probes: Vec<String>,
    /// Link-time address of every symbol the user probes name.
    #[serde(default)]
    pub user_probe_symbols: std::collections::BTreeMap<String, u64>,
    /// The 32-bit (compat, i386 ABI) syscalls, from `ia32_sys_call`'s code
    /// (empty: none traced).
    #[serde(default)]
    pub compat_syscalls: Vec<Syscall>,
    /// Time-transparent tracing: the guest's clock advances 2^shift ns per
    /// instruction executed, and the trace's timestamps are that clock
    /// (`None`: host time).
    #[serde(default)]
    pub instruction_clock_shift: Option<u32>,
    /// Layouts of the statedump's file, memory-map and device walks.
    #[serde(default)]
    pub statedump: crate::statedump::StatedumpLayout,
    /// Also stream the trace to an lttng-relayd at `HOST:CONTROL:DATA`
    /// (empty: no), as session `relayd_session` of host
    /// `relayd_hostname`.
    #[serde(default)]
    pub relayd: String,
    #[serde(default)]
    pub relayd_session: String,
    #[serde(default)]
    pub relayd_hostname: String,
}

impl ProbePlan {
    /// Reads a plan from a JSON file.
    pub fn load(path: &str) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.to_string(),
            source,
        })?;
        let plan: ProbePlan = serde_json::from_str(&text)?;
        if plan.symbols.linux_banner == 0 || plan.banner_prefix.is_empty() {
            return Err(PlanError::Missing("linux_banner / banner_prefix"));
        }
        Ok(plan)
    }

    /// Serializes the plan.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
