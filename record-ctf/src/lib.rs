//! Decoded introspection records → lttng-modules events through
//! `ltt_writer` (one producer per vCPU): the mapping both engines share,
//! kept apart so that `introspect` never knows about CTF and `ltt_writer`
//! never knows how events were obtained.

pub mod syscall_dirs;
pub mod triggers;
pub mod user;

use introspect::decode::{Event, GuestStr, Record};
use introspect::plan::{ProbePlan, Syscall};
use introspect::statedump::Item;
use introspect::userprobe::{FieldKind, FieldValue, ProbeSpec, ResolvedProbe, MAX_FIELDS};
use introspect::Task;
use ltt_writer::{
    ArgDir, ArgKind, Catalog, FieldDecl, FieldType, Fork, ProcessState, ProduceError, Producer,
    SyscallArg, SyscallDecl, TaskCtx, TaskRef, Value,
};

/// How a syscall argument of C type `ty` is recorded.
pub fn arg_kind(ty: &str, is_string: bool) -> ArgKind {
    let t = ty.trim();
    if is_string {
        ArgKind::String
    } else if t.contains('*') {
        ArgKind::Pointer
    } else if matches!(
        t,
        "int" | "pid_t" | "clockid_t" | "timer_t" | "mqd_t" | "key_t"
    ) {
        ArgKind::Signed(32)
    } else if t.starts_with("unsigned int")
        || matches!(
            t,
            "u32" | "umode_t" | "uid_t" | "gid_t" | "qid_t" | "rwf_t" | "key_serial_t"
        )
    {
        ArgKind::Unsigned(32)
    } else if matches!(
        t,
        "long" | "loff_t" | "off_t" | "ssize_t" | "time_t" | "__kernel_old_time_t"
    ) {
        ArgKind::Signed(64)
    } else {
        ArgKind::Unsigned(64)
    }
}

/// How an argument of a 32-bit (compat) syscall is recorded: as the native
/// declaration's type, narrowed to the 32-bit registers it came in.
pub fn compat_arg_kind(ty: &str, is_string: bool) -> ArgKind {
    match arg_kind(ty, is_string) {
        ArgKind::Signed(_) => ArgKind::Signed(32),
        ArgKind::Unsigned(_) => ArgKind::Unsigned(32),
        k => k,
    }
}

/// The direction of argument `index` of syscall `name` (see
/// [`syscall_dirs`]). A string lttng-modules would read again at the exit
/// (`sc_inout`, e.g. `openat2`'s `filename`) is recorded at the entry
/// only: the exit probe reads no guest strings.
fn exit_dir(name: &str, index: usize, is_string: bool) -> ArgDir {
    match syscall_dirs::arg_dir(name, index) {
        ArgDir::InOut if is_string => ArgDir::In,
        d => d,
    }
}

fn decls(table: &[Syscall], kind: fn(&str, bool) -> ArgKind) -> Vec<SyscallDecl> {
    table
        .iter()
        .map(|s| SyscallDecl {
            nr: s.nr,
            name: s.name.clone(),
            args: s
                .args
                .iter()
                .enumerate()
                .take(6)
                .map(|(i, name)| SyscallArg {
                    name: name.clone(),
                    kind: if s.name == "pipe2" && i == 0 {
                        ArgKind::UserInts(2)
                    } else {
                        kind(
                            s.arg_types.get(i).map(String::as_str).unwrap_or(""),
                            s.string_args & (1 << i) != 0,
                        )
                    },
                    dir: exit_dir(&s.name, i, s.string_args & (1 << i) != 0),
                })
                .collect(),
        })
        .collect()
}

/// The trace catalog for a plan's syscall table.
pub fn catalog(plan: &ProbePlan) -> Catalog {
    catalog_checked(plan)
        .unwrap_or_else(|_| Catalog::kernel(&[]).unwrap_or_else(|_| Catalog::new()))
}

