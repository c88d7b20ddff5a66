//! The statedump's walkers on hostile guest memory: random bytes full of
//! pointers back into themselves, cyclic lists, looping tree nodes and
//! names without an end must all end, boundedly, without a panic.

use super::devices::{block_devices, cpus, interrupts, network};
use super::files::{d_path, for_each_fd, for_each_vma, PathBuf, MAX_PATH};
use super::layout::StatedumpLayout;
use super::trees::{maple_for_each, xa_for_each};
use super::{for_each_list, Item};
use crate::ctx::{MemError, Reg, VcpuContext};
use crate::plan::Offsets;
use std::cell::{Cell, RefCell};

const BASE: u64 = 0xffff_8880_0100_0000;
const SIZE: usize = 0x10000;

/// Guest memory: `SIZE` bytes at `BASE`, nothing else mapped; counts reads.
struct Mem {
    bytes: RefCell<Vec<u8>>,
    reads: Cell<u64>,
}

impl Mem {
    fn zeroed() -> Self {
        Self {
            bytes: RefCell::new(vec![0; SIZE]),
            reads: Cell::new(0),
        }
    }
    /// Random words, most of them pointers into the region (some with the
    /// tag bits trees use), the rest small numbers or garbage.
    fn random(seed: u64) -> Self {
        let m = Self::zeroed();
        let mut r = Rng(seed | 1);
        for i in 0..SIZE / 8 {
            let v = match r.next() % 8 {
                0..=3 => BASE + ((r.next() % SIZE as u64) & !7),
                4 => (BASE + ((r.next() % SIZE as u64) & !0xff)) | (r.next() & 0x1e),
                5 => r.next() % 64,
                6 => 0,
                _ => r.next(),
            };
            m.put(BASE + i as u64 * 8, v);
        }
        m
    }
    fn put(&self, va: u64, v: u64) {
        let a = (va - BASE) as usize;
        self.bytes.borrow_mut()[a..a + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put_bytes(&self, va: u64, b: &[u8]) {
        let a = (va - BASE) as usize;
        self.bytes.borrow_mut()[a..a + b.len()].copy_from_slice(b);
    }
}

impl VcpuContext for Mem {
    fn read_reg(&self, _: Reg) -> u64 {
        0
    }
    fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get() + 1);
        let off = va.wrapping_sub(BASE);
        if off >= SIZE as u64 || off + buf.len() as u64 > SIZE as u64 {
            return Err(MemError::Unmapped(va));
        }
        let o = off as usize;
        buf.copy_from_slice(&self.bytes.borrow()[o..o + buf.len()]);
        Ok(())
    }
    fn read_phys(&self, pa: u64, _: &mut [u8]) -> Result<(), MemError> {
        Err(MemError::Unmapped(pa))
    }
    fn vcpu_index(&self) -> u32 {
        0
    }
}

/// xorshift64: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A layout of random small offsets, every walk enabled, symbols inside
/// the region (slide 0).
fn random_layout(r: &mut Rng) -> StatedumpLayout {
    let mut o = || (r.next() % 0x100) & !7;
    let mut l = StatedumpLayout {
        have: u32::MAX,
        ..StatedumpLayout::default()
    };
    let fields: [&mut u64; 48] = [
        &mut l.task_signal,
        &mut l.signal_thread_head,
        &mut l.task_thread_node,
        &mut l.task_files,
        &mut l.files_fdt,
        &mut l.fdt_max_fds,
        &mut l.fdt_fd,
        &mut l.fdt_close_on_exec,
        &mut l.file_path,
        &mut l.file_flags,
        &mut l.file_mode,
        &mut l.file_inode,
        &mut l.path_mnt,
        &mut l.path_dentry,
        &mut l.dentry_parent,
        &mut l.dentry_name,
        &mut l.dentry_sb,
        &mut l.dentry_inode,
        &mut l.dentry_hash_pprev,
        &mut l.mount_mnt,
        &mut l.mount_parent,
        &mut l.mount_mountpoint,
        &mut l.vfsmount_root,
        &mut l.inode_ino,
        &mut l.sb_type,
        &mut l.fstype_name,
        &mut l.mm_mt,
        &mut l.maple_root,
        &mut l.vma_start,
        &mut l.vma_end,
        &mut l.vma_flags,
        &mut l.vma_pgoff,
        &mut l.vma_file,
        &mut l.xa_head,
        &mut l.xa_node_shift,
        &mut l.desc_chip,
        &mut l.chip_name,
        &mut l.action_next,
        &mut l.action_thread,
        &mut l.net_dev_base_head,
        &mut l.netdev_dev_list,
        &mut l.netdev_flags,
        &mut l.netdev_ip_ptr,
        &mut l.indev_ifa_list,
        &mut l.ifa_next,
        &mut l.sb_inodes,
        &mut l.inode_sb_list,
        &mut l.bd_disk,
    ];
    for f in fields {
        *f = o();
    }
    l.xa_node_slots = 0x28;
    l.percpu_cpu_info = o();
    let mut sym = || BASE + ((r.next() % (SIZE as u64 - 0x1000)) & !7);
    l.sym_irq_desc_tree = sym();
    l.sym_sparse_irqs = sym();
    l.sym_per_cpu_offset = sym();
    l.sym_cpu_possible_mask = sym();
    l.sym_nr_cpu_ids = sym();
    l.sym_init_net = sym();
    l.sym_blockdev_superblock = sym();
    if r.next() % 2 == 0 {
        l.sym_sparse_irqs = 0; // the radix tree instead
    }
    l
}

