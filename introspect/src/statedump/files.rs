//! A process's open files (task->files->fdt) with their paths, and its
//! memory maps (mm->mm_mt).

use super::layout::StatedumpLayout;
use super::trees::maple_for_each;
use super::{kptr, Item};
use crate::ctx::{read_cstr, read_u32, read_u64, VcpuContext};

/// Most descriptors read per process.
pub const MAX_FDS: u32 = 4096;
/// Longest path built (PATH_MAX); a longer one keeps its last part.
pub const MAX_PATH: usize = 4096;
/// Most dentries and mounts crossed building one path.
pub const MAX_PATH_STEPS: usize = 256;
/// Most VMAs read per process, and maple nodes per tree.
pub const MAX_VMAS: usize = 1 << 16;
pub const MAX_MAPLE_NODES: usize = 1 << 14;

/// `O_CLOEXEC`, which lttng-modules adds to `f_flags` from the fd table's
/// close-on-exec bitmap.
const O_CLOEXEC: u32 = 0o2000000;

/// A path built right to left in a fixed buffer.
pub struct PathBuf {
    buf: Box<[u8; MAX_PATH]>,
    start: usize,
}

impl Default for PathBuf {
    fn default() -> Self {
        Self {
            buf: Box::new([0; MAX_PATH]),
            start: MAX_PATH,
        }
    }
}

impl PathBuf {
    fn clear(&mut self) {
        self.start = MAX_PATH;
    }
    /// Prepends `s` (what does not fit is dropped: the path is cut).
    fn prepend(&mut self, s: &[u8]) -> bool {
        if s.len() > self.start {
            return false;
        }
        self.start -= s.len();
        self.buf[self.start..self.start + s.len()].copy_from_slice(s);
        true
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// A dentry's name (`d_name.name`), at most 255 bytes.
fn dentry_name<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    dentry: u64,
    out: &mut [u8; 256],
) -> usize {
    match kptr(ctx, dentry.wrapping_add(l.dentry_name)) {
        Some(p) => read_cstr(ctx, p, out).unwrap_or(0),
        None => 0,
    }
}

/// `d_path()` of (`vfsmount`, `dentry`) up to the mount tree's root, as
/// /proc/PID/fd shows it. A pseudo file system's file (pipe, socket,
/// anon inode: its dentry is a root that is not its mount's) is named as
/// the kernel's `d_dname` does for those: `pipe:[ino]`, `socket:[ino]`,
/// `anon_inode:NAME`. A file whose last link is gone ends in ` (deleted)`,
/// as `d_path()` writes it.
pub fn d_path<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    vfsmnt: u64,
    dentry: u64,
    out: &mut PathBuf,
) {
    out.clear();
    if is_unlinked(ctx, l, dentry) {
        out.prepend(b" (deleted)");
    }
    let mut name = [0u8; 256];
    let (mut mnt, mut d) = (vfsmnt, dentry);
    for step in 0..MAX_PATH_STEPS {
        let root = kptr(ctx, mnt.wrapping_add(l.vfsmount_root)).unwrap_or(0);
        let Some(parent) = kptr(ctx, d.wrapping_add(l.dentry_parent)) else {
            break;
        };
        if d == root || d == parent {
            if d != root {
                if step == 0 {
                    pseudo_name(ctx, l, d, out);
                }
                break;
            }
            let mount = mnt.wrapping_sub(l.mount_mnt);
            match kptr(ctx, mount.wrapping_add(l.mount_parent)) {
                Some(p) if p != mount => {
                    let Some(mp) = kptr(ctx, mount.wrapping_add(l.mount_mountpoint)) else {
                        break;
                    };
                    d = mp;
                    mnt = p.wrapping_add(l.mount_mnt);
                    continue;
                }
                _ => break, // the root of the mount tree
            }
        }
        let n = dentry_name(ctx, l, d, &mut name);
        if !out.prepend(&name[..n]) || !out.prepend(b"/") {
            break;
        }
        d = parent;
    }
    if out.as_bytes().is_empty() {
        out.prepend(b"/");
    }
}

/// The kernel's `d_unlinked()`: unhashed (`d_hash.pprev` NULL) and not a
/// root (its own parent). An unreadable dentry is not called unlinked.
fn is_unlinked<C: VcpuContext + ?Sized>(ctx: &C, l: &StatedumpLayout, d: u64) -> bool {
    let parent = kptr(ctx, d.wrapping_add(l.dentry_parent));
    let pprev = read_u64(ctx, d.wrapping_add(l.dentry_hash_pprev));
    matches!((parent, pprev), (Some(p), Ok(0)) if p != d)
}