/// The catalog, or why the syscall table could not be declared.
pub fn catalog_checked(plan: &ProbePlan) -> Result<Catalog, ltt_writer::catalog::CatalogError> {
    let mut c = Catalog::kernel(&decls(&plan.syscalls, arg_kind))?;
    if !plan.compat_syscalls.is_empty() {
        c.add_compat_syscalls(&decls(&plan.compat_syscalls, compat_arg_kind))?;
    }
    for name in [TIMER_ENTRY, TIMER_EXIT] {
        c.add_event(
            name,
            vec![FieldDecl::new("vector", FieldType::int(32, true))],
        )?;
    }
    c.add_event(
        SAMPLE,
        vec![
            FieldDecl::new("ip", FieldType::hex(64)),
            FieldDecl::new("kernel", FieldType::int(8, false)),
        ],
    )?;
    for spec in &plan.user_probes {
        // The host checked every spec; one that does not parse is left out.
        // A probe the catalog refuses has no event; the others keep theirs.
        if let Ok(p) = ProbeSpec::parse(spec) {
            let fields = p.fields.iter().map(|f| (f.name.as_str(), f.kind));
            let _ = c.add_event(&p.name, user_fields(fields));
        }
    }
    Ok(c)
}

/// Name of the field every user-probe event ends with: bit i set = field
/// i was read (clear: it is 0, or [`UNREADABLE`] for a string, because it
/// could not be).
pub const VALID: &str = "valid";

/// The CTF fields of a user probe's event: its own, then [`VALID`].
pub fn user_fields<'a>(fields: impl Iterator<Item = (&'a str, FieldKind)>) -> Vec<FieldDecl> {
    let mut out: Vec<FieldDecl> = fields
        .map(|(name, kind)| {
            let ty = match kind {
                FieldKind::Unsigned(b) => FieldType::int(b, false),
                FieldKind::Signed(b) => FieldType::int(b, true),
                FieldKind::Hex(b) => FieldType::hex(b),
                FieldKind::String => FieldType::Str,
            };
            FieldDecl::new(name, ty)
        })
        .collect();
    out.push(FieldDecl::new(VALID, FieldType::hex(32)));
    out
}

/// Writes one hit of user probe `probe` (event `id`) with the values it
/// fetched (`vals[..probe.len()]`). No allocation: the values borrow `vals`.
pub fn emit_user(
    p: &mut Producer,
    id: u32,
    ts: u64,
    ctx: &TaskCtx,
    probe: &ResolvedProbe,
    vals: &[FieldValue],
) -> Result<(), ProduceError> {
    let mut v = [Value::U(0); MAX_FIELDS + 1];
    let mut valid = 0u64;
    let mut n = 0;
    for (i, ((_, kind), fv)) in probe.fields().zip(vals).enumerate().take(MAX_FIELDS) {
        v[i] = match kind {
            // Marked in the text too: babeltrace2 2.0 shows an empty
            // string as the previous event's.
            FieldKind::String if !fv.valid => Value::Str(UNREADABLE),
            FieldKind::String => Value::Str(fv.as_bytes()),
            FieldKind::Signed(_) => Value::I(fv.as_i64()),
            FieldKind::Unsigned(_) | FieldKind::Hex(_) => Value::U(fv.int),
        };
        if fv.valid {
            valid |= 1 << i;
        }
        n = i + 1;
    }
    v[n] = Value::U(valid);
    p.emit(id, ts, ctx, &v[..=n])
}

/// lttng-modules' events of the local APIC timer interrupt.
pub const TIMER_ENTRY: &str = "x86_irq_vectors_local_timer_entry";
pub const TIMER_EXIT: &str = "x86_irq_vectors_local_timer_exit";
/// hvtrace's sample event (`--mode sample`).
pub const SAMPLE: &str = "hvtrace_sample";
/// The value of a user string argument that could not be read.
pub const UNREADABLE: &[u8] = b"(unreadable)";

fn task_ref(t: &Task) -> TaskRef<'_> {
    TaskRef {
        comm: &t.comm,
        tid: t.tid,
        prio: t.prio - 100,
    }
}

/// A string argument's bytes: one still unreadable after the retry (see
/// `introspect::defer`) is marked, never left empty.
fn string_value<'a>(args: &[u64; 6], str_arg: Option<u8>, string: &'a GuestStr) -> &'a [u8] {
    match str_arg {
        Some(i) if !string.ok && args[usize::from(i) % 6] != 0 => UNREADABLE,
        _ => string.as_str().as_bytes(),
    }
}

