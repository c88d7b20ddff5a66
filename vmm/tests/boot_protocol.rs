//! The Linux boot path with a tiny hand-made ELF "kernel": it receives our
//! zero page in RSI, prints the command line it points to on COM1, and
//! resets through the i8042. Plus the errors a user sees for bad inputs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::{BuildError, VmConfig, VmExit};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn have_kvm() -> bool {
    let ok = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        println!("skipped: no usable /dev/kvm");
    }
    ok
}

const LOAD: u64 = 0x100_0000;

/// An ELF64 executable with one PT_LOAD of `code` at 16 MiB.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    let off = 64 + 56u64;
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [
        off,
        LOAD,
        LOAD,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(code);
    e
}

/// Prints the NUL-terminated command line at boot_params.hdr.cmd_line_ptr,
/// then the low byte of the e820 entry count as a letter, then resets.
fn kernel_code() -> Vec<u8> {
    vec![
        0xba, 0xf8, 0x03, 0, 0, // mov edx, 0x3f8
        0x8a, 0x86, 0xe8, 0x01, 0, 0, // mov al, [rsi+0x1e8] (e820_entries)
        0x04, b'@', // add al, '@'
        0x88, 0xc3, // mov bl, al
        0x8b, 0xb6, 0x28, 0x02, 0, 0, // mov esi, [rsi+0x228] (cmd_line_ptr)
        0x8a, 0x06, // L: mov al, [rsi]
        0x84, 0xc0, // test al, al
        0x74, 0x06, // jz done
        0xee, // out dx, al
        0x48, 0xff, 0xc6, // inc rsi
        0xeb, 0xf4, // jmp L
        0x88, 0xd8, 0xee, // done: mov al, bl; out dx, al
        0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al (reset)
        0xeb, 0xfe, // jmp $
    ]
}

fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vmm-test-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn elf_kernel_gets_our_zero_page_and_command_line() {
    if !have_kvm() {
        return;
    }
    let kernel = temp("kernel.elf", &tiny_elf(&kernel_code()));
    let initrd = temp("initrd", &[7u8; 5000]);
    let cmdline = "console=ttyS0 hello=world";
    let cap = Capture::default();
    let mut cfg = VmConfig::linux(kernel.clone(), Some(initrd.clone()), cmdline.into());
    cfg.memory_mib = 64;
    cfg.console = Some(Box::new(cap.clone()));
    let mut vm = vmm::build(cfg).unwrap();
    // The initramfs sits page-aligned at the top of RAM, and the zero page
    // says so.
    let mut hdr = [0u8; 8];
    vm.read_phys(vmm::layout::ZERO_PAGE_START + 0x218, &mut hdr)
        .unwrap();
    let image = u32::from_le_bytes(hdr[..4].try_into().unwrap()) as u64;
    let size = u32::from_le_bytes(hdr[4..].try_into().unwrap());
    assert_eq!((image, size), ((64 << 20) - 0x2000, 5000));
    let mut first = [0u8; 4];
    vm.read_phys(image, &mut first).unwrap();
    assert_eq!(first, [7; 4]);
    vm.start().unwrap();
    assert_eq!(vm.wait(Duration::from_secs(30)), Some(VmExit::Reset));
    let e820 = vmm::arch::boot_params::e820_map(64 << 20).len() as u8;
    let mut want = cmdline.as_bytes().to_vec();
    want.push(b'@' + e820);
    assert_eq!(*cap.0.lock().unwrap(), want);
    let _ = std::fs::remove_file(kernel);
    let _ = std::fs::remove_file(initrd);
}

#[test]
fn bad_inputs_give_clear_errors() {
    if !have_kvm() {
        return;
    }
    let junk = temp("junk", &[0x42; 4096]);
    let e = vmm::build(VmConfig::linux(junk.clone(), None, String::new())).err();
    assert!(matches!(e, Some(BuildError::NotAKernel(_))), "{e:?}");
    assert!(e.unwrap().to_string().contains("not a Linux kernel"));

    let kernel = temp("k2.elf", &tiny_elf(&kernel_code()));
    let big = temp("big", &vec![0u8; 20 << 20]);
    let mut cfg = VmConfig::linux(kernel.clone(), Some(big.clone()), String::new());
    // 32 MiB: the kernel ends above 16 MiB, 20 MiB of initramfs cannot fit
    // above it.
    cfg.memory_mib = 32;
    let e = vmm::build(cfg).err();
    assert!(matches!(e, Some(BuildError::InitrdTooBig(_, _))), "{e:?}");

    let mut cfg = VmConfig::raw(vec![0xf4]);
    cfg.vcpus = 0;
    assert!(matches!(
        vmm::build(cfg).err(),
        Some(BuildError::VcpuCount(0))
    ));
    let missing = VmConfig::linux("/nonexistent/vmlinux".into(), None, String::new());
    assert!(matches!(
        vmm::build(missing).err(),
        Some(BuildError::Io(..))
    ));
    for p in [junk, kernel, big] {
        let _ = std::fs::remove_file(p);
    }
}
