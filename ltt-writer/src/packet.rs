//! Binary layout of packets and event fields (little-endian, byte-aligned,
//! as lttng-modules lays them out on x86-64).

use crate::metadata::{CTF_MAGIC, PACKET_HEADER_LEN};

/// Errors of the binary layer.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("packet size {0} is too small (minimum {min})", min = MIN_PACKET_SIZE)]
    TooSmall(usize),
    #[error("packet size {0} is not a multiple of 8")]
    Unaligned(usize),
}

/// Smallest packet accepted: header + a few events.
pub const MIN_PACKET_SIZE: usize = 4096;
/// Longest string payload kept (longer ones are truncated), excluding the NUL.
pub const MAX_STR: usize = 4095;
/// Size of the stream event context (`pid`, `tid`, `procname[16]`).
pub const EVENT_CTX_LEN: usize = 4 + 4 + 16;

pub(crate) fn check_packet_size(size: usize) -> Result<(), PacketError> {
    if size < MIN_PACKET_SIZE {
        return Err(PacketError::TooSmall(size));
    }
    if size % 8 != 0 {
        return Err(PacketError::Unaligned(size));
    }
    Ok(())
}

/// Values of the packet header and context of one closed packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketInfo {
    pub uuid: [u8; 16],
    pub cpu: u32,
    pub ts_begin: u64,
    pub ts_end: u64,
    /// Bytes used, header included.
    pub content_len: usize,
    pub packet_len: usize,
    pub seq: u64,
    pub discarded: u64,
}

/// Write the packet header and context at the start of `buf`.
pub(crate) fn write_packet_header(buf: &mut [u8], p: &PacketInfo) {
    let h = &mut buf[..PACKET_HEADER_LEN];
    h[0..4].copy_from_slice(&CTF_MAGIC.to_le_bytes());
    h[4..20].copy_from_slice(&p.uuid);
    h[20..24].copy_from_slice(&0u32.to_le_bytes());
    h[24..32].copy_from_slice(&u64::from(p.cpu).to_le_bytes());
    h[32..40].copy_from_slice(&p.ts_begin.to_le_bytes());
    h[40..48].copy_from_slice(&p.ts_end.to_le_bytes());
    h[48..56].copy_from_slice(&(p.content_len as u64 * 8).to_le_bytes());
    h[56..64].copy_from_slice(&(p.packet_len as u64 * 8).to_le_bytes());
    h[64..72].copy_from_slice(&p.seq.to_le_bytes());
    h[72..80].copy_from_slice(&p.discarded.to_le_bytes());
    h[80..84].copy_from_slice(&p.cpu.to_le_bytes());
}

/// Read back a packet header (used by the reader and the tests).
pub fn read_packet_header(buf: &[u8]) -> Option<PacketInfo> {
    if buf.len() < PACKET_HEADER_LEN {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]));
    if u32_at(0) != CTF_MAGIC {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&buf[4..20]);
    Some(PacketInfo {
        uuid,
        cpu: u32_at(80),
        ts_begin: u64_at(32),
        ts_end: u64_at(40),
        content_len: (u64_at(48) / 8) as usize,
        packet_len: (u64_at(56) / 8) as usize,
        seq: u64_at(64),
        discarded: u64_at(72),
    })
}

/// Length of the bytes kept from a guest string: up to the first NUL, at
/// most [`MAX_STR`].
#[inline]
pub fn str_bytes(s: &[u8]) -> &[u8] {
    let s = &s[..s.len().min(MAX_STR)];
    // std's word-at-a-time NUL search.
    match std::ffi::CStr::from_bytes_until_nul(s) {
        Ok(c) => c.to_bytes(),
        Err(_) => s,
    }
}

const LO: u128 = u128::from_le_bytes([1; 16]);
const HI: u128 = u128::from_le_bytes([0x80; 16]);

/// `char[16]` text fast path: the string up to its first NUL (at most 15
/// bytes), NUL-padded, as one 16-byte word; `None` if it is not ASCII.
#[inline(always)]
fn text16(s: &[u8]) -> Option<[u8; 16]> {
    let x = match s.first_chunk::<16>() {
        Some(a) => u128::from_le_bytes(*a),
        None => {
            let mut a = [0u8; 16];
            a[..s.len()].copy_from_slice(s);
            u128::from_le_bytes(a)
        }
    };
    // The lowest flagged byte is the first NUL (later flags may be false).
    let z = x.wrapping_sub(LO) & !x & HI;
    let n = if z == 0 {
        15
    } else {
        (z.trailing_zeros() / 8).min(15)
    };
    let v = x & ((1u128 << (8 * n)) - 1);
    (v & HI == 0).then(|| v.to_le_bytes())
}

/// Encoded size of a NUL-terminated string field.
#[inline]
pub fn str_len(s: &[u8]) -> usize {
    str_bytes(s).len() + 1
}