/// A syscall's six argument values, the string one as `s`.
fn arg_values<'a>(args: &[u64; 6], str_arg: Option<u8>, s: &'a [u8]) -> [Value<'a>; 6] {
    let mut vals = [Value::U(0); 6];
    for (i, v) in vals.iter_mut().enumerate() {
        *v = if str_arg == Some(i as u8) {
            Value::Str(s)
        } else {
            Value::U(args[i])
        };
    }
    vals
}

/// `pipe2` in the x86-64 and the i386 tables: its `fildes` is recorded as
/// the two descriptors (lttng-modules' own layout for it), not a pointer.
const PIPE2: u32 = 293;
const I386_PIPE2: u32 = 331;

fn pipe_fds(fds: &[i32; 2]) -> [u64; 2] {
    fds.map(|fd| fd as i64 as u64)
}

/// A syscall exit's argument values: the registers, with `pipe2`'s
/// descriptors in place of its `fildes` pointer.
fn exit_values<'a>(nr: u32, pipe2: u32, args: &[u64; 6], fds: &'a [u64; 2]) -> [Value<'a>; 6] {
    let mut vals = arg_values(args, None, b"");
    if nr == pipe2 {
        vals[0] = Value::Ints(fds);
    }
    vals
}

/// Writes `r` to `p`.
pub fn emit(p: &mut Producer, r: &Record) -> Result<(), ProduceError> {
    let ctx = TaskCtx::new(r.current.pid, r.current.tid, &r.current.comm);
    let ts = r.ts;
    let res = match &r.event {
        Event::SyscallEntry {
            nr,
            args,
            str_arg,
            string,
        } => {
            let s = string_value(args, *str_arg, string);
            p.syscall_entry(ts, &ctx, *nr, &arg_values(args, *str_arg, s))
        }
        Event::SyscallExit { nr, ret, args, fds } => {
            let fds = pipe_fds(fds);
            p.syscall_exit(ts, &ctx, *nr, *ret, &exit_values(*nr, PIPE2, args, &fds))
        }
        Event::CompatSyscallEntry {
            nr,
            args,
            str_arg,
            string,
        } => {
            let s = string_value(args, *str_arg, string);
            p.compat_syscall_entry(ts, &ctx, *nr, &arg_values(args, *str_arg, s))
        }
        Event::CompatSyscallExit { nr, ret, args, fds } => {
            let fds = pipe_fds(fds);
            let vals = exit_values(*nr, I386_PIPE2, args, &fds);
            p.compat_syscall_exit(ts, &ctx, *nr, *ret, &vals)
        }
        Event::SchedSwitch { prev, next } => p.sched_switch(
            ts,
            &ctx,
            task_ref(prev),
            prev.state & 0xffff,
            task_ref(next),
        ),
        Event::SchedWaking { task, target_cpu } => {
            p.sched_waking(ts, &ctx, task_ref(task), *target_cpu)
        }
        Event::SchedWakeup { task, target_cpu } => {
            p.sched_wakeup(ts, &ctx, task_ref(task), *target_cpu)
        }
        Event::SchedWakeupNew { task, target_cpu } => {
            p.sched_wakeup_new(ts, &ctx, task_ref(task), *target_cpu)
        }
        Event::ProcessFork { parent, child } => {
            let vtids = [child.tid];
            p.sched_process_fork(
                ts,
                &ctx,
                &Fork {
                    parent_comm: &parent.comm,
                    parent_tid: parent.tid,
                    parent_pid: parent.pid,
                    parent_ns_inum: 0,
                    child_comm: &child.comm,
                    child_tid: child.tid,
                    vtids: &vtids,
                    child_pid: child.pid,
                    child_ns_inum: 0,
                },
            )
        }
        Event::ProcessExec {
            filename,
            tid,
            old_tid,
        } => p.sched_process_exec(ts, &ctx, filename.as_str().as_bytes(), *tid, *old_tid),
        Event::ProcessExit { task } => p.sched_process_exit(ts, &ctx, task_ref(task)),
        Event::IrqEntry { irq, name } => p.irq_handler_entry(ts, &ctx, *irq, name),
        Event::IrqExit { irq, ret } => p.irq_handler_exit(ts, &ctx, *irq, *ret),
        Event::SoftirqEntry { vec } => p.irq_softirq_entry(ts, &ctx, *vec),
        Event::SoftirqExit { vec } => p.irq_softirq_exit(ts, &ctx, *vec),
        Event::SoftirqRaise { vec } => p.irq_softirq_raise(ts, &ctx, *vec),
        Event::TimerEntry { vector } | Event::TimerExit { vector } => {
            let name = if matches!(r.event, Event::TimerEntry { .. }) {
                TIMER_ENTRY
            } else {
                TIMER_EXIT
            };
            match p.catalog().id_of(name) {
                Some(id) => p.emit(id, ts, &ctx, &[Value::I(i64::from(*vector))]),
                None => Err(ProduceError::NotDeclared(name)),
            }
        }
        Event::Sample { ip } => match p.catalog().id_of(SAMPLE) {
            Some(id) => p.emit(
                id,
                ts,
                &ctx,
                &[
                    Value::U(*ip),
                    Value::U(u64::from(*ip >= 0xffff_8000_0000_0000)),
                ],
            ),
            None => Err(ProduceError::NotDeclared(SAMPLE)),
        },
        Event::Statedump { task, ppid, files } => {
            let kthread = task.pid == 0 || task.pid == 2 || *ppid == 2;
            p.lttng_statedump_process_state(
                ts,
                &ctx,
                &ProcessState {
                    tid: task.tid,
                    pid: task.pid,
                    ppid: *ppid,
                    name: &task.comm,
                    kind: i32::from(kthread),
                    mode: 5,
                    submode: 0,
                    status: if task.state == 0 { 2 } else { 5 },
                    cpu: r.cpu,
                    file_table_address: *files,
                },
            )
        }
    };
    res
}

