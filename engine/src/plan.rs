//! The probe plan from a kernel image alone (`guest_symbols`: kallsyms,
//! BTF, syscall table and metadata, cached by content): link-time
//! addresses of the probe sites, structure offsets, the syscall tables and
//! the statedump's layout. Both engines start from it.

use std::path::Path;

use introspect::plan::{ArgSite, Offsets, ProbePlan, Symbols, Syscall, SITE_TRACEPOINTS};

/// Why an image gives no probe plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Open(#[from] image_builder::check::CheckError),
    #[error("symbol {0} not in the image's kallsyms")]
    NoSymbol(String),
    #[error("BTF has no {0}.{1}")]
    NoMember(String, String),
    #[error("neither pcpu_hot nor current_task in kallsyms")]
    NoCurrentTask,
    #[error("no syscall table in the image")]
    NoSyscalls,
}

/// Kernel image → probe plan, from the image alone (guest_symbols: kallsyms,
/// BTF, syscall table and metadata), cached by content.
pub fn build_plan(kernel: &Path) -> Result<ProbePlan, PlanError> {
    plan_of(&image_builder::check::open_kernel(kernel)?)
}

/// The probe plan of an opened image.
pub fn plan_of(k: &guest_symbols::Kernel) -> Result<ProbePlan, PlanError> {
    let sym = |n: &str| k.symbols.addr(n).unwrap_or(0);
    let need = |n: &str| -> Result<u64, PlanError> {
        k.symbols
            .addr(n)
            .ok_or_else(|| PlanError::NoSymbol(n.to_string()))
    };
    let symbols = Symbols {
        linux_banner: need("linux_banner")?,
        entry_syscall_64: sym("entry_SYSCALL_64"),
        entry_syscall_64_size: k.symbols.size_of("entry_SYSCALL_64").unwrap_or(0),
        do_syscall_64: need("do_syscall_64")?,
        switch_to: need("__switch_to")?,
        try_to_wake_up: sym("try_to_wake_up"),
        wake_up_new_task: sym("wake_up_new_task"),
        begin_new_exec: sym("begin_new_exec"),
        do_exit: sym("do_exit"),
        handle_irq_event: sym("handle_irq_event"),
        // The inner handler: it counts LOC in /proc/interrupts.
        sysvec_apic_timer_interrupt: sym("__sysvec_apic_timer_interrupt"),
        init_task: need("init_task")?,
        page_offset_base: sym("page_offset_base"),
        tracepoints: SITE_TRACEPOINTS
            .iter()
            .map(|&name| (name.to_string(), tracepoint_sites(k, name)))
            .collect(),
        ia32_sys_call: sym("ia32_sys_call"),
    };
    let mut offsets = offsets_from_btf(&k.types, &k.symbols)?;
    // task_pt_regs() for the compat syscall exit: the top of the task's
    // stack. BTF has no `thread_union`; THREAD_SIZE is the extent of the
    // init task's stack, whose bounds the linker script names
    offsets.task_stack = k.types.member_offset("task_struct", "stack").unwrap_or(0);
    let extent = |a: &str, b: &str| k.symbols.addr(b)?.checked_sub(k.symbols.addr(a)?);
    offsets.thread_size = extent("__start_init_stack", "__end_init_stack")
        .or_else(|| extent("init_stack", "__end_init_task"))
        .filter(|&n| n.is_power_of_two() && (0x2000..=0x10000).contains(&n))
        .unwrap_or(0);
    let syscalls = plan_syscalls(&k.syscalls);
    if syscalls.is_empty() {
        return Err(PlanError::NoSyscalls);
    }
    let compat_syscalls = plan_syscalls(&k.compat_syscalls);
    Ok(ProbePlan {
        banner_prefix: format!("Linux version {} ", k.release),
        kernel_release: k.release.clone(),
        symbols,
        offsets,
        syscalls,
        compat_syscalls,
        statedump: crate::statedump_layout::layout(&k.types, &k.symbols),
        ..ProbePlan::default()
    })
}

/// A syscall table as the plan holds it: unimplemented slots
/// (sys_ni_syscall) are left out; a name is declared once.
fn plan_syscalls(table: &guest_symbols::SyscallTable) -> Vec<Syscall> {
    let mut seen = std::collections::HashSet::new();
    table
        .entries
        .iter()
        .filter(|sc| !sc.name.contains("ni_syscall"))
        .filter(|sc| seen.insert(syscall_name(&sc.name).to_string()))
        .map(|sc| {
            let args = sc.args.as_deref().unwrap_or(&[]);
            Syscall {
                nr: sc.nr,
                name: syscall_name(&sc.name).to_string(),
                args: args.iter().map(|a| a.name.clone()).collect(),
                arg_types: args.iter().map(|a| a.type_name.clone()).collect(),
                string_args: args
                    .iter()
                    .enumerate()
                    .take(6)
                    .filter(|(_, a)| is_user_string(&a.type_name, &a.name))
                    .fold(0u8, |m, (i, _)| m | 1 << i),
            }
        })
        .collect()
}

