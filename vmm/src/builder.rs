//! Builds and starts a VM, owning the boot order: /dev/kvm, VM, memory,
//! kernel + command line + initramfs, zero page, MP table, boot tables,
//! vCPUs, serial console, threads.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::loader::{self, Cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::{boot_params, mptable, regs};
use crate::breakpoints::{DebugState, RegCache};
use crate::debug::DebugHandler;
use crate::devices::pci::PciBus;
use crate::devices::serial::{ConsoleOut, SerialConsole, SerialError};
use crate::devices::virtio::pci::VirtioBlockPci;
use crate::devices::PioBus;
use crate::layout::*;
use crate::vstate::control::{install_kick_handler, Shared};
use crate::vstate::sw_local::SwLocal;
use crate::vstate::swbp::SwBreakpoints;
use crate::vstate::vcpu::{self, ExitState, Runner, VcpuConfig, VcpuError};
use crate::vstate::{memory, vm};

/// KVM_CAP_SET_GUEST_DEBUG2 (not in kvm-ioctls' `Cap`).
const KVM_CAP_SET_GUEST_DEBUG2: libc::c_ulong = 195;

/// Errors of building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Opening /dev/kvm or creating the VM.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Reading a file.
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The kernel is neither a bzImage nor an ELF.
    #[error("{0} is not a Linux kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel(PathBuf),
    /// linux-loader refused the kernel.
    #[error("cannot load kernel {0}: {1}")]
    Load(PathBuf, loader::Error),
    /// Bad command line.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// The initramfs does not fit below 4 GiB above the kernel.
    #[error("initramfs {0} ({1} bytes) does not fit in guest memory below 4 GiB above the kernel")]
    InitrdTooBig(PathBuf, u64),
    /// Synthetic code outside memory.
    #[error("guest code does not fit in guest memory")]
    CodeTooBig,
    /// Zero page.
    #[error(transparent)]
    BootParams(#[from] boot_params::BootParamsError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Boot tables.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Serial console.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// Wiring IRQ 4.
    #[error("cannot register the serial irqfd: {0}")]
    Irqfd(kvm_ioctls::Error),
    /// Signal handler or thread.
    #[error("cannot start vCPU threads: {0}")]
    Thread(String),
    /// The disk image.
    #[error(transparent)]
    Disk(#[from] crate::devices::virtio::block::BlockError),
    /// A disk without the in-kernel irqchip its MSI-X needs.
    #[error("a disk needs the in-kernel irqchip (its interrupts are MSI-X messages)")]
    DiskWithoutIrqchip,
    /// Invalid vCPU count.
    #[error("invalid vCPU count {0} (1 to 254)")]
    VcpuCount(u32),
}

/// What to boot.
pub enum Boot {
    /// A Linux kernel (ELF vmlinux or bzImage) through the 64-bit boot
    /// protocol.
    Linux {
        /// Kernel image.
        kernel: PathBuf,
        /// Initramfs.
        initrd: Option<PathBuf>,
        /// Command line.
        cmdline: String,
    },
    /// Raw 64-bit code loaded at [`RAW_CODE_START`] and entered in long
    /// mode on every vCPU with RDI = vCPU index and a private stack.
    Raw {
        /// Machine code.
        code: Vec<u8>,
    },
}

/// Creates a handler for vCPU n.
pub type HandlerFactory = Box<dyn FnMut(u32) -> Box<dyn DebugHandler>>;

/// A VM to build.
pub struct VmConfig {
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// What runs.
    pub boot: Boot,
    /// In-kernel irqchip + PIT (needed by Linux; without it HLT exits).
    pub irqchip: bool,
    /// Normalise CPUID for KVM's instruction emulator (see
    /// [`crate::arch::cpuid::CpuidParams::emulator_cpuid`]).
    pub emulator_cpuid: bool,
    /// Serial console output (default: discarded).
    pub console: Option<ConsoleOut>,
    /// Second serial port (COM2, 0x2f8, IRQ 3) output; absent if `None`.
    pub console2: Option<ConsoleOut>,
    /// Debug handlers, one per vCPU.
    pub handlers: Option<HandlerFactory>,
    /// Every vCPU traps int3 (`KVM_GUESTDBG_USE_SW_BP`) from its first
    /// entry, for the VM-wide software breakpoints ([`Vm::sw_breakpoints`]);
    /// int3s that are not ours are reinjected into the guest.
    pub sw_breakpoints: bool,
    /// The traps' encoding: `int3` (vCPUs then run with USE_SW_BP) or the
    /// 2-byte port write that every KVM hands to user space.
    pub sw_trap: crate::vstate::swbp::TrapKind,
    /// A raw disk image the guest sees as a virtio block device (PCI
    /// 00:01.0); opened read-only, the guest's writes kept in memory.
    pub disk: Option<PathBuf>,
}

impl VmConfig {
    /// A Linux guest with defaults (irqchip on).
    pub fn linux(kernel: PathBuf, initrd: Option<PathBuf>, cmdline: String) -> Self {
        VmConfig {
            vcpus: 1,
            memory_mib: 512,
            boot: Boot::Linux {
                kernel,
                initrd,
                cmdline,
            },
            irqchip: true,
            emulator_cpuid: false,
            console: None,
            console2: None,
            handlers: None,
            sw_breakpoints: false,
            sw_trap: crate::vstate::swbp::TrapKind::Int3,
            disk: None,
        }
    }

    /// A synthetic guest (no irqchip: HLT exits to the monitor).
    pub fn raw(code: Vec<u8>) -> Self {
        VmConfig {
            vcpus: 1,
            memory_mib: 16,
            boot: Boot::Raw { code },
            irqchip: false,
            emulator_cpuid: false,
            console: None,
            console2: None,
            handlers: None,
            sw_breakpoints: false,
            sw_trap: crate::vstate::swbp::TrapKind::Int3,
            disk: None,
        }
    }
}

/// Stack pointer of vCPU `i` in a synthetic guest.
pub fn raw_stack(i: u32) -> u64 {
    0x80000 - u64::from(i) * 0x1000
}

fn read_magic(path: &Path) -> Result<(File, [u8; 0x206]), BuildError> {
    let mut f = File::open(path).map_err(|e| BuildError::Io(path.into(), e))?;
    let mut b = [0u8; 0x206];
    let mut n = 0;
    while n < b.len() {
        match f.read(&mut b[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(BuildError::Io(path.into(), e)),
        }
    }
    if n < 4 {
        return Err(BuildError::NotAKernel(path.into()));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| BuildError::Io(path.into(), e))?;
    Ok((f, b))
}

/// Loads kernel, command line and initramfs; returns (entry, zero page).
fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<u64, BuildError> {
    let (mut f, magic) = read_magic(kernel)?;
    let himem = Some(GuestAddress(HIMEM_START));
    let (res, entry) = if magic[..4] == *b"\x7fELF" {
        let r = loader::Elf::load(mem, None, &mut f, himem)
            .map_err(|e| BuildError::Load(kernel.into(), e))?;
        let entry = r.kernel_load.0;
        (r, entry)
    } else if magic[0x202..0x206] == *b"HdrS" {
        let r = loader::BzImage::load(mem, None, &mut f, himem)
            .map_err(|e| BuildError::Load(kernel.into(), e))?;
        let entry = r.kernel_load.0 + 0x200;
        (r, entry)
    } else {
        return Err(BuildError::NotAKernel(kernel.into()));
    };
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BuildError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    let mem_size = memory::size(mem);
    let initrd_at = match initrd {
        None => None,
        Some(p) => {
            let data = std::fs::read(p).map_err(|e| BuildError::Io(p.into(), e))?;
            let max = res
                .setup_header
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|&m| m != 0)
                .unwrap_or(0x7fff_ffff);
            let kernel_end = res.kernel_load.0 + res.kernel_end;
            let at = boot_params::initrd_address(mem_size, data.len() as u64, max, kernel_end)
                .ok_or_else(|| BuildError::InitrdTooBig(p.into(), data.len() as u64))?;
            mem.write_slice(&data, GuestAddress(at))
                .map_err(|_| BuildError::InitrdTooBig(p.into(), data.len() as u64))?;
            Some((at, data.len() as u64))
        }
    };
    let bp = boot_params::build(
        res.setup_header,
        cmdline.len() + 1,
        initrd_at,
        &boot_params::e820_map(mem_size),
    )?;
    mem.write_obj(bp, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BuildError::Regs(regs::RegsError::Memory("boot_params")))?;
    Ok(entry)
}

/// A built VM: vCPUs configured, threads not yet started.
pub struct Vm {
    pub(crate) _kvm: Kvm,
    pub(crate) _vm: Arc<VmFd>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) serial: Arc<Mutex<SerialConsole>>,
    pub(crate) bus: Arc<PioBus>,
    pub(crate) fds: Vec<VcpuFd>,
    pub(crate) shared: Vec<Arc<Shared>>,
    pub(crate) exit: Arc<ExitState>,
    pub(crate) handlers: Option<HandlerFactory>,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
    /// Memory slots and the next free slot id.
    pub(crate) slots: Mutex<(Vec<memory::Slot>, u32)>,
    /// Guest-physical ranges watched by page protection.
    pub(crate) watches: Arc<std::sync::RwLock<Vec<(u64, u64)>>>,
    /// VM-wide software breakpoints.
    pub(crate) sw: Arc<SwBreakpoints>,
}

