//! System-wide statedump walks: interrupt actions, CPUs, network
//! interfaces, block devices.

use super::layout::StatedumpLayout;
use super::trees::{maple_for_each, xa_for_each};
use super::{for_each_list, kptr, Item};
use crate::ctx::{read_cstr, read_u32, read_u64, VcpuContext};
use crate::kernel::reloc;
use crate::plan::Offsets;

/// Most irq descriptors, and actions per descriptor.
pub const MAX_IRQS: usize = 1 << 14;
pub const MAX_ACTIONS: usize = 64;
/// Most CPUs (the bitmap read is this many bits).
pub const MAX_CPUS: u32 = 512;
/// Most network devices, and IPv4 addresses per device.
pub const MAX_NETDEVS: usize = 4096;
pub const MAX_ADDRS: usize = 256;
/// Most block-device inodes.
pub const MAX_BDEVS: usize = 1 << 14;
/// Tree nodes read to find the irq descriptors.
const MAX_IRQ_NODES: usize = 4096;

/// `IFF_UP`.
const IFF_UP: u32 = 1;

/// One `Interrupt` item per action of each irq descriptor, as
/// lttng-modules' `for_each_irq_desc` does (radix tree `irq_desc_tree`
/// before 6.5, maple tree `sparse_irqs` after).
pub fn interrupts<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    off: &Offsets,
    slide: u64,
    mut f: impl FnMut(&Item<'_>),
) -> usize {
    let (irq_desc_action, irqaction_name) = (off.irq_desc_action, off.irqaction_name);
    let mut n = 0usize;
    let mut one = |irq: u64, desc: u64| {
        let mut chip = [0u8; 64];
        let cl = kptr(ctx, desc.wrapping_add(l.desc_chip))
            .and_then(|c| kptr(ctx, c.wrapping_add(l.chip_name)))
            .and_then(|p| read_cstr(ctx, p, &mut chip).ok())
            .unwrap_or(0);
        let chip: &[u8] = if cl == 0 {
            b"unnamed_irq_chip"
        } else {
            &chip[..cl]
        };
        let mut action = kptr(ctx, desc.wrapping_add(irq_desc_action));
        let mut seen = 0;
        while let Some(a) = action {
            if seen >= MAX_ACTIONS || n >= MAX_IRQS * 4 {
                break;
            }
            let mut name = [0u8; 64];
            let nl = kptr(ctx, a.wrapping_add(irqaction_name))
                .and_then(|p| read_cstr(ctx, p, &mut name).ok())
                .unwrap_or(0);
            let tid = kptr(ctx, a.wrapping_add(l.action_thread))
                .and_then(|t| read_u32(ctx, t.wrapping_add(off.task_pid)).ok())
                .map_or(0, |v| v as i32);
            f(&Item::Interrupt {
                irq: irq as u32,
                name: chip,
                action: &name[..nl],
                tid,
            });
            n += 1;
            seen += 1;
            let next = kptr(ctx, a.wrapping_add(l.action_next));
            if next == Some(a) {
                break;
            }
            action = next;
        }
        n < MAX_IRQS * 4
    };
    if l.sym_sparse_irqs != 0 {
        let tree = reloc(l.sym_sparse_irqs, slide);
        if let Ok(root) = read_u64(ctx, tree.wrapping_add(l.maple_root)) {
            maple_for_each(ctx, root, MAX_IRQ_NODES, |irq, _, desc| one(irq, desc));
        }
    } else if l.sym_irq_desc_tree != 0 {
        let tree = reloc(l.sym_irq_desc_tree, slide);
        if let Ok(head) = read_u64(ctx, tree.wrapping_add(l.xa_head)) {
            let (sh, sl) = (l.xa_node_shift, l.xa_node_slots);
            xa_for_each(ctx, head, sh, sl, MAX_IRQ_NODES, one);
        }
    }
    n
}