/// The static-branch sites of a tracepoint, for the planner.
fn tracepoint_sites(k: &guest_symbols::Kernel, tracepoint: &str) -> Vec<ArgSite> {
    k.tracepoint_sites
        .iter()
        .filter(|t| t.tracepoint == tracepoint)
        .map(|t| ArgSite {
            addr: t.addr,
            // neither known: the planner says so and skips the tracepoint
            reg: t.first_arg.unwrap_or(u8::MAX),
            constant: t.first_arg_const,
        })
        .collect()
}

/// The syscall's own name: argument-less syscalls' handlers alias
/// `__do_sys_<name>`, which guest_symbols may report instead.
fn syscall_name(name: &str) -> &str {
    name.strip_prefix("__do_sys_").unwrap_or(name)
}

/// A NUL-terminated user string argument (paths and names; `buf` of
/// write-like calls is data, not a string).
fn is_user_string(type_name: &str, name: &str) -> bool {
    type_name.contains("const char") && type_name.matches('*').count() == 1 && name != "buf"
}

fn offsets_from_btf(
    btf: &guest_symbols::KernelTypes,
    syms: &guest_symbols::KernelSymbols,
) -> Result<Offsets, PlanError> {
    let m = |s: &str, f: &str| -> Result<u64, PlanError> {
        btf.member_offset(s, f)
            .ok_or_else(|| PlanError::NoMember(s.to_string(), f.to_string()))
    };
    let (task_state, task_state_size) = match btf.member("task_struct", "__state") {
        Some(mem) => (mem.offset, mem.size.clamp(4, 8)),
        None => (m("task_struct", "state")?, 8),
    };
    // >= 6.2 (and some backports): pcpu_hot.current_task; else the per-cpu
    // variable current_task. Per-cpu symbols are offsets in the per-cpu area.
    let percpu_current_task = match (
        syms.addr("pcpu_hot"),
        btf.member_offset("pcpu_hot", "current_task"),
    ) {
        (Some(base), Some(off)) => base + off,
        _ => syms.addr("current_task").ok_or(PlanError::NoCurrentTask)?,
    };
    Ok(Offsets {
        task_pid: m("task_struct", "pid")?,
        task_tgid: m("task_struct", "tgid")?,
        task_comm: m("task_struct", "comm")?,
        task_prio: m("task_struct", "prio")?,
        task_state,
        task_state_size,
        task_real_parent: m("task_struct", "real_parent")?,
        task_tasks: m("task_struct", "tasks")?,
        task_cpu: m("task_struct", "thread_info.cpu").or_else(|_| m("task_struct", "cpu"))?,
        percpu_current_task,
        binprm_filename: m("linux_binprm", "filename")?,
        irq_desc_irq: m("irq_desc", "irq_data.irq")?,
        irq_desc_action: m("irq_desc", "action")?,
        irqaction_name: m("irqaction", "name")?,
        task_mm: m("task_struct", "mm")?,
        mm_pgd: m("mm_struct", "pgd")?,
        ..Offsets::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default image's kernel in the cache folder (`HVTRACE_CACHE`), if
    /// one was built; the test says so and passes without one.
    fn cached_kernel() -> Option<std::path::PathBuf> {
        let images = image_builder::cache::root().join("images");
        let mut found: Vec<_> = std::fs::read_dir(images)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("vmlinuz"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.into_iter().next()
    }

    #[test]
    fn plan_of_a_real_kernel_image() {
        let Some(kernel) = cached_kernel() else {
            eprintln!("no cached image under HVTRACE_CACHE: skipped");
            return;
        };
        let plan = build_plan(&kernel).unwrap();
        assert!(plan.symbols.linux_banner != 0);
        assert!(plan.symbols.do_syscall_64 != 0);
        assert!(plan.symbols.switch_to != 0);
        assert!(plan.symbols.init_task != 0);
        assert!(
            plan.syscalls.len() > 300,
            "{} syscalls",
            plan.syscalls.len()
        );
        assert!(plan.syscalls.iter().any(|s| s.name == "openat"));
        assert!(!plan.kernel_release.is_empty());
    }

    #[test]
    fn a_file_that_is_no_kernel_gives_no_plan() {
        let path = std::env::temp_dir().join(format!("hvtrace-plan-{}", std::process::id()));
        std::fs::write(&path, b"not a kernel").unwrap();
        assert!(matches!(build_plan(&path), Err(PlanError::Open(_))));
        std::fs::remove_file(&path).unwrap();
    }
}
