//! The virtio block device driven as Linux's virtio_pci and virtio_blk
//! drive it: through its BAR, with split rings built in real guest memory,
//! on a real image file that must stay unchanged.

use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::CowDisk;
use super::pci::VirtioBlockPci;
use crate::devices::pci::config::COMMAND;
use crate::devices::pci::msix::MsiMessage;
use crate::devices::pci::PciFunction;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const DATA: u64 = 0x10000;
const SECTORS: u64 = 64;

struct Image(PathBuf);

impl Image {
    /// An image whose sector n is filled with byte n.
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-blk-{tag}-{}.img", std::process::id()));
        let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8).collect();
        std::fs::write(&p, bytes).expect("write image");
        Image(p)
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read image")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Driver {
    dev: VirtioBlockPci,
    mem: GuestMemoryMmap,
    next_desc: u16,
    avail_idx: u16,
}

impl Driver {
    /// The device set up as virtio_pci_modern does: features, one queue on
    /// MSI-X vector 1, DRIVER_OK.
    fn new(img: &Image) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        let mut dev = VirtioBlockPci::new(&img.0, mem.clone(), 0xc000_0000).expect("device");
        dev.config_write(COMMAND, &[0x06, 0]);
        let mut d = Driver {
            dev,
            mem,
            next_desc: 0,
            avail_idx: 0,
        };
        d.w32(0x14, 1 | 2); // ACKNOWLEDGE | DRIVER
        d.w32(0x00, 1);
        assert_eq!(d.r32(0x04) & 1, 1, "VIRTIO_F_VERSION_1 offered");
        d.w32(0x08, 1);
        d.w32(0x0c, 1);
        d.w32(0x08, 0);
        d.w32(0x0c, 1 << 9); // FLUSH
        d.w8(0x14, 1 | 2 | 8);
        assert_eq!(d.r32(0x14) & 0xff & 8, 8, "FEATURES_OK kept");
        // MSI-X on, vector 1 programmed and unmasked.
        let cap = msix_cap(&d.dev);
        d.dev.config_write(cap + 2, &[1, 0x80]);
        d.dev
            .bar_write(0x4000 + 16, &0xfee0_0000u32.to_le_bytes())
            .expect("msix");
        d.dev
            .bar_write(0x4000 + 24, &0x41u32.to_le_bytes())
            .expect("msix");
        d.dev
            .bar_write(0x4000 + 28, &0u32.to_le_bytes())
            .expect("msix");
        d.w16(0x16, 0);
        d.w16(0x1a, 1);
        assert_eq!(d.r32(0x1a) & 0xffff, 1, "queue vector taken");
        d.w16(0x18, 256);
        d.w32(0x20, DESC as u32);
        d.w32(0x24, 0);
        d.w32(0x28, AVAIL as u32);
        d.w32(0x2c, 0);
        d.w32(0x30, USED as u32);
        d.w32(0x34, 0);
        d.w16(0x1c, 1);
        assert_eq!(d.r32(0x1c) & 0xffff, 1, "queue enabled");
        d.w8(0x14, 1 | 2 | 8 | 4);
        d
    }

    fn w8(&mut self, off: u64, v: u8) {
        self.dev.bar_write(off, &[v]).expect("bar write");
    }
    fn w16(&mut self, off: u64, v: u16) {
        self.dev
            .bar_write(off, &v.to_le_bytes())
            .expect("bar write");
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.dev
            .bar_write(off, &v.to_le_bytes())
            .expect("bar write");
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0; 4];
        self.dev.bar_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Queues one request (header, data buffers, status) and kicks the
    /// queue; returns the interrupts, the used length and the status.
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> (Vec<MsiMessage>, u32, u8) {
        let hdr = DATA - 0x100;
        let status = DATA - 0x10;
        let mut h = kind.to_le_bytes().to_vec();
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr)).expect("hdr");
        self.mem
            .write_obj(0xffu8, GuestAddress(status))
            .expect("status");
        let mut chain = vec![(hdr, 16u32, false)];
        chain.extend_from_slice(data);
        chain.push((status, 1, true));
        let head = self.next_desc;
        for (i, &(addr, len, write)) in chain.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == chain.len();
            let flags: u16 = if last { 0 } else { 1 } | if write { 2 } else { 0 };
            let at = DESC + u64::from(idx) * 16;
            self.mem.write_obj(addr, GuestAddress(at)).expect("desc");
            self.mem.write_obj(len, GuestAddress(at + 8)).expect("desc");
            self.mem
                .write_obj(flags, GuestAddress(at + 12))
                .expect("desc");
            self.mem
                .write_obj(idx + 1, GuestAddress(at + 14))
                .expect("desc");
        }
        self.next_desc += chain.len() as u16;
        let slot = AVAIL + 4 + u64::from(self.avail_idx % 256) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).expect("avail");
        self.avail_idx += 1;
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .expect("avail");
        let msgs = self
            .dev
            .bar_write(0x3000, &0u16.to_le_bytes())
            .expect("notify");
        let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).expect("used");
        assert_eq!(used_idx, self.avail_idx, "request served");
        let e = USED + 4 + u64::from((used_idx - 1) % 256) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(e)).expect("used");
        assert_eq!(id, u32::from(head));
        let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).expect("used");
        let st: u8 = self.mem.read_obj(GuestAddress(status)).expect("status");
        (msgs, len, st)
    }
}