/// One `CpuTopology` item per possible CPU, from its per-CPU `cpu_info`.
pub fn cpus<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    slide: u64,
    mut f: impl FnMut(&Item<'_>),
) -> usize {
    let nr = read_u32(ctx, reloc(l.sym_nr_cpu_ids, slide))
        .unwrap_or(0)
        .min(MAX_CPUS);
    let offsets = reloc(l.sym_per_cpu_offset, slide);
    let mask = reloc(l.sym_cpu_possible_mask, slide);
    let mut n = 0;
    for cpu in 0..nr {
        let word = read_u64(ctx, mask.wrapping_add(u64::from(cpu / 64) * 8)).unwrap_or(0);
        if word & (1 << (cpu % 64)) == 0 {
            continue;
        }
        let Ok(base) = read_u64(ctx, offsets.wrapping_add(u64::from(cpu) * 8)) else {
            continue;
        };
        let c = base.wrapping_add(l.percpu_cpu_info);
        let byte = |off: u64| {
            let mut b = [0u8; 1];
            ctx.read_virt(c.wrapping_add(off), &mut b)
                .map_or(0, |_| b[0])
        };
        let half = |off: u64| {
            let mut b = [0u8; 2];
            ctx.read_virt(c.wrapping_add(off), &mut b)
                .map_or(0, |_| u16::from_le_bytes(b))
        };
        let (mut vendor, mut model) = ([0u8; 16], [0u8; 64]);
        let vl = read_cstr(ctx, c.wrapping_add(l.cpu_vendor_id), &mut vendor).unwrap_or(0);
        let ml = read_cstr(ctx, c.wrapping_add(l.cpu_model_id), &mut model).unwrap_or(0);
        let unknown: &[u8] = b"unknown";
        f(&Item::CpuTopology {
            cpu_id: read_u32(ctx, c.wrapping_add(l.cpu_index)).unwrap_or(cpu) as u16,
            vendor: if vl == 0 { unknown } else { &vendor[..vl] },
            family: byte(l.cpu_family),
            model: byte(l.cpu_model),
            model_name: if ml == 0 { unknown } else { &model[..ml] },
            physical_id: half(l.cpu_pkg_id),
            core_id: half(l.cpu_core_id),
            cores: half(l.cpu_booted_cores),
        });
        n += 1;
    }
    n
}

/// `NetworkInterface` items of `init_net`'s devices, as lttng-modules
/// writes them: one per IPv4 address of an up device, one with address 0
/// for a device that is down.
pub fn network<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    slide: u64,
    mut f: impl FnMut(&Item<'_>),
) -> usize {
    let head = reloc(l.sym_init_net, slide).wrapping_add(l.net_dev_base_head);
    let mut n = 0;
    for_each_list(ctx, head, MAX_NETDEVS, |node| {
        let dev = node.wrapping_sub(l.netdev_dev_list);
        let mut name = [0u8; 16];
        let nl = read_cstr(ctx, dev.wrapping_add(l.netdev_name), &mut name).unwrap_or(0);
        let name = &name[..nl];
        let flags = read_u32(ctx, dev.wrapping_add(l.netdev_flags)).unwrap_or(0);
        if flags & IFF_UP == 0 {
            f(&Item::NetworkInterface {
                name,
                address_ipv4: 0,
            });
            n += 1;
            return;
        }
        let mut ifa = kptr(ctx, dev.wrapping_add(l.netdev_ip_ptr))
            .and_then(|d| kptr(ctx, d.wrapping_add(l.indev_ifa_list)));
        let mut seen = 0;
        while let Some(a) = ifa {
            if seen >= MAX_ADDRS {
                break;
            }
            let mut b = [0u8; 4];
            if ctx
                .read_virt(a.wrapping_add(l.ifa_address), &mut b)
                .is_err()
            {
                break;
            }
            f(&Item::NetworkInterface {
                name,
                address_ipv4: u32::from_be_bytes(b),
            });
            n += 1;
            seen += 1;
            let next = kptr(ctx, a.wrapping_add(l.ifa_next));
            if next == Some(a) {
                break;
            }
            ifa = next;
        }
    });
    n
}

/// `BlockDevice` items: each block device (whole disk or partition) of a
/// disk with a capacity, found through the block-device file system's
/// inodes (`bdev_inode`), named as `disk_name()` names it.
pub fn block_devices<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    slide: u64,
    mut f: impl FnMut(&Item<'_>),
) -> usize {
    let Some(sb) = kptr(ctx, reloc(l.sym_blockdev_superblock, slide)) else {
        return 0;
    };
    let mut n = 0;
    for_each_list(ctx, sb.wrapping_add(l.sb_inodes), MAX_BDEVS, |node| {
        let inode = node.wrapping_sub(l.inode_sb_list);
        let bdev = inode.wrapping_sub(l.bdev_inode_vfs);
        let Some(disk) = kptr(ctx, bdev.wrapping_add(l.bd_disk)) else {
            return;
        };
        let sectors = read_u64(ctx, bdev.wrapping_add(l.bd_nr_sectors)).unwrap_or(0);
        let Ok(dev) = read_u32(ctx, bdev.wrapping_add(l.bd_dev)) else {
            return;
        };
        if sectors == 0 {
            return;
        }
        let mut name = [0u8; 32];
        let nl = read_cstr(ctx, disk.wrapping_add(l.disk_name), &mut name).unwrap_or(0);
        let first = read_u32(ctx, disk.wrapping_add(l.disk_first_minor)).unwrap_or(0);
        let part = (dev & 0xf_ffff).wrapping_sub(first);
        let mut full = Vec::with_capacity(48);
        full.extend_from_slice(&name[..nl]);
        if part != 0 {
            if name[..nl].last().is_some_and(u8::is_ascii_digit) {
                full.push(b'p');
            }
            full.extend_from_slice(part.to_string().as_bytes());
        }
        f(&Item::BlockDevice {
            dev,
            diskname: &full,
        });
        n += 1;
    });
    n
}
