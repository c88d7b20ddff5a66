//! `/bin/compat32`: a tiny static i386 ELF program (no i686 toolchain is
//! needed: its bytes are written here), so that traces can be held against
//! the 32-bit (compat) syscall path of the guest kernel. Through `int $0x80`
//! it makes [`GETPIDS`] `getpid` calls, one `open("/compat32-missing",
//! O_RDONLY)` (which fails with ENOENT), writes one `COUNTS {json}` line to
//! stdout like the other workloads, and exits with status 0.

/// `getpid` calls the program makes.
pub const GETPIDS: u32 = 100;
/// The path it opens (absent from the image).
pub const MISSING: &str = "/compat32-missing";
/// Its output line.
pub const COUNTS: &str = "COUNTS {\"getpid\":100,\"open\":1,\"write\":1}\n";

/// Load address of the single segment (the i386 default).
const BASE: u32 = 0x0804_8000;
const EHDR: usize = 52;
const PHDR: usize = 32;

/// The code, for strings at `path` and `msg` (virtual addresses).
fn code(path: u32, msg: u32, msg_len: u32) -> Vec<u8> {
    let mut c = Vec::new();
    let mut op = |bytes: &[u8]| c.extend_from_slice(bytes);
    op(&[0xbf]); // mov $GETPIDS, %edi      (loop counter; int 0x80 keeps it)
    op(&GETPIDS.to_le_bytes());
    // loop:
    op(&[0xb8, 20, 0, 0, 0]); //    mov $20, %eax          (__NR_getpid, i386)
    op(&[0xcd, 0x80]); //           int $0x80
    op(&[0x4f]); //                 dec %edi
    op(&[0x75, 0xf6]); //           jnz loop               (-10 bytes)
    op(&[0xb8, 5, 0, 0, 0]); //     mov $5, %eax           (__NR_open)
    op(&[0xbb]); //                 mov $path, %ebx
    op(&path.to_le_bytes());
    op(&[0x31, 0xc9]); //           xor %ecx, %ecx         (O_RDONLY)
    op(&[0x31, 0xd2]); //           xor %edx, %edx         (mode 0)
    op(&[0xcd, 0x80]); //           int $0x80
    op(&[0xb8, 4, 0, 0, 0]); //     mov $4, %eax           (__NR_write)
    op(&[0xbb, 1, 0, 0, 0]); //     mov $1, %ebx           (stdout)
    op(&[0xb9]); //                 mov $msg, %ecx
    op(&msg.to_le_bytes());
    op(&[0xba]); //                 mov $msg_len, %edx
    op(&msg_len.to_le_bytes());
    op(&[0xcd, 0x80]); //           int $0x80
    op(&[0xb8, 1, 0, 0, 0]); //     mov $1, %eax           (__NR_exit)
    op(&[0x31, 0xdb]); //           xor %ebx, %ebx         (status 0)
    op(&[0xcd, 0x80]); //           int $0x80
    c
}

/// The whole ELF32 file: header, one PT_LOAD program header (the file,
/// read + execute, at [`BASE`]), code, then the two strings.
pub fn elf() -> Vec<u8> {
    let code_len = code(0, 0, 0).len();
    let entry = BASE + (EHDR + PHDR) as u32;
    let path = entry + code_len as u32;
    let msg = path + MISSING.len() as u32 + 1;
    let total = EHDR + PHDR + code_len + MISSING.len() + 1 + COUNTS.len();
    let mut f = Vec::with_capacity(total);
    // ELF header
    f.extend_from_slice(b"\x7fELF"); // magic
    f.extend_from_slice(&[1, 1, 1, 0]); // ELFCLASS32, little-endian, EV_CURRENT, SYSV ABI
    f.extend_from_slice(&[0; 8]); // padding
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&3u16.to_le_bytes()); // e_machine: EM_386
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&entry.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u32).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    f.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&40u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // program header: PT_LOAD of the whole file
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&0u32.to_le_bytes()); // p_offset
    f.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(total as u32).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(total as u32).to_le_bytes()); // p_memsz
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    f.extend_from_slice(&0x1000u32.to_le_bytes()); // p_align
    f.extend_from_slice(&code(path, msg, COUNTS.len() as u32));
    f.extend_from_slice(MISSING.as_bytes());
    f.push(0);
    f.extend_from_slice(COUNTS.as_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_consistent() {
        let f = elf();
        assert_eq!(&f[..4], b"\x7fELF");
        let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
        // the entry point is the first code byte, right after the headers
        assert_eq!(u32_at(24), BASE + 84);
        assert_eq!(f[84], 0xbf);
        assert_eq!(u32_at(85), GETPIDS);
        // the loop's jnz lands on `mov $20, %eax`
        let jnz = f.iter().skip(84).position(|&b| b == 0x75).unwrap() + 84;
        let target = (jnz as isize + 2 + isize::from(f[jnz + 1] as i8)) as usize;
        assert_eq!(&f[target..target + 2], &[0xb8, 20]);
        // filesz covers the strings; the path operand points at the path
        assert_eq!(u32_at(52 + 16) as usize, f.len());
        let mov_ebx = f.windows(1).position(|w| w == [0xbb]).unwrap();
        let path = (u32_at(mov_ebx + 1) - BASE) as usize;
        assert_eq!(&f[path..path + MISSING.len() + 1], b"/compat32-missing\0");
        assert!(f.ends_with(COUNTS.as_bytes()));
        assert!(
            f.len() < 4096,
            "one page: every string is mapped with the code"
        );
    }
}
