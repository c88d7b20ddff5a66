//! x86 bzImage: the boot-protocol setup header and the compressed payload
//! (gzip, xz, lzma, zstd, lz4 legacy frames), decompressed with bounded memory.

use std::io::Read;

/// Largest decompressed kernel accepted (real ones are 30–100 MiB).
pub const MAX_DECOMPRESSED: usize = 512 << 20;
/// Largest LZMA/XZ dictionary the decoder may allocate.
const XZ_MEMLIMIT: u64 = 256 << 20;
/// zstd window-log limit (128 MiB window; the kernel's `zstd22` fits).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Block size of the kernel's legacy LZ4 framing (`lz4 -l`).
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;

/// Errors of bzImage parsing and payload decompression.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    #[error("not a bzImage: {0}")]
    NotBzImage(&'static str),
    #[error("boot protocol {0:#06x} is too old (payload fields need >= 2.08)")]
    OldProtocol(u16),
    #[error("bzImage is not a 64-bit x86 kernel (XLF_KERNEL_64 clear)")]
    Not64Bit,
    #[error("payload {offset:#x}+{len:#x} lies outside the {file:#x}-byte file (truncated?)")]
    PayloadOutOfBounds { offset: u64, len: u64, file: usize },
    #[error("unknown payload compression (magic {0:02x?})")]
    UnknownCompression([u8; 6]),
    #[error("{0} payloads are not supported")]
    Unsupported(&'static str),
    #[error("{codec} stream is corrupt: {msg}")]
    Corrupt { codec: &'static str, msg: String },
    #[error("decompressed payload exceeds {MAX_DECOMPRESSED} bytes")]
    TooLarge,
    #[error("decompressed size {got} differs from the size recorded in the image ({expected})")]
    SizeMismatch { got: usize, expected: usize },
}

type Result<T> = std::result::Result<T, BzImageError>;

/// Payload compression formats a distribution kernel may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Lzma,
    Zstd,
    Lz4,
    Bzip2,
    Lzo,
}

impl Compression {
    /// Detects the compression of a stream by its magic bytes.
    pub fn detect(data: &[u8]) -> Option<Compression> {
        let m = |p: &[u8]| data.starts_with(p);
        Some(if m(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if m(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if m(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if m(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Compression::Lz4
        } else if m(b"BZh") {
            Compression::Bzip2
        } else if m(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if m(&[0x5d, 0, 0]) {
            Compression::Lzma
        } else {
            return None;
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
        }
    }
}

/// The compressed kernel inside a bzImage.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    /// Compressed stream followed by the 4-byte little-endian decompressed size.
    pub data: &'a [u8],
    pub compression: Compression,
    /// Boot protocol version (e.g. 0x020f).
    pub protocol: u16,
}

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

/// True if `data` starts like a bzImage (boot flag and "HdrS").
pub fn is_bzimage(data: &[u8]) -> bool {
    u16_at(data, 0x1fe) == Some(0xaa55) && data.get(0x202..0x206) == Some(b"HdrS")
}

/// Parses the setup header and locates the compressed payload.
pub fn payload(data: &[u8]) -> Result<Payload<'_>> {
    if data.len() < 0x250 {
        return Err(BzImageError::NotBzImage("shorter than a setup header"));
    }
    if !is_bzimage(data) {
        return Err(BzImageError::NotBzImage("no boot flag / HdrS magic"));
    }
    let protocol = u16_at(data, 0x206).unwrap_or(0);
    if protocol < 0x208 {
        return Err(BzImageError::OldProtocol(protocol));
    }
    if protocol >= 0x20c && u16_at(data, 0x236).unwrap_or(0) & 1 == 0 {
        return Err(BzImageError::Not64Bit);
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = pm_start + u64::from(u32_at(data, 0x248).unwrap_or(0));
    let len = u64::from(u32_at(data, 0x24c).unwrap_or(0));
    let oob = || BzImageError::PayloadOutOfBounds {
        offset: off,
        len,
        file: data.len(),
    };
    let end = off.checked_add(len).ok_or_else(oob)?;
    if len < 8 || end > data.len() as u64 {
        return Err(oob());
    }
    let data = &data[off as usize..end as usize];
    let compression = Compression::detect(data).ok_or_else(|| {
        let mut m = [0u8; 6];
        m.copy_from_slice(&data[..6]);
        BzImageError::UnknownCompression(m)
    })?;
    Ok(Payload {
        data,
        compression,
        protocol,
    })
}

impl Payload<'_> {
    /// The decompressed size the build recorded after the stream.
    pub fn recorded_size(&self) -> usize {
        let n = self.data.len();
        u32_at(self.data, n - 4).unwrap_or(0) as usize
    }

    /// Decompresses the payload (an ELF vmlinux, usually followed by the
    /// relocation table) and checks it against the recorded size.
    pub fn decompress(&self) -> Result<Vec<u8>> {
        let stream = &self.data[..self.data.len() - 4];
        let expected = self.recorded_size();
        let out = decompress(stream, self.compression, Some(expected))?;
        if out.len() != expected {
            return Err(BzImageError::SizeMismatch {
                got: out.len(),
                expected,
            });
        }
        Ok(out)
    }
}

fn corrupt(codec: &'static str) -> impl Fn(std::io::Error) -> BzImageError {
    move |e| BzImageError::Corrupt {
        codec,
        msg: e.to_string(),
    }
}

fn read_bounded(mut r: impl Read, hint: usize, codec: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(hint);
    r.by_ref()
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(corrupt(codec))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(BzImageError::TooLarge);
    }
    Ok(out)
}

/// Decompresses one stream. `size_hint` only pre-sizes the output buffer and
/// is itself bounded, so a lying header cannot force a large allocation.
pub fn decompress(stream: &[u8], c: Compression, size_hint: Option<usize>) -> Result<Vec<u8>> {
    let hint = size_hint
        .unwrap_or(0)
        .min(stream.len().saturating_mul(32))
        .min(MAX_DECOMPRESSED);
    match c {
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(stream), hint, "gzip"),
        Compression::Xz | Compression::Lzma => {
            let s = if c == Compression::Xz {
                xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
            } else {
                xz2::stream::Stream::new_lzma_decoder(XZ_MEMLIMIT)
            }
            .map_err(|e| BzImageError::Corrupt {
                codec: c.name(),
                msg: e.to_string(),
            })?;
            read_bounded(xz2::read::XzDecoder::new_stream(stream, s), hint, c.name())
        }
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(stream).map_err(corrupt("zstd"))?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(corrupt("zstd"))?;
            read_bounded(d, hint, "zstd")
        }
        Compression::Lz4 => lz4_legacy(stream, hint),
        Compression::Bzip2 | Compression::Lzo => Err(BzImageError::Unsupported(c.name())),
    }
}

/// The kernel's LZ4 "legacy" framing: magic, then (u32 size, block)*; a
/// block decompresses to at most 8 MiB; a repeated magic starts a new frame.
fn lz4_legacy(stream: &[u8], hint: usize) -> Result<Vec<u8>> {
    let bad = |msg: &str| BzImageError::Corrupt {
        codec: "lz4",
        msg: msg.to_string(),
    };
    let mut out = Vec::with_capacity(hint);
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4;
    while pos < stream.len() {
        let size = u32_at(stream, pos).ok_or_else(|| bad("truncated block header"))?;
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let end = pos
            .checked_add(size as usize)
            .filter(|&e| e <= stream.len())
            .ok_or_else(|| bad("block runs past the end of the stream"))?;
        let n = lz4_flex::block::decompress_into(&stream[pos..end], &mut block)
            .map_err(|e| bad(&e.to_string()))?;
        if out.len() + n > MAX_DECOMPRESSED {
            return Err(BzImageError::TooLarge);
        }
        out.extend_from_slice(&block[..n]);
        pos = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a minimal bzImage around `stream` (+ size suffix).
    pub(crate) fn fake_bzimage(stream: &[u8], size: u32) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(stream.len() as u32 + 4).to_le_bytes());
        img.extend_from_slice(&[0u8; 16]);
        img.extend_from_slice(stream);
        img.extend_from_slice(&size.to_le_bytes());
        img
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn gzip(d: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }
    fn xz(d: &[u8]) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }
    fn lz4(d: &[u8]) -> Vec<u8> {
        let mut s = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in d.chunks(LZ4_LEGACY_BLOCK) {
            let b = lz4_flex::block::compress(chunk);
            s.extend_from_slice(&(b.len() as u32).to_le_bytes());
            s.extend_from_slice(&b);
        }
        s
    }

    #[test]
    fn every_codec_round_trips_through_a_bzimage() {
        let d = sample();
        let zst = zstd::bulk::compress(&d, 3).unwrap();
        for (stream, c) in [
            (gzip(&d), Compression::Gzip),
            (xz(&d), Compression::Xz),
            (zst, Compression::Zstd),
            (lz4(&d), Compression::Lz4),
        ] {
            let img = fake_bzimage(&stream, d.len() as u32);
            let p = payload(&img).unwrap();
            assert_eq!(p.compression, c);
            assert_eq!(p.decompress().unwrap(), d, "{c:?}");
        }
    }

    #[test]
    fn corruption_gives_errors_not_panics() {
        let d = sample();
        let zst = zstd::bulk::compress(&d, 3).unwrap();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for stream in [gzip(&d), xz(&d), zst, lz4(&d)] {
            let img = fake_bzimage(&stream, d.len() as u32);
            for _ in 0..40 {
                let cut = (rnd() as usize) % img.len();
                assert!(payload(&img[..cut]).and_then(|p| p.decompress()).is_err());
                let mut flipped = img.clone();
                let at = 0xa10 + (rnd() as usize) % stream.len();
                flipped[at] ^= 1 << (rnd() % 8);
                // A flip may land in a literal and still decode: then the
                // size or the content differ, or (rarely) decode the same.
                if let Ok(out) = payload(&flipped).and_then(|p| p.decompress()) {
                    assert_eq!(out.len(), d.len());
                }
            }
        }
        assert!(payload(&[]).is_err());
    }

    #[test]
    fn lying_size_hint_does_not_allocate() {
        let img = fake_bzimage(&xz(b"tiny"), u32::MAX);
        let p = payload(&img).unwrap();
        assert!(matches!(
            p.decompress(),
            Err(BzImageError::SizeMismatch { .. })
        ));
    }
}