/// Writes one of the statedump's other events (see
/// `introspect::statedump::Item`), taken by `current` at `ts`.
pub fn emit_statedump_item(
    p: &mut Producer,
    ts: u64,
    current: &Task,
    item: &Item<'_>,
) -> Result<(), ProduceError> {
    use ltt_writer::statedump as sd;
    let ctx = TaskCtx::new(current.pid, current.tid, &current.comm);
    match *item {
        Item::FileDescriptor {
            files,
            fd,
            flags,
            fmode,
            filename,
        } => p.statedump_event(
            sd::FILE_DESCRIPTOR,
            ts,
            &ctx,
            &[
                Value::U(files),
                Value::I(fd.into()),
                Value::U(flags.into()),
                Value::U(fmode.into()),
                Value::Str(filename),
            ],
        ),
        Item::VmMap {
            pid,
            start,
            end,
            flags,
            inode,
            pgoff,
        } => p.statedump_event(
            sd::VM_MAP,
            ts,
            &ctx,
            &[
                Value::I(pid.into()),
                Value::U(start),
                Value::U(end),
                Value::U(flags),
                Value::U(inode),
                Value::U(pgoff),
            ],
        ),
        Item::Interrupt {
            irq,
            name,
            action,
            tid,
        } => p.statedump_event(
            sd::INTERRUPT,
            ts,
            &ctx,
            &[
                Value::U(irq.into()),
                Value::Str(name),
                Value::Str(action),
                Value::I(tid.into()),
            ],
        ),
        Item::CpuTopology {
            cpu_id,
            vendor,
            family,
            model,
            model_name,
            physical_id,
            core_id,
            cores,
        } => p.statedump_event(
            sd::CPU_TOPOLOGY,
            ts,
            &ctx,
            &[
                Value::Str(b"x86"),
                Value::U(cpu_id.into()),
                Value::Str(vendor),
                Value::U(family.into()),
                Value::U(model.into()),
                Value::Str(model_name),
                Value::U(physical_id.into()),
                Value::U(core_id.into()),
                Value::U(cores.into()),
            ],
        ),
        Item::BlockDevice { dev, diskname } => p.statedump_event(
            sd::BLOCK_DEVICE,
            ts,
            &ctx,
            &[Value::U(dev.into()), Value::Str(diskname)],
        ),
        Item::NetworkInterface { name, address_ipv4 } => p.statedump_event(
            sd::NETWORK_INTERFACE,
            ts,
            &ctx,
            &[Value::Str(name), Value::U(address_ipv4.into())],
        ),
    }
}
