//! A hand-built BTF blob with nesting, anonymous unions and bitfields.

use super::*;

#[derive(Default)]
pub(crate) struct Builder {
    types: Vec<u8>,
    strs: Vec<u8>,
    next_id: u32,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            types: Vec::new(),
            strs: vec![0],
            next_id: 1,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strs.len() as u32;
        self.strs.extend_from_slice(name.as_bytes());
        self.strs.push(0);
        off
    }
    fn push(
        &mut self,
        name: &str,
        kind: u32,
        vlen: u32,
        kflag: bool,
        st: u32,
        extra: &[u32],
    ) -> u32 {
        let n = self.s(name);
        let info = (kind << 24) | vlen | (u32::from(kflag) << 31);
        for v in [n, info, st].iter().chain(extra) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }
    pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
        self.push(name, INT, 0, false, size, &[size * 8])
    }
    pub(crate) fn ptr(&mut self, to: u32) -> u32 {
        self.push("", PTR, 0, false, to, &[])
    }
    pub(crate) fn array(&mut self, elem: u32, idx: u32, n: u32) -> u32 {
        self.push("", ARRAY, 0, false, 0, &[elem, idx, n])
    }
    pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.push(name, TYPEDEF, 0, false, to, &[])
    }
    /// members: (name, type, bit offset, bitfield size)
    pub(crate) fn composite(
        &mut self,
        union: bool,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let mut extra = Vec::new();
        for &(n, t, off, bits) in members {
            let n = self.s(n);
            extra.extend([n, t, if kflag { (bits << 24) | off } else { off }]);
        }
        let kind = if union { UNION } else { STRUCT };
        self.push(name, kind, members.len() as u32, kflag, size, &extra)
    }
    pub(crate) fn finish(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strs.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strs);
        b
    }
}

pub(crate) fn sample() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let ch = b.int("char", 1);
    let long = b.int("long", 8);
    let pid_t = b.typedef("pid_t", int);
    let comm = b.array(ch, int, 16);
    let mm = b.composite(false, "mm_struct", 64, &[("pgd", long, 8 * 8, 0)]);
    let mmp = b.ptr(mm);
    let inner = b.composite(
        false,
        "",
        8,
        &[("flags", int, 0, 0), ("on_cpu", int, 32 + 3, 2)],
    );
    let anon = b.composite(true, "", 8, &[("sched", inner, 0, 0), ("raw", long, 0, 0)]);
    let lh = b.composite(
        false,
        "list_head",
        16,
        &[("next", 0, 0, 0), ("prev", 0, 64, 0)],
    );
    b.composite(
        false,
        "task_struct",
        128,
        &[
            ("__state", int, 0, 0),
            ("", anon, 64, 0),
            ("pid", pid_t, 128, 0),
            ("tasks", lh, 192, 0),
            ("mm", mmp, 320, 0),
            ("comm", comm, 384, 0),
        ],
    );
    b.finish()
}

#[test]
fn members_nested_anonymous_and_bitfields() {
    let t = KernelTypes::parse(sample()).unwrap();
    assert_eq!(t.struct_size("task_struct"), Some(128));
    assert_eq!(t.member_offset("task_struct", "comm"), Some(48));
    let comm = t.member("task_struct", "comm").unwrap();
    assert_eq!((comm.size, comm.type_name.as_str()), (16, "char[16]"));
    let pid = t.member("task_struct", "pid").unwrap();
    assert_eq!(
        (pid.offset, pid.size, pid.type_name.as_str()),
        (16, 4, "pid_t")
    );
    // Through an anonymous union, then a named nested struct, to a bitfield.
    let on_cpu = t.member("task_struct", "sched.on_cpu").unwrap();
    assert_eq!(
        (on_cpu.offset, on_cpu.bit_offset, on_cpu.bit_size),
        (12, 99, Some(2))
    );
    assert_eq!(t.member_offset("task_struct", "raw"), Some(8));
    assert_eq!(
        t.member("task_struct", "mm").unwrap().type_name,
        "struct mm_struct *"
    );
    assert_eq!(t.member_offset("task_struct", "tasks.prev"), Some(32));
    assert_eq!(
        t.member_any("task_struct", &["state", "__state"])
            .unwrap()
            .0,
        "__state"
    );
    assert_eq!(t.member_offset("mm_struct", "pgd"), Some(8));
    assert!(t.member("task_struct", "nope").is_none());
    assert!(t.struct_size("nope").is_none());
}

#[test]
fn hostile_blobs_are_errors() {
    let good = sample();
    assert!(KernelTypes::parse(Vec::new()).is_err());
    for cut in 0..good.len() {
        let _ = KernelTypes::parse(good[..cut].to_vec());
    }
    let mut seed = 5u64;
    for _ in 0..3000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut b = good.clone();
        let i = (seed >> 33) as usize % b.len();
        b[i] = (seed >> 13) as u8;
        if let Ok(t) = KernelTypes::parse(b) {
            let _ = t.member("task_struct", "sched.on_cpu");
            let _ = t.member("task_struct", "comm");
        }
    }
}

#[test]
fn layouts_take_alternatives_and_wildcards() {
    let t = KernelTypes::parse(sample()).unwrap();
    let l = t.layouts(&[
        ("task_struct", &["state|__state", "comm"]),
        ("mm_struct", &["*"]),
        ("nope", &["x"]),
    ]);
    assert_eq!(l.len(), 2);
    let ts = &l["task_struct"];
    assert_eq!(ts.size, 128);
    assert_eq!(ts.members["__state"].offset, 0);
    assert_eq!(ts.members["comm"].offset, 48);
    assert_eq!(l["mm_struct"].members["pgd"].offset, 8);
}

/// An input of the `btf` fuzz target: a struct whose anonymous members are
/// the struct itself made every failed lookup cost vlen^MAX_DEPTH (hours
/// with two such members; without the bound this test does not end).
#[test]
fn self_nested_anonymous_members_do_not_blow_up() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let me = b.next_id;
    let ts = b.composite(
        false,
        "task_struct",
        8,
        &[
            ("", me, 0, 0),
            ("", me, 0, 0),
            ("", me, 0, 0),
            ("pid", int, 32, 0),
        ],
    );
    assert_eq!(ts, me);
    let t = KernelTypes::parse(b.finish()).unwrap();
    assert!(t.member("task_struct", "nope").is_none());
    assert!(t.member("task_struct", "se.sum_exec_runtime").is_none());
    assert_eq!(t.member_offset("task_struct", "pid"), Some(4));
    let _ = t.layouts(INTROSPECTION_LAYOUT);
}