fn msix_cap(dev: &VirtioBlockPci) -> usize {
    let c = dev.config();
    let mut p = [0u8];
    c.read(0x34, &mut p);
    let mut at = usize::from(p[0]);
    loop {
        let mut b = [0u8; 2];
        c.read(at, &mut b);
        if b[0] == 0x11 {
            return at;
        }
        assert_ne!(b[1], 0, "no MSI-X capability");
        at = usize::from(b[1]);
    }
}

#[test]
fn read_write_flush_and_get_id_leave_the_image_unchanged() {
    let img = Image::new("rw");
    let before = img.bytes();
    let mut d = Driver::new(&img);
    // Capacity in the device configuration.
    assert_eq!(u64::from(d.r32(0x2000)), SECTORS);
    // IN: sectors 3 and 4 into two buffers.
    let (msgs, len, st) = d.request(0, 3, &[(DATA, 512, true), (DATA + 0x1000, 512, true)]);
    assert_eq!((len, st), (1025, 0));
    assert_eq!(
        msgs,
        vec![MsiMessage {
            address: 0xfee0_0000,
            data: 0x41
        }]
    );
    let mut b = [0u8; 512];
    d.mem
        .read_slice(&mut b, GuestAddress(DATA + 0x1000))
        .expect("read");
    assert!(b.iter().all(|&x| x == 4));
    // OUT: 1.5 KiB of 0xab at sectors 7..10, across the overlay's 4 KiB
    // chunk border at sector 8.
    d.mem
        .write_slice(&[0xab; 1536], GuestAddress(DATA))
        .expect("write");
    let (_, len, st) = d.request(1, 7, &[(DATA, 1536, false)]);
    assert_eq!((len, st), (1, 0));
    // Read back 7..11: written bytes, then the image's sector 10.
    let (_, _, st) = d.request(0, 7, &[(DATA + 0x2000, 2048, true)]);
    assert_eq!(st, 0);
    let mut back = vec![0u8; 2048];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x2000))
        .expect("read");
    assert!(back[..1536].iter().all(|&x| x == 0xab));
    assert!(back[1536..].iter().all(|&x| x == 10));
    // FLUSH.
    let (_, len, st) = d.request(4, 0, &[]);
    assert_eq!((len, st), (1, 0));
    // GET_ID: the image's file name, NUL-padded to 20 bytes.
    let (_, len, st) = d.request(8, 0, &[(DATA + 0x3000, 20, true)]);
    assert_eq!((len, st), (21, 0));
    let mut id = [0u8; 20];
    d.mem
        .read_slice(&mut id, GuestAddress(DATA + 0x3000))
        .expect("id");
    let name = img
        .0
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let want = &name.as_bytes()[..name.len().min(20)];
    assert_eq!(&id[..want.len()], want);
    // Past the end: an I/O error; an unknown type: unsupported.
    let (_, _, st) = d.request(0, SECTORS - 1, &[(DATA, 1024, true)]);
    assert_eq!(st, 1);
    let (_, _, st) = d.request(11, 0, &[]);
    assert_eq!(st, 2);
    assert_eq!(d.dev.disk().overlay_bytes(), 8192);
    drop(d);
    assert_eq!(img.bytes(), before, "the image file is unchanged");
}

