//! Evaluating a resolved probe's fields against a trapped vCPU's registers
//! and guest memory.

use super::{Base, FieldKind, FieldSpec, FieldValue, ResolvedProbe, STR_MAX};
use crate::ctx::{read_cstr, read_u64, VcpuContext};
use crate::kernel::Kernel;
use crate::task::{current_task_addr, read_task, Task};

/// Truncates `raw` to `bits` and sign-extends it when `signed`.
fn extend(raw: u64, bits: u8, signed: bool) -> u64 {
    if bits >= 64 {
        return raw;
    }
    let shift = 64 - u32::from(bits);
    if signed {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

impl ResolvedProbe {
    /// Evaluates the fields on a trapped vCPU into `out` (a buffer such as
    /// `[FieldValue::EMPTY; MAX_FIELDS]`); returns how many it filled
    /// (`min(len(), out.len())`). Allocates nothing, never panics, and
    /// reads the current task at most once.
    pub fn fetch<C: VcpuContext + ?Sized>(
        &self,
        ctx: &C,
        k: &Kernel,
        out: &mut [FieldValue],
    ) -> usize {
        let mut task: Option<Option<Task>> = None;
        let mut n = 0;
        for ((f, &sym), v) in self.spec.fields.iter().zip(&self.syms).zip(out.iter_mut()) {
            v.valid = false;
            v.int = 0;
            v.len = 0;
            v.bytes.fill(0);
            self.fetch_one(f, sym, ctx, k, &mut task, v);
            n += 1;
        }
        n
    }

    fn fetch_one<C: VcpuContext + ?Sized>(
        &self,
        f: &FieldSpec,
        sym: u64,
        ctx: &C,
        k: &Kernel,
        task: &mut Option<Option<Task>>,
        v: &mut FieldValue,
    ) {
        let mut val = match f.fetch.base {
            Base::Reg(r) => ctx.read_reg(r),
            Base::Imm(x) => x,
            Base::Symbol(_) => sym.wrapping_add(self.slide),
            Base::Comm | Base::Pid | Base::Tid => {
                let t = task.get_or_insert_with(|| {
                    current_task_addr(ctx, k).ok().map(|a| read_task(ctx, k, a))
                });
                let Some(t) = t else { return };
                match f.fetch.base {
                    Base::Comm => {
                        if t.comm == Task::UNKNOWN.comm {
                            return;
                        }
                        let s = t.comm_str().as_bytes();
                        let n = s.len().min(STR_MAX - 1);
                        v.bytes[..n].copy_from_slice(&s[..n]);
                        v.len = n as u8;
                        v.valid = true;
                        return;
                    }
                    Base::Pid if t.pid >= 0 => t.pid as i64 as u64,
                    Base::Tid if t.tid >= 0 => t.tid as i64 as u64,
                    _ => return,
                }
            }
        };
        let offs = f.fetch.derefs.as_slice();
        let (last, inner) = match offs.split_last() {
            Some((l, i)) => (Some(*l), i),
            None => (None, offs),
        };
        for &off in inner {
            match read_u64(ctx, val.wrapping_add(off as u64)) {
                Ok(x) => val = x,
                Err(_) => return,
            }
        }
        match f.kind {
            FieldKind::String => {
                let addr = val.wrapping_add(last.unwrap_or(0) as u64);
                if let Ok(n) = read_cstr(ctx, addr, &mut v.bytes) {
                    v.len = n.min(STR_MAX - 1) as u8;
                    v.valid = true;
                }
            }
            FieldKind::Unsigned(bits) | FieldKind::Signed(bits) | FieldKind::Hex(bits) => {
                let raw = match last {
                    None => val,
                    Some(off) => {
                        let mut b = [0u8; 8];
                        let size = usize::from(bits / 8).clamp(1, 8);
                        if ctx
                            .read_virt(val.wrapping_add(off as u64), &mut b[..size])
                            .is_err()
                        {
                            return;
                        }
                        u64::from_le_bytes(b)
                    }
                };
                v.int = extend(raw, bits, matches!(f.kind, FieldKind::Signed(_)));
                v.valid = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::extend;

    #[test]
    fn extend_truncates_and_sign_extends() {
        assert_eq!(
            extend(0x1234_5678_9abc_def0, 64, false),
            0x1234_5678_9abc_def0
        );
        assert_eq!(
            extend(0x1234_5678_9abc_def0, 64, true),
            0x1234_5678_9abc_def0
        );
        assert_eq!(extend(0x1ff, 8, false), 0xff);
        assert_eq!(extend(0x1ff, 8, true), u64::MAX);
        assert_eq!(extend(0x7f, 8, true), 0x7f);
        assert_eq!(extend(0xffff_8000, 16, true) as i64, -32768);
        assert_eq!(extend(0xffff_ffff, 32, true) as i64, -1);
        assert_eq!(extend(0x1_0000_0001, 32, false), 1);
    }
}
