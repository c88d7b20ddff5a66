//! A reader for the streams this crate writes (with the catalog that wrote
//! them): used by the Chrome export and by tools that post-process a trace
//! without babeltrace2. It decodes timestamps exactly as a CTF reader does
//! (compact headers carry the low bits and wrap once).

use std::path::Path;

use crate::catalog::{Catalog, FieldType};
use crate::metadata::{HeaderKind, PACKET_HEADER_LEN};
use crate::packet::{read_packet_header, PacketInfo, EVENT_CTX_LEN};
use crate::producer::TaskCtx;

/// Errors while reading a trace back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: bad packet at offset {offset}: {what}")]
    Corrupt {
        file: String,
        offset: usize,
        what: &'static str,
    },
    #[error("{file}: unknown event id {id} at offset {offset}")]
    UnknownId {
        file: String,
        offset: usize,
        id: u32,
    },
}

/// A decoded field value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    I(i64),
    U(u64),
    Str(String),
    Ints(Vec<i64>),
}

impl FieldValue {
    /// The value as a signed integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            FieldValue::I(v) => Some(*v),
            FieldValue::U(v) => Some(*v as i64),
            _ => None,
        }
    }
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedEvent {
    pub cpu: u32,
    /// Clock value (ns since the trace clock's origin).
    pub ts: u64,
    pub id: u32,
    pub ctx: TaskCtx,
    pub fields: Vec<FieldValue>,
}

/// One decoded packet's header and context.
pub type PacketSummary = PacketInfo;

fn rd<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N).and_then(|s| s.try_into().ok())
}

fn read_int(b: &[u8], at: &mut usize, bits: u8, signed: bool) -> Option<i64> {
    let v = match (bits, signed) {
        (8, false) => rd::<1>(b, *at)?[0] as i64,
        (8, true) => rd::<1>(b, *at)?[0] as i8 as i64,
        (16, false) => u16::from_le_bytes(rd(b, *at)?) as i64,
        (16, true) => i16::from_le_bytes(rd(b, *at)?) as i64,
        (32, false) => u32::from_le_bytes(rd(b, *at)?) as i64,
        (32, true) => i32::from_le_bytes(rd(b, *at)?) as i64,
        _ => i64::from_le_bytes(rd(b, *at)?),
    };
    *at += bits as usize / 8;
    Some(v)
}

fn text(b: &[u8]) -> String {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// Decode the fields of event `id` starting at `at`.
fn decode_fields(catalog: &Catalog, id: u32, b: &[u8], at: &mut usize) -> Option<Vec<FieldValue>> {
    let decl = catalog.event(id)?;
    let mut out = Vec::with_capacity(decl.fields.len());
    for f in &decl.fields {
        out.push(match &f.ty {
            FieldType::Int { bits, signed, .. } => {
                let v = read_int(b, at, *bits, *signed)?;
                if *signed {
                    FieldValue::I(v)
                } else {
                    FieldValue::U(v as u64)
                }
            }
            FieldType::NetHex { bits } => {
                let n = *bits as usize / 8;
                let s = b.get(*at..*at + n)?;
                *at += n;
                FieldValue::U(s.iter().fold(0u64, |v, &x| v << 8 | u64::from(x)))
            }
            FieldType::Text { len } => {
                let s = b.get(*at..*at + *len as usize)?;
                *at += *len as usize;
                FieldValue::Str(text(s))
            }
            FieldType::Str => {
                let rest = b.get(*at..)?;
                let n = rest.iter().position(|&c| c == 0)?;
                *at += n + 1;
                FieldValue::Str(text(&rest[..n]))
            }
            FieldType::IntArray {
                bits, signed, len, ..
            } => {
                let mut v = Vec::with_capacity(*len as usize);
                for _ in 0..*len {
                    v.push(read_int(b, at, *bits, *signed)?);
                }
                FieldValue::Ints(v)
            }
            FieldType::IntSeq { bits, signed, .. } => {
                let n = read_int(b, at, 8, false)?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(read_int(b, at, *bits, *signed)?);
                }
                FieldValue::Ints(v)
            }
        });
    }
    Some(out)
}

