//! A small BTF blob with the kernel's shapes (its kind constants written
//! out here, not taken from the parser they check).

// --- BTF -------------------------------------------------------------------

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;

#[derive(Default)]
struct Btf {
    types: Vec<u8>,
    strs: Vec<u8>,
    last_id: u32,
}

impl Btf {
    fn str(&mut self, s: &str) -> u32 {
        if self.strs.is_empty() {
            self.strs.push(0);
        }
        if s.is_empty() {
            return 0;
        }
        let off = self.strs.len() as u32;
        self.strs.extend_from_slice(s.as_bytes());
        self.strs.push(0);
        off
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32, extra: &[u32]) -> u32 {
        let name = self.str(name);
        let info = kind << 24 | vlen | u32::from(kflag) << 31;
        for v in [name, info, st].iter().chain(extra) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        self.last_id += 1;
        self.last_id
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.ty(name, INT, 0, false, size, &[size * 8])
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.ty("", PTR, 0, false, to, &[])
    }

    /// Members: (name, type, bit offset, bitfield width or 0).
    fn composite(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let mut extra = Vec::new();
        for &(n, t, off, bits) in members {
            let n = self.str(n);
            extra.extend([n, t, if kflag { bits << 24 | off } else { off }]);
        }
        self.ty(name, kind, members.len() as u32, kflag, size, &extra)
    }

    fn finish(&self) -> Vec<u8> {
        let mut b = vec![0x9f, 0xeb, 1, 0];
        let (tl, sl) = (self.types.len() as u32, self.strs.len() as u32);
        for v in [24, 0, tl, tl, sl] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strs);
        b
    }
}

/// Nesting, an anonymous union, a bitfield, a self-referencing list, a
/// typedef cycle, and what the introspection and syscall code look up.
pub(super) fn btf_blob() -> Vec<u8> {
    let mut b = Btf::default();
    let int = b.int("int", 4);
    let uint = b.int("unsigned int", 4);
    let ulong = b.int("unsigned long", 8);
    let ch = b.int("char", 1);
    let u64t = b.ty("u64", TYPEDEF, 0, false, ulong, &[]);
    let pch = b.ptr(ch);
    let ppch = b.ptr(pch);
    let comm = b.ty("", ARRAY, 0, false, 0, &[ch, int, 16]);
    let list = b.last_id + 2;
    let plist = b.ptr(list);
    let l = b.composite(
        STRUCT,
        "list_head",
        16,
        &[("next", plist, 0, 0), ("prev", plist, 64, 0)],
    );
    assert_eq!(l, list);
    let loop_a = b.last_id + 1;
    b.ty("loop_a", TYPEDEF, 0, false, loop_a + 1, &[]);
    b.ty("loop_b", TYPEDEF, 0, false, loop_a, &[]);
    let se = b.composite(
        STRUCT,
        "sched_entity",
        16,
        &[("sum_exec_runtime", u64t, 0, 0), ("vruntime", u64t, 64, 0)],
    );
    let state = b.composite(
        UNION,
        "",
        4,
        &[("state", int, 0, 0), ("__state", uint, 0, 0)],
    );
    let pulong = b.ptr(ulong);
    let mm = b.composite(
        STRUCT,
        "mm_struct",
        24,
        &[("pgd", pulong, 0, 0), ("arg_start", ulong, 64, 0)],
    );
    let pmm = b.ptr(mm);
    let task = b.composite(
        STRUCT,
        "task_struct",
        128,
        &[
            ("pid", int, 0, 0),
            ("", state, 32, 0),
            ("comm", comm, 64, 0),
            ("se", se, 192, 0),
            ("flags", uint, 320, 3),
            ("mm", pmm, 384, 0),
            ("tasks", list, 448, 0),
            ("loopy", loop_a, 576, 0),
        ],
    );
    let ptask = b.ptr(task);
    b.ty("current_task", VAR, 0, false, ptask, &[1]);
    let key = b.composite(STRUCT, "static_key", 8, &[("enabled", int, 0, 0)]);
    b.composite(
        STRUCT,
        "tracepoint",
        16,
        &[("name", pch, 0, 0), ("key", key, 64, 0)],
    );
    b.composite(
        STRUCT,
        "syscall_metadata",
        48,
        &[
            ("name", pch, 0, 0),
            ("syscall_nr", int, 64, 0),
            ("nb_args", int, 96, 0),
            ("types", ppch, 128, 0),
            ("args", ppch, 192, 0),
        ],
    );
    let (on, off) = (b.str("ON"), b.str("OFF"));
    b.ty("onoff", ENUM, 2, false, 4, &[on, 1, off, 0]);
    let arg = b.str("p");
    let proto = b.ty("", FUNC_PROTO, 1, false, int, &[arg, ptask]);
    b.ty("do_fuzz", FUNC, 0, false, proto, &[]);
    b.finish()
}

// --- A small kernel: text, rodata, notes and BTF at fixed addresses --------
