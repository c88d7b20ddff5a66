//! The per-vCPU producer: serialises events straight into the current
//! packet. No allocation, no shared lock, no text formatting: a full packet
//! goes to the writer thread over a channel and an empty one comes back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::catalog::{Catalog, FieldType};
use crate::discards::DiscardCounts;
use crate::metadata::{HeaderKind, PACKET_HEADER_LEN};
use crate::packet::{str_len, write_packet_header, FieldWriter, PacketInfo, EVENT_CTX_LEN};

/// Errors on the producer path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProduceError {
    #[error("event id {0} is not in the catalog")]
    UnknownEvent(u32),
    #[error("event `{0}` is not declared in the catalog")]
    NotDeclared(&'static str),
    #[error("event {id}: field {index} expects {expected}")]
    BadValue {
        id: u32,
        index: usize,
        expected: &'static str,
    },
    #[error("event {id}: {got} values for {want} fields")]
    ArgCount { id: u32, got: usize, want: usize },
    #[error("event of {0} bytes does not fit in a packet")]
    TooLarge(usize),
    #[error("the writer thread has stopped; event dropped")]
    WriterGone,
}

/// What a producer does when its buffers are all full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Block,
    Drop,
}

/// Messages from producers and handles to the writer thread.
pub(crate) enum Msg {
    Packet {
        cpu: u32,
        buf: Box<[u8]>,
        len: usize,
        /// Events in the packet.
        events: u64,
    },
    Gone {
        cpu: u32,
        stats: ProducerStats,
        discards: DiscardCounts,
    },
    Flushed {
        cpu: u32,
        gen: u64,
    },
    Trigger {
        gen: u64,
    },
    Finish(Option<std::time::Instant>),
}

/// Counters of one producer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Events written into packets.
    pub events: u64,
    /// Events dropped (discard mode, or writer gone).
    pub discarded: u64,
    /// Events whose timestamp went backwards and was raised to the previous one.
    pub ts_clamped: u64,
    /// Packets handed to the writer.
    pub packets: u64,
}

/// The task an event belongs to: the stream event context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCtx {
    pub pid: i32,
    pub tid: i32,
    pub procname: [u8; 16],
}

impl TaskCtx {
    pub fn new(pid: i32, tid: i32, procname: &[u8]) -> Self {
        let mut p = [0u8; 16];
        let n = procname
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(procname.len())
            .min(15);
        p[..n].copy_from_slice(&procname[..n]);
        TaskCtx {
            pid,
            tid,
            procname: p,
        }
    }
}