/// Decode one stream file's bytes.
pub fn decode_stream(
    catalog: &Catalog,
    header: HeaderKind,
    data: &[u8],
    file: &str,
) -> Result<(Vec<PacketSummary>, Vec<DecodedEvent>), ReadError> {
    let corrupt = |offset, what| ReadError::Corrupt {
        file: file.to_string(),
        offset,
        what,
    };
    let mut packets = Vec::new();
    let mut events = Vec::new();
    let mut off = 0usize;
    while off < data.len() {
        let p = read_packet_header(&data[off..]).ok_or(corrupt(off, "no CTF magic"))?;
        if p.packet_len < PACKET_HEADER_LEN
            || p.content_len > p.packet_len
            || off + p.packet_len > data.len()
        {
            return Err(corrupt(off, "packet sizes out of range"));
        }
        let pkt = &data[off..off + p.content_len];
        let mut clock = p.ts_begin;
        let mut at = PACKET_HEADER_LEN;
        while at < pkt.len() {
            let start = at;
            let bad = || corrupt(off + start, "truncated event");
            let (id, ts) = match header {
                HeaderKind::Compact => {
                    let w = u32::from_le_bytes(rd(pkt, at).ok_or_else(bad)?);
                    if w & 31 == 31 {
                        let id = u32::from_le_bytes(rd(pkt, at + 1).ok_or_else(bad)?);
                        let ts = u64::from_le_bytes(rd(pkt, at + 5).ok_or_else(bad)?);
                        at += 13;
                        (id, ts)
                    } else {
                        at += 4;
                        (w & 31, update_clock(clock, (w >> 5) as u64, 27))
                    }
                }
                HeaderKind::Large => {
                    let id = u16::from_le_bytes(rd(pkt, at).ok_or_else(bad)?);
                    if id == 0xffff {
                        let id = u32::from_le_bytes(rd(pkt, at + 2).ok_or_else(bad)?);
                        let ts = u64::from_le_bytes(rd(pkt, at + 6).ok_or_else(bad)?);
                        at += 14;
                        (id, ts)
                    } else {
                        let low = u32::from_le_bytes(rd(pkt, at + 2).ok_or_else(bad)?);
                        at += 6;
                        (id as u32, update_clock(clock, low as u64, 32))
                    }
                }
            };
            clock = ts;
            let c = pkt.get(at..at + EVENT_CTX_LEN).ok_or_else(bad)?;
            let ctx = TaskCtx {
                pid: i32::from_le_bytes(c[0..4].try_into().unwrap_or_default()),
                tid: i32::from_le_bytes(c[4..8].try_into().unwrap_or_default()),
                procname: c[8..24].try_into().unwrap_or_default(),
            };
            at += EVENT_CTX_LEN;
            if catalog.event(id).is_none() {
                return Err(ReadError::UnknownId {
                    file: file.to_string(),
                    offset: off + start,
                    id,
                });
            }
            let fields = decode_fields(catalog, id, pkt, &mut at).ok_or_else(bad)?;
            events.push(DecodedEvent {
                cpu: p.cpu,
                ts,
                id,
                ctx,
                fields,
            });
        }
        packets.push(p);
        off += p.packet_len;
    }
    Ok((packets, events))
}

/// CTF clock update from an `bits`-bit partial value.
fn update_clock(cur: u64, low: u64, bits: u32) -> u64 {
    let mask = (1u64 << bits) - 1;
    let mut v = (cur & !mask) | low;
    if low < (cur & mask) {
        v = v.wrapping_add(1u64 << bits);
    }
    v
}

/// Read every `channel0_<cpu>` stream of `<trace>/kernel` (or of `trace`
/// itself if it is the kernel folder) and return all events sorted by time
/// (stable: per-stream order is kept).
pub fn read_trace(
    trace: &Path,
    catalog: &Catalog,
    header: HeaderKind,
) -> Result<Vec<DecodedEvent>, ReadError> {
    let dir = if trace.join("kernel").is_dir() {
        trace.join("kernel")
    } else {
        trace.to_path_buf()
    };
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| ReadError::Io { path, source }
    };
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("channel0_"))
        .collect();
    names.sort();
    let mut all = Vec::new();
    for n in names {
        let p = dir.join(&n);
        let data = std::fs::read(&p).map_err(io(&p))?;
        let (_, ev) = decode_stream(catalog, header, &data, &n)?;
        all.extend(ev);
    }
    all.sort_by_key(|e| e.ts);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_wraps_once() {
        let cur = (5u64 << 27) | 100;
        assert_eq!(update_clock(cur, 200, 27), (5 << 27) | 200);
        assert_eq!(update_clock(cur, 50, 27), (6 << 27) | 50);
    }
}

/// What [`repair_trace`] did to one stream file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    pub file: String,
    /// Whole packets kept.
    pub packets: usize,
    /// Bytes cut from the end (an incomplete or corrupt last packet).
    pub cut: u64,
}

/// Make a trace whose writer was killed mid-write readable again: cut each
/// `channel0_<cpu>` stream of `<trace>/kernel` after its last complete,
/// well-formed packet. Returns one entry per stream file that was cut.
pub fn repair_trace(trace: &Path) -> Result<Vec<Repaired>, ReadError> {
    let dir = if trace.join("kernel").is_dir() {
        trace.join("kernel")
    } else {
        trace.to_path_buf()
    };
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| ReadError::Io { path, source }
    };
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("channel0_"))
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let data = std::fs::read(&p).map_err(io(&p))?;
        let mut off = 0usize;
        let mut packets = 0;
        while let Some(h) = read_packet_header(&data[off..]) {
            let ok = h.packet_len >= PACKET_HEADER_LEN
                && h.content_len >= PACKET_HEADER_LEN
                && h.content_len <= h.packet_len
                && off + h.packet_len <= data.len();
            if !ok {
                break;
            }
            off += h.packet_len;
            packets += 1;
        }
        if off < data.len() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(io(&p))?;
            f.set_len(off as u64).map_err(io(&p))?;
            out.push(Repaired {
                file: n,
                packets,
                cut: (data.len() - off) as u64,
            });
        }
    }
    Ok(out)
}