/// The name `d_dname` gives a pseudo file system's dentry.
fn pseudo_name<C: VcpuContext + ?Sized>(ctx: &C, l: &StatedumpLayout, d: u64, out: &mut PathBuf) {
    let mut fs = [0u8; 32];
    let n = kptr(ctx, d.wrapping_add(l.dentry_sb))
        .and_then(|sb| kptr(ctx, sb.wrapping_add(l.sb_type)))
        .and_then(|t| kptr(ctx, t.wrapping_add(l.fstype_name)))
        .and_then(|p| read_cstr(ctx, p, &mut fs).ok())
        .unwrap_or(0);
    let mut name = [0u8; 256];
    let nn = dentry_name(ctx, l, d, &mut name);
    let prefix: &[u8] = match &fs[..n] {
        b"pipefs" => b"pipe",
        b"sockfs" => b"socket",
        b"anon_inodefs" => b"anon_inode",
        other => other,
    };
    if nn > 0 {
        out.prepend(&name[..nn]);
    } else {
        let ino = kptr(ctx, d.wrapping_add(l.dentry_inode))
            .and_then(|i| read_u64(ctx, i.wrapping_add(l.inode_ino)).ok())
            .unwrap_or(0);
        out.prepend(format!("[{ino}]").as_bytes());
    }
    out.prepend(b":");
    out.prepend(prefix);
}

/// Calls `f` with a `FileDescriptor` item for each open descriptor of the
/// files table `files` (a task's `files`). Returns the descriptors seen.
pub fn for_each_fd<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    files: u64,
    path: &mut PathBuf,
    mut f: impl FnMut(&Item<'_>),
) -> usize {
    let Some(fdt) = kptr(ctx, files.wrapping_add(l.files_fdt)) else {
        return 0;
    };
    let max_fds = read_u32(ctx, fdt.wrapping_add(l.fdt_max_fds))
        .unwrap_or(0)
        .min(MAX_FDS);
    let (Some(fd_array), Some(cloexec)) = (
        kptr(ctx, fdt.wrapping_add(l.fdt_fd)),
        kptr(ctx, fdt.wrapping_add(l.fdt_close_on_exec)),
    ) else {
        return 0;
    };
    let mut seen = 0;
    let mut chunk = [0u8; 64 * 8];
    for base in (0..max_fds).step_by(64) {
        let n = (max_fds - base).min(64) as usize;
        let at = fd_array.wrapping_add(u64::from(base) * 8);
        if ctx.read_virt(at, &mut chunk[..n * 8]).is_err() {
            break;
        }
        let bits = read_u64(ctx, cloexec.wrapping_add(u64::from(base / 64) * 8)).unwrap_or(0);
        for i in 0..n {
            let file = u64::from_le_bytes(chunk[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            if !crate::ctx::is_kernel_addr(file) {
                continue;
            }
            let fd = base + i as u32;
            let mut flags = read_u32(ctx, file.wrapping_add(l.file_flags)).unwrap_or(0);
            if bits & (1 << i) != 0 {
                flags |= O_CLOEXEC;
            }
            let fmode = read_u32(ctx, file.wrapping_add(l.file_mode)).unwrap_or(0);
            let p = file.wrapping_add(l.file_path);
            match (
                kptr(ctx, p.wrapping_add(l.path_mnt)),
                kptr(ctx, p.wrapping_add(l.path_dentry)),
            ) {
                (Some(m), Some(d)) => d_path(ctx, l, m, d, path),
                _ => {
                    path.clear();
                    path.prepend(b"?");
                }
            }
            seen += 1;
            f(&Item::FileDescriptor {
                files,
                fd: fd as i32,
                flags,
                fmode,
                filename: path.as_bytes(),
            });
        }
    }
    seen
}

/// Calls `f` with a `VmMap` item for each VMA of the address space `mm`
/// of process `pid`. Returns the VMAs seen.
pub fn for_each_vma<C: VcpuContext + ?Sized>(
    ctx: &C,
    l: &StatedumpLayout,
    pid: i32,
    mm: u64,
    mut f: impl FnMut(&Item<'_>),
) -> usize {
    let Ok(root) = read_u64(ctx, mm.wrapping_add(l.mm_mt + l.maple_root)) else {
        return 0;
    };
    let mut n = 0usize;
    maple_for_each(ctx, root, MAX_MAPLE_NODES, |_, _, vma| {
        let rd = |off: u64| read_u64(ctx, vma.wrapping_add(off));
        let (Ok(start), Ok(end)) = (rd(l.vma_start), rd(l.vma_end)) else {
            return true;
        };
        let inode = kptr(ctx, vma.wrapping_add(l.vma_file))
            .and_then(|file| kptr(ctx, file.wrapping_add(l.file_inode)))
            .and_then(|i| read_u64(ctx, i.wrapping_add(l.inode_ino)).ok())
            .unwrap_or(0);
        f(&Item::VmMap {
            pid,
            start,
            end,
            flags: rd(l.vma_flags).unwrap_or(0),
            inode,
            pgoff: rd(l.vma_pgoff).unwrap_or(0).wrapping_shl(12),
        });
        n += 1;
        n < MAX_VMAS
    });
    n
}