/// Every walker over random memory: each ends, within a bounded number
/// of reads, and what it yields is within its bounds.
#[test]
fn walkers_end_on_random_memory() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in 0..256 {
        let m = Mem::random(seed * 7919 + 1);
        let l = random_layout(&mut r);
        let off = Offsets {
            irq_desc_action: (r.next() % 0x100) & !7,
            irqaction_name: (r.next() % 0x100) & !7,
            ..Offsets::default()
        };
        let mut items = 0u64;
        let mut count = |it: &Item<'_>| {
            items += 1;
            if let Item::FileDescriptor { filename, .. } = it {
                assert!(filename.len() <= MAX_PATH);
            }
        };
        let mut path = PathBuf::default();
        for k in 0..4 {
            let p = BASE + ((r.next() % SIZE as u64) & !7);
            for_each_fd(&m, &l, p, &mut path, &mut count);
            for_each_vma(&m, &l, k, p, &mut count);
            d_path(&m, &l, p, BASE + ((r.next() % SIZE as u64) & !7), &mut path);
            assert!(!path.as_bytes().is_empty() && path.as_bytes().len() <= MAX_PATH);
        }
        interrupts(&m, &l, &off, 0, &mut count);
        cpus(&m, &l, 0, &mut count);
        network(&m, &l, 0, &mut count);
        block_devices(&m, &l, 0, &mut count);
        assert!(items < 1 << 20, "seed {seed}: {items} items");
        assert!(
            m.reads.get() < 1 << 26,
            "seed {seed}: {} reads",
            m.reads.get()
        );
    }
}

/// A list whose last node points back into the middle ends after each
/// node was seen once.
#[test]
fn cyclic_list_ends() {
    let m = Mem::zeroed();
    let (head, a, b, c) = (BASE, BASE + 0x100, BASE + 0x200, BASE + 0x300);
    m.put(head, a);
    m.put(a, b);
    m.put(b, c);
    m.put(c, a);
    let mut seen = Vec::new();
    assert_eq!(for_each_list(&m, head, 1000, |n| seen.push(n)), 3);
    assert_eq!(seen, [a, b, c]);
    // a node linked to itself
    m.put(a, a);
    assert_eq!(for_each_list(&m, head, 1000, |_| ()), 1);
}

/// Maple tree node pointers: the root carries bit 1, children bit 2, both
/// their type in bits 3..7.
fn root(node: u64, ty: u64) -> u64 {
    node | ty << 3 | 2
}
fn child(node: u64, ty: u64) -> u64 {
    node | ty << 3 | 4
}

/// A two-level tree (an arange_64 root over two leaves) in index order;
/// then the root's second slot points back at the root: the walk ends.
#[test]
fn maple_two_levels_and_a_node_loop() {
    let m = Mem::zeroed();
    let (top, l1, l2) = (BASE + 0x1000, BASE + 0x1100, BASE + 0x1200);
    let e = |i: u64| BASE + 0x8000 + i * 0x40;
    // root: slot0 [0, 99] -> l1, slot1 [100, MAX] -> l2
    m.put(top + 8, 99);
    m.put(top + 80, child(l1, 1));
    m.put(top + 88, child(l2, 1));
    // l1: [0,9] empty, [10,10] e0, [11,99] e1; l2: [100,100] e2, [101,MAX] empty
    m.put(l1 + 8, 9);
    m.put(l1 + 16, 10);
    m.put(l1 + 24, 99);
    m.put(l1 + 128 + 8, e(0));
    m.put(l1 + 128 + 16, e(1));
    m.put(l2 + 8, 100);
    m.put(l2 + 128, e(2));
    let mut got = Vec::new();
    maple_for_each(&m, root(top, 3), 100, |a, b, x| {
        got.push((a, b, x));
        true
    });
    assert_eq!(got, [(10, 10, e(0)), (11, 99, e(1)), (100, 100, e(2))]);
    // a loop: the root's second child is the root itself
    m.put(top + 88, child(top, 3));
    let n = maple_for_each(&m, root(top, 3), 1 << 14, |_, _, _| true);
    assert!(n <= 3, "{n}");
    // a leaf listing itself: entries only go forward, the walk ends
    m.put(top + 88, child(l1, 1));
    assert!(maple_for_each(&m, root(top, 3), 1 << 14, |_, _, _| true) <= 4);
}