/// A value for a generic event field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// Any integer field (its low bits are written).
    U(u64),
    I(i64),
    /// Text array or string field.
    Str(&'a [u8]),
    /// Integer array or sequence field.
    Ints(&'a [u64]),
}

pub(crate) struct ProducerShared {
    /// Flush generation requested by the writer side.
    pub flush_gen: AtomicU64,
}

/// Producer of one vCPU's stream. `Send`; use it from one thread.
pub struct Producer {
    core: Core,
    catalog: Arc<Catalog>,
}

/// Buffer state of a producer (split from the catalog so that a field
/// writer and a catalog lookup can be alive together).
struct Core {
    cpu: u32,
    buf: Option<Box<[u8]>>,
    pos: usize,
    size: usize,
    ts_begin: u64,
    last_ts: u64,
    in_packet: u32,
    seq: u64,
    mode: Mode,
    header: HeaderKind,
    uuid: [u8; 16],
    tx: Sender<Msg>,
    empty: Receiver<Box<[u8]>>,
    shared: Arc<ProducerShared>,
    stats: ProducerStats,
    sent_any: bool,
    acked_gen: u64,
    /// events_discarded written in the last closed packet.
    reported_discarded: u64,
    /// The dropped events by class (the packet context counts them per
    /// stream only): sized once here, so dropping never allocates.
    discards: DiscardCounts,
}

pub(crate) struct ProducerInit {
    pub cpu: u32,
    pub size: usize,
    pub mode: Mode,
    pub header: HeaderKind,
    pub uuid: [u8; 16],
    pub tx: Sender<Msg>,
    pub empty: Receiver<Box<[u8]>>,
    pub shared: Arc<ProducerShared>,
    pub catalog: Arc<Catalog>,
}

impl Producer {
    pub(crate) fn new(i: ProducerInit) -> Self {
        let buf = i.empty.try_recv().ok();
        Producer {
            core: Core {
                cpu: i.cpu,
                buf,
                pos: PACKET_HEADER_LEN,
                size: i.size,
                ts_begin: 0,
                last_ts: 0,
                in_packet: 0,
                seq: 0,
                mode: i.mode,
                header: i.header,
                uuid: i.uuid,
                tx: i.tx,
                empty: i.empty,
                shared: i.shared,
                stats: ProducerStats::default(),
                sent_any: false,
                acked_gen: 0,
                reported_discarded: 0,
                discards: DiscardCounts::new(i.catalog.events().len()),
            },
            catalog: i.catalog,
        }
    }

    /// The vCPU (stream) this producer writes.
    pub fn cpu(&self) -> u32 {
        self.core.cpu
    }

    /// Counters so far.
    pub fn stats(&self) -> ProducerStats {
        self.core.stats
    }

    /// Events dropped so far, by event id.
    pub fn discards(&self) -> &DiscardCounts {
        &self.core.discards
    }

    /// The catalog events are checked against.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Reserve room for one event and write its header and context; returns
    /// the writer of the `payload` bytes that follow, or `None` when the
    /// event was dropped (discard mode, counted). The caller must write
    /// exactly `payload` bytes, in the declared field order of event `id`.
    #[inline]
    pub fn reserve(
        &mut self,
        id: u32,
        ts: u64,
        ctx: &TaskCtx,
        payload: usize,
    ) -> Result<Option<FieldWriter<'_>>, ProduceError> {
        self.core.reserve(id, ts, ctx, payload)
    }

    /// Close the current packet even if partial and hand it to the writer
    /// (e.g. when the vCPU goes idle, or on a flight-recorder trigger).
    pub fn flush(&mut self) -> Result<(), ProduceError> {
        self.core.flush()
    }

    fn split(&mut self) -> (&mut Core, &Catalog) {
        (&mut self.core, &self.catalog)
    }
    /// Emit an event of the catalog from generic values (user-defined
    /// probes). Values are checked against the declared field types.
    pub fn emit(
        &mut self,
        id: u32,
        ts: u64,
        ctx: &TaskCtx,
        values: &[Value<'_>],
    ) -> Result<(), ProduceError> {
        let (core, catalog) = self.split();
        let decl = catalog.event(id).ok_or(ProduceError::UnknownEvent(id))?;
        if decl.fields.len() != values.len() {
            return Err(ProduceError::ArgCount {
                id,
                got: values.len(),
                want: decl.fields.len(),
            });
        }
        let mut size = 0usize;
        for (index, (f, v)) in decl.fields.iter().zip(values).enumerate() {
            let bad = |expected| ProduceError::BadValue {
                id,
                index,
                expected,
            };
            size += match (&f.ty, v) {
                (FieldType::Int { bits, .. }, Value::U(_) | Value::I(_)) => *bits as usize / 8,
                (FieldType::Int { .. }, _) => return Err(bad("an integer")),
                (FieldType::NetHex { bits }, Value::U(_)) => *bits as usize / 8,
                (FieldType::NetHex { .. }, _) => return Err(bad("an unsigned integer")),
                (FieldType::Text { len }, Value::Str(_)) => *len as usize,
                (FieldType::Str, Value::Str(s)) => str_len(s),
                (FieldType::Text { .. } | FieldType::Str, _) => return Err(bad("a string")),
                (FieldType::IntArray { bits, len, .. }, Value::Ints(a))
                    if a.len() <= *len as usize =>
                {
                    *bits as usize / 8 * *len as usize
                }
                (FieldType::IntSeq { bits, .. }, Value::Ints(a)) if a.len() <= 255 => {
                    1 + *bits as usize / 8 * a.len()
                }
                (FieldType::IntArray { .. } | FieldType::IntSeq { .. }, _) => {
                    return Err(bad("an integer list of the declared length"))
                }
            };
        }
        let Some(mut w) = core.reserve(id, ts, ctx, size)? else {
            return Ok(());
        };
        for (f, v) in decl.fields.iter().zip(values) {
            match (&f.ty, v) {
                (FieldType::Int { bits, .. }, Value::U(x)) => w.int(*bits, *x),
                (FieldType::Int { bits, .. }, Value::I(x)) => w.int(*bits, *x as u64),
                // the value's low `bits`, most significant byte first
                (FieldType::NetHex { bits }, Value::U(x)) => {
                    w.int(*bits, x.swap_bytes() >> (64 - u32::from(*bits)))
                }
                (FieldType::Text { len }, Value::Str(s)) => w.text(s, *len as usize),
                (FieldType::Str, Value::Str(s)) => w.str(s),
                (FieldType::IntArray { bits, len, .. }, Value::Ints(a)) => {
                    for i in 0..*len as usize {
                        w.int(*bits, a.get(i).copied().unwrap_or(0));
                    }
                }
                (FieldType::IntSeq { bits, .. }, Value::Ints(a)) => {
                    w.u8(a.len() as u8);
                    for x in a.iter() {
                        w.int(*bits, *x);
                    }
                }
                _ => unreachable!("checked above"),
            }
        }
        Ok(())
    }

    pub(crate) fn ids(&self) -> &crate::catalog::KernelIds {
        self.catalog.kernel_ids()
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Close the last partial packet. A stream that never produced an
        // event still gets one empty packet so that its file is a valid
        // stream, and events dropped since the last packet get a packet to
        // carry their count. Errors cannot be reported from drop: if the
        // writer is gone, the stats message below is lost too.
        let unreported = self.stats.discarded != self.reported_discarded;
        if self.in_packet > 0 || !self.sent_any || unreported {
            if self.buf.is_none() {
                let wait = std::time::Duration::from_secs(2);
                if let Ok(b) = self.empty.recv_timeout(wait) {
                    self.buf = Some(b);
                }
            }
            let events = self.in_packet;
            if self.close_packet().is_err() && events > 0 {
                eprintln!(
                    "ltt-writer: cpu {}: the writer has stopped; the last {events} event(s) are lost",
                    self.cpu
                );
            }
        }
        let _ = self.tx.send(Msg::Gone {
            cpu: self.cpu,
            stats: self.stats,
            discards: std::mem::take(&mut self.discards),
        });
    }
}

impl Core {
    /// Counts event `id` as dropped, in the stream total (the packet
    /// context's `events_discarded`) and by class.
    #[inline]
    fn drop_event(&mut self, id: u32) {
        self.stats.discarded += 1;
        self.discards.count(id);
    }

    fn header_len(&self, id: u32, ts: u64) -> usize {
        let (id_max, bits) = match self.header {
            HeaderKind::Compact => (31, 27),
            HeaderKind::Large => (65535, 32),
        };
        let ext = self.in_packet == 0 || id >= id_max || (ts >> bits) != (self.last_ts >> bits);
        match (self.header, ext) {
            (HeaderKind::Compact, false) => 4,
            (HeaderKind::Large, false) => 6,
            (HeaderKind::Compact, true) => 13,
            (HeaderKind::Large, true) => 14,
        }
    }

    /// Close the current packet (if it holds events) and send it.
    fn close_packet(&mut self) -> Result<(), ProduceError> {
        let Some(mut buf) = self.buf.take() else {
            return Ok(());
        };
        if self.in_packet == 0 {
            // An empty packet sits at the current time of the stream.
            self.ts_begin = self.last_ts;
        }
        let info = PacketInfo {
            uuid: self.uuid,
            cpu: self.cpu,
            ts_begin: self.ts_begin,
            ts_end: self.last_ts,
            content_len: self.pos,
            packet_len: self.size,
            seq: self.seq,
            discarded: self.stats.discarded,
        };
        write_packet_header(&mut buf, &info);
        self.reported_discarded = self.stats.discarded;
        let len = self.pos;
        let events = u64::from(self.in_packet);
        self.pos = PACKET_HEADER_LEN;
        self.in_packet = 0;
        self.seq += 1;
        self.stats.packets += 1;
        self.sent_any = true;
        let sent = self.tx.send(Msg::Packet {
            cpu: self.cpu,
            buf,
            len,
            events,
        });
        if sent.is_err() {
            // The packet's events never reach the trace (their classes
            // are in the packet, which is gone with the writer).
            self.stats.events -= events;
            self.stats.discarded += events;
            self.discards.unattributed += events;
            self.stats.packets -= 1;
            return Err(ProduceError::WriterGone);
        }
        Ok(())
    }

    /// Get an empty packet, waiting or not according to the policy.
    fn next_buffer(&mut self) -> Result<bool, ProduceError> {
        debug_assert!(self.buf.is_none());
        let got = match self.mode {
            Mode::Block => match self.empty.recv() {
                Ok(b) => Some(b),
                Err(_) => return Err(ProduceError::WriterGone),
            },
            Mode::Drop => match self.empty.try_recv() {
                Ok(b) => Some(b),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return Err(ProduceError::WriterGone),
            },
        };
        self.buf = got;
        Ok(self.buf.is_some())
    }

    /// Reserve room for one event and write its header and context; returns
    /// the writer of the `payload` bytes that follow, or `None` when the
    /// event was dropped (discard mode, counted).
    #[inline]
    fn reserve(
        &mut self,
        id: u32,
        ts: u64,
        ctx: &TaskCtx,
        payload: usize,
    ) -> Result<Option<FieldWriter<'_>>, ProduceError> {
        // The largest header is 14 bytes (large escape).
        if PACKET_HEADER_LEN + 14 + EVENT_CTX_LEN + payload > self.size {
            self.drop_event(id);
            return Err(ProduceError::TooLarge(14 + EVENT_CTX_LEN + payload));
        }
        let gen = self.shared.flush_gen.load(Ordering::Relaxed);
        if gen != self.acked_gen {
            self.acked_gen = gen;
            if let Err(e) = self.flush() {
                self.drop_event(id);
                return Err(e);
            }
            let _ = self.tx.try_send(Msg::Flushed { cpu: self.cpu, gen });
        }
        let ts = if ts < self.last_ts {
            self.stats.ts_clamped += 1;
            self.last_ts
        } else {
            ts
        };
        let mut total = self.header_len(id, ts) + EVENT_CTX_LEN + payload;
        if self.buf.is_some() && self.pos + total > self.size {
            // Full: hand it over only once a replacement exists (discard
            // mode keeps the full packet open while dropping).
            if self.mode == Mode::Drop {
                match self.empty.try_recv() {
                    Ok(b) => {
                        let sent = self.close_packet();
                        self.buf = Some(b);
                        if let Err(e) = sent {
                            self.drop_event(id);
                            return Err(e);
                        }
                    }
                    Err(_) => {
                        self.drop_event(id);
                        return Ok(None);
                    }
                }
            } else if let Err(e) = self.close_packet() {
                self.drop_event(id);
                return Err(e);
            }
            total = self.header_len(id, ts) + EVENT_CTX_LEN + payload;
        }
        if self.buf.is_none() {
            match self.next_buffer() {
                Ok(true) => total = self.header_len(id, ts) + EVENT_CTX_LEN + payload,
                Ok(false) => {
                    self.drop_event(id);
                    return Ok(None);
                }
                Err(e) => {
                    self.drop_event(id);
                    return Err(e);
                }
            }
        }
        let hlen = self.header_len(id, ts);
        if self.in_packet == 0 {
            self.ts_begin = ts;
        }
        self.last_ts = ts;
        self.in_packet += 1;
        self.stats.events += 1;
        let start = self.pos;
        self.pos += total;
        let Some(buf) = self.buf.as_mut() else {
            return Err(ProduceError::WriterGone);
        };
        let out = &mut buf[start..start + total];
        match hlen {
            4 => out[0..4]
                .copy_from_slice(&((id & 31) | (((ts & 0x7ff_ffff) as u32) << 5)).to_le_bytes()),
            6 => {
                out[0..2].copy_from_slice(&(id as u16).to_le_bytes());
                out[2..6].copy_from_slice(&(ts as u32).to_le_bytes());
            }
            _ => {
                let o = if hlen == 13 {
                    out[0] = 31;
                    1
                } else {
                    out[0..2].copy_from_slice(&0xffffu16.to_le_bytes());
                    2
                };
                out[o..o + 4].copy_from_slice(&id.to_le_bytes());
                out[o + 4..o + 12].copy_from_slice(&ts.to_le_bytes());
            }
        }
        let c = &mut out[hlen..hlen + EVENT_CTX_LEN];
        c[0..4].copy_from_slice(&ctx.pid.to_le_bytes());
        c[4..8].copy_from_slice(&ctx.tid.to_le_bytes());
        c[8..24].copy_from_slice(&ctx.procname);
        Ok(Some(FieldWriter::new(&mut out[hlen + EVENT_CTX_LEN..])))
    }

    fn flush(&mut self) -> Result<(), ProduceError> {
        if self.in_packet > 0 {
            self.close_packet()?;
        }
        Ok(())
    }
}
