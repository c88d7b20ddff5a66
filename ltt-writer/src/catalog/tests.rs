use super::*;

#[test]
fn syscall_split_in_out() {
    let read = SyscallDecl {
        nr: 0,
        name: "read".into(),
        args: vec![
            SyscallArg {
                name: "fd".into(),
                kind: ArgKind::Unsigned(32),
                dir: ArgDir::In,
            },
            SyscallArg {
                name: "buf".into(),
                kind: ArgKind::Pointer,
                dir: ArgDir::Out,
            },
            SyscallArg {
                name: "count".into(),
                kind: ArgKind::Unsigned(64),
                dir: ArgDir::In,
            },
        ],
    };
    let c = Catalog::kernel(&[read]).unwrap();
    let ids = c.syscall(0).unwrap();
    let entry = c.event(ids.entry).unwrap();
    assert_eq!(entry.name, "syscall_entry_read");
    let names: Vec<_> = entry.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["fd", "count"]);
    let exit = c.event(ids.exit).unwrap();
    let names: Vec<_> = exit.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["ret", "buf"]);
    assert_eq!(exit.fields[0].ty, FieldType::I64);
    assert!(c.kernel_ids().sched_switch.unwrap() < 31);
    // the same number in the compat table is another event
    let native_entry = ids.entry;
    let mut c = c;
    let open = SyscallDecl {
        nr: 0,
        name: "read".into(),
        args: vec![],
    };
    c.add_compat_syscalls(&[open]).unwrap();
    let compat = c.compat_syscall(0).unwrap();
    assert_eq!(
        c.event(compat.entry).unwrap().name,
        "compat_syscall_entry_read"
    );
    assert_eq!(
        c.event(compat.exit).unwrap().name,
        "compat_syscall_exit_read"
    );
    assert_eq!(c.syscall(0).unwrap().entry, native_entry);
    assert!(c.id_of("compat_syscall_exit_unknown").is_some());
}

#[test]
fn rejects_bad_names_and_duplicates() {
    let mut c = Catalog::new();
    assert!(matches!(
        c.add_event("1x", vec![]),
        Err(CatalogError::BadName(_))
    ));
    c.add_event("probe_a", vec![]).unwrap();
    assert!(matches!(
        c.add_event("probe_a", vec![]),
        Err(CatalogError::Duplicate(_))
    ));
    let bad = vec![FieldDecl::new("x", FieldType::int(12, false))];
    assert!(matches!(
        c.add_event("probe_b", bad),
        Err(CatalogError::BadIntSize { .. })
    ));
}