#[test]
fn masked_queue_vector_waits_in_the_pba() {
    let img = Image::new("mask");
    let mut d = Driver::new(&img);
    d.w32(0x4000 + 28, 1);
    let (msgs, _, st) = d.request(4, 0, &[]);
    assert_eq!((msgs.len(), st), (0, 0));
    assert_eq!(d.r32(0x5000), 0b10);
    // ISR says "queue", and reading it clears it.
    assert_eq!(d.r32(0x1000) & 0xff, 1);
    assert_eq!(d.r32(0x1000) & 0xff, 0);
    let released = d
        .dev
        .bar_write(0x4000 + 28, &0u32.to_le_bytes())
        .expect("unmask");
    assert_eq!(released.len(), 1);
    // A device reset forgets the queue.
    d.w8(0x14, 0);
    assert_eq!(d.r32(0x14) & 0xff, 0);
    assert_eq!(d.r32(0x1c) & 0xffff, 0);
}

#[test]
fn cow_disk_reads_through_and_keeps_writes() {
    let img = Image::new("cow");
    let before = img.bytes();
    let mut disk = CowDisk::open(&img.0).expect("open");
    assert_eq!(disk.sectors(), SECTORS);
    disk.write_at(4090, &[7; 10]).expect("write");
    let mut b = [0u8; 16];
    disk.read_at(4088, &mut b).expect("read");
    assert_eq!(&b[..2], &[7, 7]);
    assert_eq!(&b[2..12], &[7; 10]);
    assert_eq!(&b[12..], &[8; 4]);
    // Sector 7 (bytes 3584..4096) outside the write still reads the image.
    disk.read_at(3584, &mut b).expect("read");
    assert_eq!(b, [7; 16]);
    drop(disk);
    assert_eq!(img.bytes(), before);
}

#[test]
fn the_bus_routes_config_cycles_and_the_moved_bar() {
    use crate::devices::pci::PciBus;
    let img = Image::new("bus");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    let dev = VirtioBlockPci::new(&img.0, mem, 0xc000_0000).expect("device");
    let bus = PciBus::new(vec![Box::new(dev)], None);
    let cfg = |reg: u32, v: Option<u32>| -> u32 {
        bus.pio_write(0xcf8, &(0x8000_0800 | reg).to_le_bytes())
            .expect("latch");
        if let Some(v) = v {
            bus.pio_write(0xcfc, &v.to_le_bytes()).expect("write");
        }
        let mut b = [0; 4];
        bus.pio_read(0xcfc, &mut b);
        u32::from_le_bytes(b)
    };
    // 00:01.0 is a modern virtio block device.
    assert_eq!(cfg(0, None), 0x1042_1af4);
    assert_eq!(cfg(0x10, None), 0xc000_0000);
    // Decoding off: the BAR is not claimed.
    let mut b = [0u8; 2];
    assert!(!bus.mmio_read(0xc000_0012, &mut b));
    // The guest moves the BAR and enables memory decoding.
    cfg(0x10, Some(u32::MAX));
    assert_eq!(cfg(0x10, None), !(super::pci::BAR_SIZE - 1));
    cfg(0x10, Some(0xd000_0000));
    cfg(0x04, Some(0x6));
    assert!(!bus.mmio_read(0xc000_0012, &mut b));
    assert!(bus.mmio_read(0xd000_0012, &mut b));
    assert_eq!(u16::from_le_bytes(b), 1, "num_queues");
    assert_eq!(bus.mmio_write(0xd000_0014, &[1]).ok(), Some(true));
    assert_eq!(bus.mmio_write(0xd000_8000, &[1]).ok(), Some(false));
}
