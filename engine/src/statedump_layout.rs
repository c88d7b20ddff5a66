//! The statedump's layouts from a kernel image: struct offsets from its
//! BTF, symbols from its kallsyms. A walk whose layout is incomplete is
//! left out of `have` (and the record says nothing of it: its events are
//! simply absent, as on a kernel without those structures).

use guest_symbols::{KernelSymbols, KernelTypes};
use introspect::statedump::layout::{
    StatedumpLayout, HAVE_BLOCK, HAVE_CPUS, HAVE_FILES, HAVE_IRQS, HAVE_NET, HAVE_THREADS,
    HAVE_VMAS,
};

/// Resolves member paths (`a|b`: the first the kernel has) into offsets,
/// remembering whether all were found.
struct Lookup<'a> {
    btf: &'a KernelTypes,
    ok: bool,
}

impl Lookup<'_> {
    fn m(&mut self, s: &str, path: &str) -> u64 {
        let found = path.split('|').find_map(|p| self.btf.member_offset(s, p));
        self.ok &= found.is_some();
        found.unwrap_or(0)
    }
    /// Ends a group: its bit if every lookup since the last group worked.
    fn group(&mut self, bit: u32) -> u32 {
        let b = if self.ok { bit } else { 0 };
        self.ok = true;
        b
    }
}

/// The statedump layout of an opened image.
pub fn layout(btf: &KernelTypes, syms: &KernelSymbols) -> StatedumpLayout {
    let sym = |n: &str| syms.addr(n).unwrap_or(0);
    let mut q = Lookup { btf, ok: true };
    let mut l = StatedumpLayout {
        sym_irq_desc_tree: sym("irq_desc_tree"),
        sym_sparse_irqs: sym("sparse_irqs"),
        sym_per_cpu_offset: sym("__per_cpu_offset"),
        sym_cpu_possible_mask: sym("__cpu_possible_mask"),
        sym_nr_cpu_ids: sym("nr_cpu_ids"),
        percpu_cpu_info: sym("cpu_info"),
        sym_init_net: sym("init_net"),
        sym_blockdev_superblock: sym("blockdev_superblock"),
        ..StatedumpLayout::default()
    };
    let mut have = 0;

    l.task_signal = q.m("task_struct", "signal");
    l.signal_thread_head = q.m("signal_struct", "thread_head");
    l.task_thread_node = q.m("task_struct", "thread_node");
    have |= q.group(HAVE_THREADS);

    l.task_files = q.m("task_struct", "files");
    l.files_fdt = q.m("files_struct", "fdt");
    l.fdt_max_fds = q.m("fdtable", "max_fds");
    l.fdt_fd = q.m("fdtable", "fd");
    l.fdt_close_on_exec = q.m("fdtable", "close_on_exec");
    l.file_path = q.m("file", "f_path");
    l.file_flags = q.m("file", "f_flags");
    l.file_mode = q.m("file", "f_mode");
    l.file_inode = q.m("file", "f_inode");
    l.path_mnt = q.m("path", "mnt");
    l.path_dentry = q.m("path", "dentry");
    l.dentry_parent = q.m("dentry", "d_parent");
    l.dentry_name = q.m("dentry", "d_name.name");
    l.dentry_sb = q.m("dentry", "d_sb");
    l.dentry_inode = q.m("dentry", "d_inode");
    l.dentry_hash_pprev = q.m("dentry", "d_hash.pprev");
    l.mount_mnt = q.m("mount", "mnt");
    l.mount_parent = q.m("mount", "mnt_parent");
    l.mount_mountpoint = q.m("mount", "mnt_mountpoint");
    l.vfsmount_root = q.m("vfsmount", "mnt_root");
    l.inode_ino = q.m("inode", "i_ino");
    l.sb_type = q.m("super_block", "s_type");
    l.fstype_name = q.m("file_system_type", "name");
    have |= q.group(HAVE_FILES);

    l.mm_mt = q.m("mm_struct", "mm_mt");
    l.maple_root = q.m("maple_tree", "ma_root");
    l.vma_start = q.m("vm_area_struct", "vm_start");
    l.vma_end = q.m("vm_area_struct", "vm_end");
    l.vma_flags = q.m("vm_area_struct", "vm_flags");
    l.vma_pgoff = q.m("vm_area_struct", "vm_pgoff");
    l.vma_file = q.m("vm_area_struct", "vm_file");
    q.m("file", "f_inode");
    q.m("inode", "i_ino");
    have |= q.group(HAVE_VMAS);

    l.desc_chip = q.m("irq_desc", "irq_data.chip");
    l.chip_name = q.m("irq_chip", "name");
    l.action_next = q.m("irqaction", "next");
    l.action_thread = q.m("irqaction", "thread");
    if l.sym_sparse_irqs != 0 {
        q.m("maple_tree", "ma_root");
    } else {
        l.xa_head = q.m("xarray", "xa_head");
        l.xa_node_shift = q.m("xa_node", "shift");
        l.xa_node_slots = q.m("xa_node", "slots");
        q.ok &= l.sym_irq_desc_tree != 0;
    }
    have |= q.group(HAVE_IRQS);

    l.cpu_index = q.m("cpuinfo_x86", "cpu_index");
    l.cpu_family = q.m("cpuinfo_x86", "x86");
    l.cpu_vendor_id = q.m("cpuinfo_x86", "x86_vendor_id");
    l.cpu_model = q.m("cpuinfo_x86", "x86_model");
    l.cpu_model_id = q.m("cpuinfo_x86", "x86_model_id");
    l.cpu_pkg_id = q.m("cpuinfo_x86", "topo.pkg_id|phys_proc_id");
    l.cpu_core_id = q.m("cpuinfo_x86", "topo.core_id|cpu_core_id");
    l.cpu_booted_cores = q.m("cpuinfo_x86", "booted_cores");
    q.ok &= l.sym_per_cpu_offset != 0
        && l.sym_cpu_possible_mask != 0
        && l.sym_nr_cpu_ids != 0
        && l.percpu_cpu_info != 0;
    have |= q.group(HAVE_CPUS);

    l.net_dev_base_head = q.m("net", "dev_base_head");
    l.netdev_dev_list = q.m("net_device", "dev_list");
    l.netdev_name = q.m("net_device", "name");
    l.netdev_flags = q.m("net_device", "flags");
    l.netdev_ip_ptr = q.m("net_device", "ip_ptr");
    l.indev_ifa_list = q.m("in_device", "ifa_list");
    l.ifa_next = q.m("in_ifaddr", "ifa_next");
    l.ifa_address = q.m("in_ifaddr", "ifa_address");
    q.ok &= l.sym_init_net != 0;
    have |= q.group(HAVE_NET);

    l.sb_inodes = q.m("super_block", "s_inodes");
    l.inode_sb_list = q.m("inode", "i_sb_list");
    l.bdev_inode_vfs = q.m("bdev_inode", "vfs_inode");
    l.bd_dev = q.m("block_device", "bd_dev");
    l.bd_disk = q.m("block_device", "bd_disk");
    l.bd_nr_sectors = q.m("block_device", "bd_nr_sectors");
    l.disk_name = q.m("gendisk", "disk_name");
    l.disk_first_minor = q.m("gendisk", "first_minor");
    q.ok &= l.sym_blockdev_superblock != 0;
    have |= q.group(HAVE_BLOCK);

    l.have = have;
    l
}