/// Builds a VM from `cfg` (nothing runs until [`Vm::start`]).
pub fn build(cfg: VmConfig) -> Result<Vm, BuildError> {
    if cfg.vcpus == 0 || cfg.vcpus > 254 {
        return Err(BuildError::VcpuCount(cfg.vcpus));
    }
    let kvm = vm::open_kvm()?;
    let mem = memory::create(u64::from(cfg.memory_mib))?;
    let vmfd = Arc::new(vm::create_vm(&kvm, &mem, cfg.irqchip)?);
    regs::write_boot_tables(&mem)?;
    let (entry, linux) = match &cfg.boot {
        Boot::Linux {
            kernel,
            initrd,
            cmdline,
        } => (load_linux(&mem, kernel, initrd.as_deref(), cmdline)?, true),
        Boot::Raw { code } => {
            mem.write_slice(code, GuestAddress(RAW_CODE_START))
                .map_err(|_| BuildError::CodeTooBig)?;
            (RAW_CODE_START, false)
        }
    };
    if cfg.irqchip {
        mptable::setup(&mem, cfg.vcpus)?;
    }
    let vcfg = VcpuConfig {
        count: cfg.vcpus,
        irqchip: cfg.irqchip,
        emulator_cpuid: cfg.emulator_cpuid,
        aps_runnable: !linux,
    };
    let mut fds = Vec::new();
    for i in 0..cfg.vcpus {
        let r = if linux {
            regs::boot_regs(entry, BOOT_STACK_POINTER, ZERO_PAGE_START, 0)
        } else {
            regs::boot_regs(entry, raw_stack(i), 0, u64::from(i))
        };
        fds.push(vcpu::create(&kvm, &vmfd, i, &vcfg, &r)?);
    }
    let out = cfg.console.unwrap_or_else(|| Box::new(std::io::sink()));
    let (console, irq_evt) = SerialConsole::new(out)?;
    if cfg.irqchip {
        vmfd.register_irqfd(&irq_evt, SERIAL_IRQ)
            .map_err(BuildError::Irqfd)?;
    }
    let serial = Arc::new(Mutex::new(console));
    let serial2 = match cfg.console2 {
        None => None,
        Some(out) => {
            let (c2, evt2) = SerialConsole::new(out)?;
            if cfg.irqchip {
                vmfd.register_irqfd(&evt2, SERIAL2_IRQ)
                    .map_err(BuildError::Irqfd)?;
            }
            Some(Arc::new(Mutex::new(c2)))
        }
    };
    let mut bus = PioBus::new(serial.clone(), serial2);
    if let Some(image) = &cfg.disk {
        if !cfg.irqchip {
            return Err(BuildError::DiskWithoutIrqchip);
        }
        let blk = VirtioBlockPci::new(image, mem.clone(), VIRTIO_BLK_BAR as u32)?;
        bus = bus.with_pci(Arc::new(PciBus::new(
            vec![Box::new(blk)],
            Some(vmfd.clone()),
        )));
    }
    let bus = Arc::new(bus);
    let shared: Vec<_> = (0..cfg.vcpus).map(Shared::new).collect();
    let exit = ExitState::new(cfg.vcpus as usize);
    let _ = exit.vcpus.set(shared.clone());
    let slots = memory::initial_slots(&mem);
    let next = slots.len() as u32;
    // KVM_CAP_SET_GUEST_DEBUG2: the KVM_GUESTDBG_* flags this KVM accepts.
    let dbg_flags = kvm.check_extension_raw(KVM_CAP_SET_GUEST_DEBUG2) as u32;
    let block_irq = dbg_flags & kvm_bindings::KVM_GUESTDBG_BLOCKIRQ != 0;
    let sw = Arc::new(SwBreakpoints::with_trap(
        cfg.sw_breakpoints,
        block_irq,
        cfg.sw_trap,
    ));
    Ok(Vm {
        sw,
        slots: Mutex::new((slots, next)),
        watches: Arc::default(),
        _kvm: kvm,
        _vm: vmfd,
        mem,
        serial,
        bus,
        fds,
        shared,
        exit,
        handlers: cfg.handlers,
        threads: Vec::new(),
    })
}

