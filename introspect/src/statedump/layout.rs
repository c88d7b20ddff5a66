//! Where the statedump's structures live: struct offsets from the
//! kernel's BTF and link-time addresses from its kallsyms, prepared on the
//! host into the probe plan. A walk runs only if its bit of `have` says
//! the host found its whole layout (offset 0 is a real offset).

use serde::{Deserialize, Serialize};

/// `have` bits, one per walk.
pub const HAVE_FILES: u32 = 1;
pub const HAVE_VMAS: u32 = 2;
pub const HAVE_IRQS: u32 = 4;
pub const HAVE_CPUS: u32 = 8;
pub const HAVE_NET: u32 = 16;
pub const HAVE_BLOCK: u32 = 32;
pub const HAVE_THREADS: u32 = 64;

/// Offsets (bytes) and link-time symbol addresses of the statedump walks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct StatedumpLayout {
    /// The walks whose layout is complete ([`HAVE_FILES`] ...).
    pub have: u32,
    // -- symbols (link-time; `percpu_cpu_info` is a per-CPU offset)
    /// `irq_desc_tree` (radix tree, kernels before 6.5).
    pub sym_irq_desc_tree: u64,
    /// `sparse_irqs` (maple tree, 6.5 and later).
    pub sym_sparse_irqs: u64,
    pub sym_per_cpu_offset: u64,
    pub sym_cpu_possible_mask: u64,
    pub sym_nr_cpu_ids: u64,
    pub percpu_cpu_info: u64,
    pub sym_init_net: u64,
    pub sym_blockdev_superblock: u64,

    // -- a process's threads: task->signal->thread_head of task.thread_node
    pub task_signal: u64,
    pub signal_thread_head: u64,
    pub task_thread_node: u64,

    // -- open files: task->files->fdt->fd[i] -> struct file
    pub task_files: u64,
    pub files_fdt: u64,
    pub fdt_max_fds: u64,
    pub fdt_fd: u64,
    pub fdt_close_on_exec: u64,
    pub file_path: u64,
    pub file_flags: u64,
    pub file_mode: u64,
    pub file_inode: u64,
    pub path_mnt: u64,
    pub path_dentry: u64,
    pub dentry_parent: u64,
    /// `dentry.d_name.name`.
    pub dentry_name: u64,
    pub dentry_sb: u64,
    pub dentry_inode: u64,
    /// `dentry.d_hash.pprev` (NULL once the dentry is unhashed: unlinked).
    pub dentry_hash_pprev: u64,
    /// `mount.mnt` (the `vfsmount` inside a `struct mount`).
    pub mount_mnt: u64,
    pub mount_parent: u64,
    pub mount_mountpoint: u64,
    pub vfsmount_root: u64,
    pub inode_ino: u64,
    pub sb_type: u64,
    pub fstype_name: u64,

    // -- memory maps: mm->mm_mt (maple tree) of vm_area_struct
    pub mm_mt: u64,
    pub maple_root: u64,
    pub vma_start: u64,
    pub vma_end: u64,
    pub vma_flags: u64,
    pub vma_pgoff: u64,
    pub vma_file: u64,

    // -- radix tree (xarray) nodes
    pub xa_head: u64,
    pub xa_node_shift: u64,
    pub xa_node_slots: u64,

    // -- interrupts
    /// `irq_desc.irq_data.chip`.
    pub desc_chip: u64,
    pub chip_name: u64,
    pub action_next: u64,
    pub action_thread: u64,

    // -- CPUs: cpuinfo_x86
    pub cpu_index: u64,
    pub cpu_family: u64,
    pub cpu_vendor_id: u64,
    pub cpu_model: u64,
    pub cpu_model_id: u64,
    /// `topo.pkg_id` (6.7+) or `phys_proc_id`.
    pub cpu_pkg_id: u64,
    /// `topo.core_id` (6.7+) or `cpu_core_id`.
    pub cpu_core_id: u64,
    pub cpu_booted_cores: u64,

    // -- network: init_net.dev_base_head of net_device, in_device's ifa_list
    pub net_dev_base_head: u64,
    pub netdev_dev_list: u64,
    pub netdev_name: u64,
    pub netdev_flags: u64,
    pub netdev_ip_ptr: u64,
    pub indev_ifa_list: u64,
    pub ifa_next: u64,
    pub ifa_address: u64,

    // -- block devices: the block-device superblock's inodes (bdev_inode)
    pub sb_inodes: u64,
    pub inode_sb_list: u64,
    /// `bdev_inode.vfs_inode` (the block_device is at offset 0).
    pub bdev_inode_vfs: u64,
    pub bd_dev: u64,
    pub bd_disk: u64,
    pub bd_nr_sectors: u64,
    pub disk_name: u64,
    pub disk_first_minor: u64,
}

impl StatedumpLayout {
    /// Whether walk `bit` has its layout.
    pub fn has(&self, bit: u32) -> bool {
        self.have & bit == bit
    }
}
