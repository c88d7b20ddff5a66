//! The kernel's two index trees, read-only: the maple tree (a process's
//! VMAs, and the irq descriptors since 6.5) and the radix tree / xarray
//! (irq descriptors before). Both walks are in index order, depth- and
//! node-bounded, and skip a range that does not follow the previous one,
//! so a node loop or a garbage pivot ends the walk instead of repeating it.

use crate::ctx::{is_kernel_addr, VcpuContext};

/// Deepest tree walked (a maple tree of 2^64 single entries is < 20 deep;
/// an xarray of 64-bit indices is 11).
pub const MAX_DEPTH: usize = 20;

/// `xa_is_node()`: an internal entry (low bits 10) above the small
/// internal values (retry, sibling, zero).
fn is_node(e: u64) -> bool {
    e & 3 == 2 && e > 4096
}

/// `xa_is_internal()`: not a pointer to an element.
fn is_internal(e: u64) -> bool {
    e & 3 == 2
}

// maple_node: 256 bytes; pointers to it carry its type in bits 3..7.
const MAPLE_NODE_SIZE: usize = 256;
const MAPLE_TYPE_SHIFT: u64 = 3;
const MAPLE_LEAF_64: u64 = 1;
const MAPLE_RANGE_64: u64 = 2;
const MAPLE_ARANGE_64: u64 = 3;

/// (slots, pivots, byte offset of slot[0]) of a maple node type:
/// `maple_range_64` { parent; pivot[15]; slot[16] } (also the leaves) and
/// `maple_arange_64` { parent; pivot[9]; slot[10]; gap[10] }.
fn maple_shape(ty: u64) -> Option<(usize, usize, usize)> {
    match ty {
        MAPLE_LEAF_64 | MAPLE_RANGE_64 => Some((16, 15, 8 + 15 * 8)),
        MAPLE_ARANGE_64 => Some((10, 9, 8 + 9 * 8)),
        _ => None, // dense nodes are not used by the trees walked here
    }
}

fn word(node: &[u8], off: usize) -> u64 {
    node.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Calls `f(first, last, entry)` for each entry of the maple tree whose
/// `ma_root` holds `root`, in index order, reading at most `max_nodes`
/// nodes and stopping when `f` returns false. Returns the entries seen.
pub fn maple_for_each<C: VcpuContext + ?Sized>(
    ctx: &C,
    root: u64,
    max_nodes: usize,
    mut f: impl FnMut(u64, u64, u64) -> bool,
) -> usize {
    if root == 0 {
        return 0;
    }
    if !is_node(root) {
        // a lone entry at index 0
        return usize::from(!is_internal(root) && f(0, 0, root));
    }
    let mut stack: Vec<(u64, u64, u64, usize)> = vec![(root, 0, u64::MAX, 0)];
    let (mut nodes, mut seen) = (0usize, 0usize);
    // the next index a range may start at: ranges only go forward
    let mut next_min = 0u64;
    let mut done = false;
    let mut node = [0u8; MAPLE_NODE_SIZE];
    while let Some((enode, min, max, depth)) = stack.pop() {
        if done || nodes >= max_nodes || depth >= MAX_DEPTH || min < next_min {
            break;
        }
        nodes += 1;
        let ty = (enode >> MAPLE_TYPE_SHIFT) & 0xf;
        let Some((slots, pivots, slot_off)) = maple_shape(ty) else {
            break;
        };
        let addr = enode & !0xff;
        if !is_kernel_addr(addr) || ctx.read_virt(addr, &mut node).is_err() {
            break;
        }
        let leaf = ty < MAPLE_RANGE_64;
        let mut children: Vec<(u64, u64, u64, usize)> = Vec::new();
        let mut lo = min;
        for i in 0..slots {
            // a 0 pivot after the first slot, like the last slot's, is
            // the node's max (`mas_logical_pivot`)
            let piv = match word(&node, 8 + 8 * i) {
                _ if i >= pivots => max,
                0 if i > 0 => max,
                p => p,
            };
            let hi = piv.min(max);
            if hi < lo {
                break;
            }
            let e = word(&node, slot_off + 8 * i);
            if e != 0 {
                if leaf {
                    if !is_internal(e) && is_kernel_addr(e) {
                        seen += 1;
                        if !f(lo, hi, e) {
                            done = true;
                            break;
                        }
                    }
                } else if is_kernel_addr(e & !0xff) {
                    // a child: its type in bits 3..7, bit 2 set, no root bit
                    children.push((e, lo, hi, depth + 1));
                }
            }
            if hi >= max {
                break;
            }
            lo = hi + 1;
        }
        if leaf {
            next_min = max.saturating_add(1);
            if max == u64::MAX {
                break;
            }
        }
        stack.extend(children.into_iter().rev());
    }
    seen
}

/// Calls `f(index, entry)` for each entry of the radix tree / xarray
/// whose `xa_head` holds `head`, in index order; `shift_off`/`slots_off`
/// locate `xa_node.shift` and `xa_node.slots[64]`. Reads at most
/// `max_nodes` nodes; stops when `f` returns false.
pub fn xa_for_each<C: VcpuContext + ?Sized>(
    ctx: &C,
    head: u64,
    shift_off: u64,
    slots_off: u64,
    max_nodes: usize,
    mut f: impl FnMut(u64, u64) -> bool,
) -> usize {
    if head == 0 {
        return 0;
    }
    if !is_node(head) {
        return usize::from(!is_internal(head) && is_kernel_addr(head) && f(0, head));
    }
    // (node entry, first index, expected shift or u8::MAX at the root)
    let mut stack: Vec<(u64, u64, u8, usize)> = vec![(head, 0, u8::MAX, 0)];
    let (mut nodes, mut seen) = (0usize, 0usize);
    let mut next_index = 0u64;
    let mut slots = [0u8; 64 * 8];
    while let Some((e, base, want_shift, depth)) = stack.pop() {
        if nodes >= max_nodes || depth >= MAX_DEPTH {
            break;
        }
        nodes += 1;
        let node = e - 2;
        let mut sh = [0u8; 1];
        if ctx
            .read_virt(node.wrapping_add(shift_off), &mut sh)
            .is_err()
            || ctx
                .read_virt(node.wrapping_add(slots_off), &mut slots)
                .is_err()
        {
            break;
        }
        let shift = sh[0];
        // shifts are multiples of 6 and shrink by 6 per level
        if shift % 6 != 0 || shift > 60 || (want_shift != u8::MAX && shift != want_shift) {
            break;
        }
        let mut children = Vec::new();
        for i in 0..64u64 {
            let c = word(&slots, 8 * i as usize);
            let index = base.wrapping_add(i << shift);
            if c == 0 {
                continue;
            }
            if is_node(c) {
                if shift >= 6 {
                    children.push((c, index, shift - 6, depth + 1));
                }
            } else if !is_internal(c) && is_kernel_addr(c) && index >= next_index {
                // (an entry above level 0 spans 2^shift indices: one call)
                seen += 1;
                next_index = index.saturating_add(1);
                if !f(index, c) {
                    return seen;
                }
            }
        }
        stack.extend(children.into_iter().rev());
    }
    seen
}