impl Vm {
    /// Spawns one thread per vCPU.
    pub fn start(&mut self) -> Result<(), BuildError> {
        install_kick_handler().map_err(|e| BuildError::Thread(e.to_string()))?;
        for (i, fd) in std::mem::take(&mut self.fds).into_iter().enumerate() {
            let runner = Runner {
                fd,
                mem: self.mem.clone(),
                bus: self.bus.clone(),
                shared: self.shared[i].clone(),
                exit: self.exit.clone(),
                handler: self.handlers.as_mut().map(|f| f(i as u32)),
                dbg: DebugState::with_vm_sw(
                    self.sw.enabled() && self.sw.trap() == crate::vstate::swbp::TrapKind::Int3,
                ),
                cache: RegCache::default(),
                rf: false,
                rf_ignored: false,
                watches: self.watches.clone(),
                pending_watch: None,
                sw: self.sw.clone(),
                swbp: SwLocal::default(),
            };
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || runner.run())
                .map_err(|e| BuildError::Thread(e.to_string()))?;
            self.threads.push(t);
        }
        Ok(())
    }

    /// The not-yet-started vCPU fds (benchmarks drive KVM_RUN directly).
    pub(crate) fn take_fds(&mut self) -> Vec<VcpuFd> {
        std::mem::take(&mut self.fds)
    }
}