/// Copy `src` to `dst`, replacing each invalid UTF-8 sequence by `?`
/// (guest memory can hold anything; readers expect UTF-8).
#[inline]
fn copy_text(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(src);
    if src.is_ascii() {
        return;
    }
    let mut i = 0;
    while let Err(e) = std::str::from_utf8(&dst[i..]) {
        let bad = i + e.valid_up_to();
        let n = e.error_len().unwrap_or(dst.len() - bad);
        dst[bad..bad + n].fill(b'?');
        i = bad + n;
    }
}

/// Serialises the fields of one event into its reserved space.
///
/// Every write is bounds-checked against the reservation; writing past it
/// panics in debug builds and is ignored in release builds.
pub struct FieldWriter<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> FieldWriter<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        FieldWriter { buf, at: 0 }
    }

    #[inline]
    fn put<const N: usize>(&mut self, b: [u8; N]) {
        if let Some(d) = self.buf.get_mut(self.at..self.at + N) {
            d.copy_from_slice(&b);
        } else {
            debug_assert!(false, "field write past the reserved event size");
        }
        self.at += N;
    }

    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.put([v]);
    }
    #[inline]
    pub fn u16(&mut self, v: u16) {
        self.put(v.to_le_bytes());
    }
    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.put(v.to_le_bytes());
    }
    #[inline]
    pub fn i32(&mut self, v: i32) {
        self.put(v.to_le_bytes());
    }
    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.put(v.to_le_bytes());
    }
    #[inline]
    pub fn i64(&mut self, v: i64) {
        self.put(v.to_le_bytes());
    }

    /// Integer of `bits` (8/16/32/64) from the low bits of `v`.
    #[inline]
    pub fn int(&mut self, bits: u8, v: u64) {
        match bits {
            8 => self.u8(v as u8),
            16 => self.u16(v as u16),
            32 => self.u32(v as u32),
            _ => self.u64(v),
        }
    }

    /// Fixed-size text array of `len` bytes (`char comm[16]`): the string up
    /// to its first NUL, truncated to `len - 1`, then NUL padding.
    #[inline(always)]
    pub fn text(&mut self, s: &[u8], len: usize) {
        if len == 16 {
            if let Some(a) = text16(s) {
                self.put(a);
                return;
            }
        }
        let s = str_bytes(s);
        let n = s.len().min(len.saturating_sub(1));
        if let Some(d) = self.buf.get_mut(self.at..self.at + len) {
            copy_text(&mut d[..n], &s[..n]);
            d[n..].fill(0);
        } else {
            debug_assert!(false, "text write past the reserved event size");
        }
        self.at += len;
    }

    /// NUL-terminated string; its size must have been reserved with
    /// [`str_len`].
    #[inline]
    pub fn str(&mut self, s: &[u8]) {
        let s = str_bytes(s);
        let n = s.len();
        if let Some(d) = self.buf.get_mut(self.at..self.at + n + 1) {
            copy_text(&mut d[..n], s);
            d[n] = 0;
        } else {
            debug_assert!(false, "string write past the reserved event size");
        }
        self.at += n + 1;
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let mut b = vec![0u8; 128];
        let p = PacketInfo {
            uuid: [7; 16],
            cpu: 3,
            ts_begin: 10,
            ts_end: 20,
            content_len: 100,
            packet_len: 128,
            seq: 5,
            discarded: 9,
        };
        write_packet_header(&mut b, &p);
        assert_eq!(read_packet_header(&b), Some(p));
        assert_eq!(&b[0..4], &[0xC1, 0x1F, 0xFC, 0xC1]);
    }

    #[test]
    fn text_and_str_sanitise() {
        let mut b = [0xAAu8; 32];
        let mut w = FieldWriter::new(&mut b);
        w.text(b"verylongcommandname-here", 16);
        w.str(b"a\xffb\0junk");
        assert_eq!(w.written(), 16 + 4);
        assert_eq!(&b[..16], b"verylongcommand\0");
        assert_eq!(&b[16..20], b"a?b\0");
        assert_eq!(str_len(b"abc\0def"), 4);
        // The 16-byte fast path agrees with the generic one.
        for input in [
            &b""[..],
            b"a",
            b"bash\0garbage....",
            b"0123456789abcdefXYZ",
            b"swapper/0",
            b"\0abc",
        ] {
            let mut fast = [0xAAu8; 16];
            FieldWriter::new(&mut fast).text(input, 16);
            let s = str_bytes(input);
            let n = s.len().min(15);
            let mut want = [0u8; 16];
            want[..n].copy_from_slice(&s[..n]);
            assert_eq!(fast, want, "{input:?}");
        }
        // Valid UTF-8 is kept as is.
        let mut b2 = [0u8; 8];
        FieldWriter::new(&mut b2).str("é".as_bytes());
        assert_eq!(&b2[..3], "é\0".as_bytes());
    }
}