/// An xarray of two levels, then one whose node lists itself.
#[test]
fn xarray_two_levels_and_a_node_loop() {
    let m = Mem::zeroed();
    let (shift_off, slots_off) = (0u64, 0x28u64);
    let (top, low) = (BASE + 0x1000, BASE + 0x1400);
    m.put_bytes(top + shift_off, &[6]);
    m.put_bytes(low + shift_off, &[0]);
    m.put(top + slots_off + 8, low | 2); // indices 64..127
    m.put(low + slots_off + 3 * 8, BASE + 0x8000); // index 67
    m.put(low + slots_off + 5 * 8, BASE + 0x8040); // index 69
    let mut got = Vec::new();
    xa_for_each(&m, top | 2, shift_off, slots_off, 100, |i, e| {
        got.push((i, e));
        true
    });
    assert_eq!(got, [(67, BASE + 0x8000), (69, BASE + 0x8040)]);
    // the top node lists itself: its shift does not shrink, the walk ends
    m.put(top + slots_off + 16, top | 2);
    assert_eq!(
        xa_for_each(&m, top | 2, shift_off, slots_off, 1 << 14, |_, _| true),
        2
    );
}

/// Dentries with `d_parent` at 0x08, `d_name.name` at 0x10 and
/// `d_hash.pprev` at 0x18, under a mount whose root is at its offset 0.
fn dentry_layout() -> StatedumpLayout {
    StatedumpLayout {
        dentry_parent: 0x08,
        dentry_name: 0x10,
        dentry_hash_pprev: 0x18,
        vfsmount_root: 0x00,
        ..StatedumpLayout::default()
    }
}

/// A dentry whose name never ends and whose parent is its child: the path
/// is cut, components at 255 bytes, and the walk ends.
#[test]
fn huge_name_and_dentry_cycle_end() {
    let m = Mem::zeroed();
    let l = dentry_layout();
    let (d1, d2, mnt, name) = (BASE + 0x100, BASE + 0x200, BASE + 0x300, BASE + 0x1000);
    m.put_bytes(name, &[b'a'; 0x8000]);
    for d in [d1, d2] {
        m.put(d + 0x10, name);
        m.put(d + 0x18, d + 0x40); // hashed: still linked
    }
    m.put(d1 + 0x08, d2);
    m.put(d2 + 0x08, d1);
    m.put(mnt, BASE + 0x900); // a root no walk reaches
    let mut p = PathBuf::default();
    d_path(&m, &l, mnt, d1, &mut p);
    let s = p.as_bytes();
    assert!(s.len() <= MAX_PATH && s.len() > 255, "{}", s.len());
    assert!(s.split(|&c| c == b'/').all(|c| c.len() <= 255));
}

/// `d_path()`'s suffix: a dentry that is unhashed and not a root is a file
/// whose last link is gone; the same dentry hashed is not.
#[test]
fn unlinked_file_ends_in_deleted() {
    let m = Mem::zeroed();
    let l = dentry_layout();
    let (root, tmp, gone, mnt) = (BASE + 0x100, BASE + 0x200, BASE + 0x300, BASE + 0x400);
    let names = BASE + 0x1000;
    m.put_bytes(names, b"tmp\0gone\0");
    m.put(root + 0x08, root);
    m.put(tmp + 0x08, root);
    m.put(tmp + 0x10, names);
    m.put(tmp + 0x18, root + 0x40);
    m.put(gone + 0x08, tmp);
    m.put(gone + 0x10, names + 4);
    m.put(mnt, root);
    let mut p = PathBuf::default();
    d_path(&m, &l, mnt, gone, &mut p);
    assert_eq!(p.as_bytes(), b"/tmp/gone (deleted)");
    m.put(gone + 0x18, tmp + 0x40); // hashed again
    d_path(&m, &l, mnt, gone, &mut p);
    assert_eq!(p.as_bytes(), b"/tmp/gone");
}
