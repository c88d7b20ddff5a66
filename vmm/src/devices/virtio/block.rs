//! virtio-blk requests (virtio 1.2, 5.2.6) on a disk image that is never
//! written: the image is opened read-only and the guest's writes land in a
//! copy-on-write overlay in host memory that dies with the VM, like QEMU's
//! `snapshot=on`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening or reading the image.
    #[error("disk image {0}: {1}")]
    Image(String, std::io::Error),
    /// The image is smaller than a sector.
    #[error("disk image {0} is smaller than one 512-byte sector")]
    Empty(String),
    /// The guest gave a request the device cannot parse (no header, no
    /// status byte, descriptors outside memory).
    #[error("malformed virtio-blk request: {0}")]
    Malformed(String),
}

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Granularity of the overlay: a guest write copies this much of the
/// image once, then changes the copy.
const CHUNK: u64 = 4096;

/// The image read-only, and the guest's writes above it.
pub struct CowDisk {
    file: File,
    /// Bytes the guest sees: the image's size rounded down to sectors.
    size: u64,
    chunks: HashMap<u64, Box<[u8]>>,
}

impl CowDisk {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self, BlockError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| BlockError::Image(name.clone(), e))?;
        let len = file
            .metadata()
            .map_err(|e| BlockError::Image(name.clone(), e))?
            .len();
        let size = len - len % SECTOR_SIZE;
        if size == 0 {
            return Err(BlockError::Empty(name));
        }
        Ok(CowDisk {
            file,
            size,
            chunks: HashMap::new(),
        })
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Bytes held in the overlay.
    pub fn overlay_bytes(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK
    }

    /// Reads the image (zeros past its end) into `buf` at chunk `c`.
    fn base_chunk(&self, c: u64) -> std::io::Result<Box<[u8]>> {
        let mut buf = vec![0u8; CHUNK as usize].into_boxed_slice();
        let start = c * CHUNK;
        let n = (self.size.saturating_sub(start)).min(CHUNK) as usize;
        self.file.read_exact_at(&mut buf[..n], start)?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes at `offset` (inside the disk).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (c, within) = (at / CHUNK, (at % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(buf.len() - done);
            match self.chunks.get(&c) {
                Some(chunk) => buf[done..done + n].copy_from_slice(&chunk[within..within + n]),
                None => self.file.read_exact_at(&mut buf[done..done + n], at)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` into the overlay.
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (c, within) = (at / CHUNK, (at % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(buf.len() - done);
            if !self.chunks.contains_key(&c) {
                let base = self.base_chunk(c)?;
                self.chunks.insert(c, base);
            }
            if let Some(chunk) = self.chunks.get_mut(&c) {
                chunk[within..within + n].copy_from_slice(&buf[done..done + n]);
            }
            done += n;
        }
        Ok(())
    }

    /// True if `[sector, sector + len)` lies on the disk.
    fn in_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= self.size)
    }
}

/// The request header (`struct virtio_blk_outhdr`).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    _ioprio: u32,
    sector: u64,
}

// SAFETY: plain little-endian integers with no padding; every bit pattern
// is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Serves one request; returns the bytes written into the guest's buffers
/// (data and status), the used-ring length.
pub fn handle_request(
    disk: &mut CowDisk,
    id: &[u8],
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<u32, BlockError> {
    let bad = |e: &dyn std::fmt::Display| BlockError::Malformed(e.to_string());
    let mut reader = Reader::new(mem, chain.clone()).map_err(|e| bad(&e))?;
    let mut writer: Writer<'_> = Writer::new(mem, chain).map_err(|e| bad(&e))?;
    let hdr: RequestHeader = reader.read_obj().map_err(|e| bad(&e))?;
    let data_len = writer
        .available_bytes()
        .checked_sub(1)
        .ok_or_else(|| BlockError::Malformed("no status byte".into()))?;
    let mut status_w = writer.split_at(data_len).map_err(|e| bad(&e))?;
    let status = match hdr.kind {
        VIRTIO_BLK_T_IN => {
            let len = data_len as u64;
            if len % SECTOR_SIZE != 0 || !disk.in_range(hdr.sector, len) {
                VIRTIO_BLK_S_IOERR
            } else {
                let mut buf = vec![0u8; data_len];
                match disk.read_at(hdr.sector * SECTOR_SIZE, &mut buf) {
                    Ok(()) => {
                        writer.write_all(&buf).map_err(|e| bad(&e))?;
                        VIRTIO_BLK_S_OK
                    }
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
        }
        VIRTIO_BLK_T_OUT => {
            let len = reader.available_bytes();
            if len as u64 % SECTOR_SIZE != 0 || !disk.in_range(hdr.sector, len as u64) {
                VIRTIO_BLK_S_IOERR
            } else {
                let mut buf = vec![0u8; len];
                reader.read_exact(&mut buf).map_err(|e| bad(&e))?;
                match disk.write_at(hdr.sector * SECTOR_SIZE, &buf) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
        }
        // Nothing to make durable: the overlay lives as long as the VM.
        VIRTIO_BLK_T_FLUSH => VIRTIO_BLK_S_OK,
        VIRTIO_BLK_T_GET_ID => {
            let n = data_len.min(VIRTIO_BLK_ID_BYTES as usize);
            let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            let k = id.len().min(serial.len());
            serial[..k].copy_from_slice(&id[..k]);
            writer.write_all(&serial[..n]).map_err(|e| bad(&e))?;
            VIRTIO_BLK_S_OK
        }
        _ => VIRTIO_BLK_S_UNSUPP,
    };
    status_w.write_all(&[status as u8]).map_err(|e| bad(&e))?;
    Ok((writer.bytes_written() + 1) as u32)
}
