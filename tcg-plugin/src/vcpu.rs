//! The QEMU side of a trap: a [`VcpuContext`] over the plugin API, with
//! register handles looked up once per vCPU and one reusable byte array.

use introspect::{MemError, Reg, VcpuContext};
use qemu_plugin::sys::{self, qemu_plugin_register, GByteArray};

unsafe extern "C" {
    // Provided by glib inside the QEMU process that loads the plugin.
    fn g_byte_array_new() -> *mut GByteArray;
    fn g_byte_array_set_size(array: *mut GByteArray, len: u32) -> *mut GByteArray;
    fn g_array_free(array: *mut sys::GArray, free_segment: bool) -> *mut u8;
    fn g_byte_array_free(array: *mut GByteArray, free_segment: bool) -> *mut u8;
}

/// Register handles and a scratch byte array of one vCPU.
pub struct QemuVcpu {
    handles: [*mut qemu_plugin_register; Reg::ALL.len()],
    buf: *mut GByteArray,
    index: u32,
}

// SAFETY: the handles are opaque register numbers valid for every vCPU of
// the machine; the byte array is only used by the vCPU thread owning this
// value (see `slots`).
unsafe impl Send for QemuVcpu {}

impl QemuVcpu {
    /// Looks the register handles up. Must run in a vCPU context
    /// (`on_vcpu_init`). Returns the names it found for the report.
    pub fn new(index: u32) -> (Self, Vec<String>) {
        let mut handles = [std::ptr::null_mut(); Reg::ALL.len()];
        let mut names = Vec::new();
        // SAFETY: called on a vCPU thread as the API requires; it returns a
        // GArray of descriptors that we own and free below.
        let array = unsafe { sys::qemu_plugin_get_registers() };
        if !array.is_null() {
            // SAFETY: the GArray holds `len` descriptors in `data`.
            let descs = unsafe {
                std::slice::from_raw_parts(
                    (*array).data as *const sys::qemu_plugin_reg_descriptor,
                    (*array).len as usize,
                )
            };
            for d in descs {
                if d.name.is_null() {
                    continue;
                }
                // SAFETY: the name is a NUL-terminated string owned by QEMU.
                let name = unsafe { std::ffi::CStr::from_ptr(d.name) }.to_string_lossy();
                for (i, r) in Reg::ALL.iter().enumerate() {
                    if r.gdb_name() == name {
                        handles[i] = d.handle;
                    }
                }
                names.push(name.into_owned());
            }
            // SAFETY: the array came from qemu_plugin_get_registers; the
            // descriptors' strings stay owned by QEMU.
            unsafe { g_array_free(array, true) };
        }
        // SAFETY: plain glib allocation, freed never (lives as long as QEMU).
        let buf = unsafe { g_byte_array_new() };
        (
            Self {
                handles,
                buf,
                index,
            },
            names,
        )
    }
}

impl VcpuContext for QemuVcpu {
    fn read_reg(&self, reg: Reg) -> u64 {
        let h = self.handles[reg as usize];
        if h.is_null() || self.buf.is_null() {
            return 0;
        }
        // SAFETY: `buf` is our GByteArray; resetting its length keeps its
        // allocation; the callback was registered with QEMU_PLUGIN_CB_R_REGS.
        let n = unsafe {
            g_byte_array_set_size(self.buf, 0);
            sys::qemu_plugin_read_register(h, self.buf)
        };
        if n <= 0 {
            return 0;
        }
        let mut v = [0u8; 8];
        let n = (n as usize).min(8);
        // SAFETY: QEMU appended `n` bytes to the array.
        let data = unsafe { std::slice::from_raw_parts((*self.buf).data, n) };
        v[..n].copy_from_slice(data);
        u64::from_le_bytes(v)
    }

    fn read_virt(&self, va: u64, out: &mut [u8]) -> Result<(), MemError> {
        if out.is_empty() {
            return Ok(());
        }
        if self.buf.is_null() {
            return Err(MemError::Unsupported);
        }
        // SAFETY: QEMU resizes our real GByteArray to `len` and fills it.
        let ok = unsafe { sys::qemu_plugin_read_memory_vaddr(va, self.buf, out.len()) };
        // SAFETY: reading back the array's fields.
        let (data, len) = unsafe { ((*self.buf).data, (*self.buf).len as usize) };
        if !ok || len < out.len() || data.is_null() {
            return Err(MemError::Unmapped(va));
        }
        // SAFETY: the array holds at least `out.len()` bytes.
        out.copy_from_slice(unsafe { std::slice::from_raw_parts(data, out.len()) });
        Ok(())
    }

    fn read_phys(&self, _pa: u64, _buf: &mut [u8]) -> Result<(), MemError> {
        // Plugin API v4 has no physical read; v5 adds qemu_plugin_read_memory_hwaddr.
        Err(MemError::Unsupported)
    }

    fn vcpu_index(&self) -> u32 {
        self.index
    }
}

/// A context for translation time: memory reads only (registers are not
/// readable outside callbacks registered with QEMU_PLUGIN_CB_R_REGS).
pub struct MemOnly;

impl VcpuContext for MemOnly {
    fn read_reg(&self, _reg: Reg) -> u64 {
        0
    }
    fn read_virt(&self, va: u64, out: &mut [u8]) -> Result<(), MemError> {
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: a fresh glib byte array, freed below.
        let buf = unsafe { g_byte_array_new() };
        if buf.is_null() {
            return Err(MemError::Unsupported);
        }
        // SAFETY: QEMU resizes `buf` and fills it; we read `len` bytes back.
        let r = unsafe {
            let ok = sys::qemu_plugin_read_memory_vaddr(va, buf, out.len());
            let len = (*buf).len as usize;
            if ok && len >= out.len() && !(*buf).data.is_null() {
                out.copy_from_slice(std::slice::from_raw_parts((*buf).data, out.len()));
                Ok(())
            } else {
                Err(MemError::Unmapped(va))
            }
        };
        // SAFETY: frees the array and its data, which we no longer use.
        unsafe { g_byte_array_free(buf, true) };
        r
    }
    fn read_phys(&self, _pa: u64, _buf: &mut [u8]) -> Result<(), MemError> {
        Err(MemError::Unsupported)
    }
    fn vcpu_index(&self) -> u32 {
        0
    }
}
