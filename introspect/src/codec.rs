//! A compact binary form of [`Record`] for moving records from an engine to
//! the host (length-prefixed, little-endian). Decoding validates everything.

use crate::decode::{Event, GuestStr, Record, IRQ_NAME_LEN, STR_LEN};
use crate::task::Task;

/// Errors decoding a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record truncated")]
    Truncated,
    #[error("unknown event tag {0}")]
    BadTag(u8),
}

/// Tag 15 (both compat syscall events) is followed by one of these.
const COMPAT_ENTRY: u8 = 0;
const COMPAT_EXIT: u8 = 1;

/// Largest encoded record, length prefix included.
pub const MAX_RECORD: usize = 512;

struct W<'a> {
    buf: &'a mut [u8; MAX_RECORD],
    at: usize,
}

impl W<'_> {
    fn put(&mut self, b: &[u8]) {
        let end = (self.at + b.len()).min(MAX_RECORD);
        let n = end - self.at;
        self.buf[self.at..end].copy_from_slice(&b[..n]);
        self.at = end;
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn i32(&mut self, v: i32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    fn task(&mut self, t: &Task) {
        self.i32(t.tid);
        self.i32(t.pid);
        self.i32(t.prio);
        self.u64(t.state as u64);
        self.put(&t.comm);
    }
    fn gstr(&mut self, s: &GuestStr) {
        let n = s.bytes.iter().position(|&c| c == 0).unwrap_or(STR_LEN);
        self.u8(u8::from(s.ok));
        self.u8(n as u8);
        self.put(&s.bytes[..n]);
    }
}

/// Encodes `r` into `buf`; returns the number of bytes used.
pub fn encode(r: &Record, buf: &mut [u8; MAX_RECORD]) -> usize {
    let mut w = W { buf, at: 2 };
    let tag = r.event_tag();
    w.u8(tag);
    w.put(&r.cpu.to_le_bytes());
    w.u64(r.ts);
    w.task(&r.current);
    match &r.event {
        Event::SyscallEntry {
            nr,
            args,
            str_arg,
            string,
        } => {
            w.put(&nr.to_le_bytes());
            for a in args {
                w.u64(*a);
            }
            w.u8(str_arg.unwrap_or(0xff));
            w.gstr(string);
        }
        Event::SyscallExit { nr, ret, args, fds } => {
            w.put(&nr.to_le_bytes());
            w.u64(*ret as u64);
            for a in args {
                w.u64(*a);
            }
            w.i32(fds[0]);
            w.i32(fds[1]);
        }
        Event::CompatSyscallEntry {
            nr,
            args,
            str_arg,
            string,
        } => {
            w.u8(COMPAT_ENTRY);
            w.put(&nr.to_le_bytes());
            for a in args {
                w.u64(*a);
            }
            w.u8(str_arg.unwrap_or(0xff));
            w.gstr(string);
        }
        Event::CompatSyscallExit { nr, ret, args, fds } => {
            w.u8(COMPAT_EXIT);
            w.put(&nr.to_le_bytes());
            w.u64(*ret as u64);
            for a in args {
                w.u64(*a);
            }
            w.i32(fds[0]);
            w.i32(fds[1]);
        }
        Event::SchedSwitch { prev, next } => {
            w.task(prev);
            w.task(next);
        }
        Event::SchedWaking { task, target_cpu }
        | Event::SchedWakeup { task, target_cpu }
        | Event::SchedWakeupNew { task, target_cpu } => {
            w.task(task);
            w.i32(*target_cpu);
        }
        Event::ProcessFork { parent, child } => {
            w.task(parent);
            w.task(child);
        }
        Event::ProcessExec {
            filename,
            tid,
            old_tid,
        } => {
            w.gstr(filename);
            w.i32(*tid);
            w.i32(*old_tid);
        }
        Event::ProcessExit { task } => w.task(task),
        Event::IrqEntry { irq, name } => {
            w.i32(*irq);
            w.put(name);
        }
        Event::IrqExit { irq, ret } => {
            w.i32(*irq);
            w.i32(*ret);
        }
        Event::Statedump { task, ppid, files } => {
            w.task(task);
            w.i32(*ppid);
            w.u64(*files);
        }
        Event::TimerEntry { vector } | Event::TimerExit { vector } => w.i32(*vector),
        Event::SoftirqEntry { vec } | Event::SoftirqExit { vec } | Event::SoftirqRaise { vec } => {
            w.i32(*vec as i32)
        }
        Event::Sample { ip } => w.u64(*ip),
    }
    let len = w.at;
    w.buf[..2].copy_from_slice(&(len as u16).to_le_bytes());
    len
}

struct R<'a> {
    b: &'a [u8],
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.b.len() < n {
            return Err(CodecError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn args(&mut self) -> Result<[u64; 6], CodecError> {
        let mut args = [0u64; 6];
        for a in &mut args {
            *a = self.u64()?;
        }
        Ok(args)
    }
    fn task(&mut self) -> Result<Task, CodecError> {
        let mut t = Task::UNKNOWN;
        t.tid = self.i32()?;
        t.pid = self.i32()?;
        t.prio = self.i32()?;
        t.state = self.u64()? as i64;
        t.comm.copy_from_slice(self.take(16)?);
        t.comm[15] = 0;
        Ok(t)
    }
    fn gstr(&mut self) -> Result<GuestStr, CodecError> {
        let mut s = GuestStr {
            ok: self.u8()? != 0,
            ..GuestStr::default()
        };
        let n = usize::from(self.u8()?).min(STR_LEN - 1);
        s.bytes[..n].copy_from_slice(self.take(n)?);
        Ok(s)
    }
}

/// Decodes one record from the front of `b`; returns it and its length.
pub fn decode(b: &[u8]) -> Result<(Record, usize), CodecError> {
    if b.len() < 2 {
        return Err(CodecError::Truncated);
    }
    let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
    if len < 3 || len > b.len() {
        return Err(CodecError::Truncated);
    }
    let mut r = R { b: &b[2..len] };
    let tag = r.u8()?;
    let cpu = r.u32()?;
    let ts = r.u64()?;
    let current = r.task()?;
    let event = match tag {
        0 => {
            let nr = r.u32()?;
            let mut args = [0u64; 6];
            for a in &mut args {
                *a = r.u64()?;
            }
            let sa = r.u8()?;
            Event::SyscallEntry {
                nr,
                args,
                str_arg: (sa < 6).then_some(sa),
                string: r.gstr()?,
            }
        }
        1 => Event::SyscallExit {
            nr: r.u32()?,
            ret: r.u64()? as i64,
            args: r.args()?,
            fds: [r.i32()?, r.i32()?],
        },
        2 => Event::SchedSwitch {
            prev: r.task()?,
            next: r.task()?,
        },
        3 => Event::SchedWaking {
            task: r.task()?,
            target_cpu: r.i32()?,
        },
        4 => Event::ProcessFork {
            parent: r.task()?,
            child: r.task()?,
        },
        5 => Event::ProcessExec {
            filename: r.gstr()?,
            tid: r.i32()?,
            old_tid: r.i32()?,
        },
        6 => Event::ProcessExit { task: r.task()? },
        7 => {
            let irq = r.i32()?;
            let mut name = [0u8; IRQ_NAME_LEN];
            name.copy_from_slice(r.take(IRQ_NAME_LEN)?);
            Event::IrqEntry { irq, name }
        }
        8 => Event::IrqExit {
            irq: r.i32()?,
            ret: r.i32()?,
        },
        9 => Event::Statedump {
            task: r.task()?,
            ppid: r.i32()?,
            files: r.u64()?,
        },
        10 => Event::TimerEntry { vector: r.i32()? },
        11 => Event::TimerExit { vector: r.i32()? },
        16 => Event::SoftirqEntry {
            vec: r.i32()? as u32,
        },
        17 => Event::SoftirqExit {
            vec: r.i32()? as u32,
        },
        18 => Event::SoftirqRaise {
            vec: r.i32()? as u32,
        },
        12 => Event::Sample { ip: r.u64()? },
        14 => Event::SchedWakeup {
            task: r.task()?,
            target_cpu: r.i32()?,
        },
        19 => Event::SchedWakeupNew {
            task: r.task()?,
            target_cpu: r.i32()?,
        },
        15 => match r.u8()? {
            COMPAT_ENTRY => {
                let nr = r.u32()?;
                let mut args = [0u64; 6];
                for a in &mut args {
                    *a = r.u64()?;
                }
                let sa = r.u8()?;
                Event::CompatSyscallEntry {
                    nr,
                    args,
                    str_arg: (sa < 6).then_some(sa),
                    string: r.gstr()?,
                }
            }
            COMPAT_EXIT => Event::CompatSyscallExit {
                nr: r.u32()?,
                ret: r.u64()? as i64,
                args: r.args()?,
                fds: [r.i32()?, r.i32()?],
            },
            _ => return Err(CodecError::BadTag(15)),
        },
        t => return Err(CodecError::BadTag(t)),
    };
    Ok((
        Record {
            cpu,
            ts,
            current,
            event,
        },
        len,
    ))
}

/// Decodes all whole records of a stream; stops at the first bad one
/// (a torn tail after a crash). Returns the records and the bytes used.
pub fn decode_all(mut b: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    while let Ok((r, n)) = decode(b) {
        out.push(r);
        used += n;
        b = &b[n..];
    }
    (out, used)
}
