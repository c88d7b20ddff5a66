//! `/bin/compat32`: a tiny static i386 ELF program (no i686 toolchain is
//! needed: its bytes are written here), so that traces can be held against
//! the 32-bit (compat) syscall paths of the guest kernel. It makes
//! [`GETPIDS`] `getpid` calls, half through `int $0x80` and half through
//! the 32-bit vDSO's `__kernel_vsyscall` (found in its auxiliary vector as
//! AT_SYSINFO: `sysenter` or `syscall`, whichever the kernel chose for the
//! CPU), one `open("/compat32-missing", O_RDONLY)` (which fails with
//! ENOENT), writes one `COUNTS {json}` line to stdout like the other
//! workloads, and exits with status 0 (2 if it has no AT_SYSINFO).

/// `getpid` calls the program makes (half by each path).
pub const GETPIDS: u32 = 100;
/// The path it opens (absent from the image).
pub const MISSING: &str = "/compat32-missing";
/// Its output line.
pub const COUNTS: &str =
    "COUNTS {\"getpid\":100,\"int80\":50,\"vsyscall\":50,\"open\":1,\"write\":1}\n";

/// Load address of the single segment (the i386 default).
const BASE: u32 = 0x0804_8000;
const EHDR: usize = 52;
const PHDR: usize = 32;
/// `AT_SYSINFO`: the auxiliary vector entry holding `__kernel_vsyscall`.
const AT_SYSINFO: u8 = 32;

/// A `jcc rel8` (opcode `op`) from the end of `c` back or forward to `to`.
fn jcc(c: &mut Vec<u8>, op: u8, to: usize) {
    let rel = to as isize - (c.len() as isize + 2);
    c.extend_from_slice(&[op, rel as i8 as u8]);
}

/// The code, for strings at `path` and `msg` (virtual addresses).
fn code(path: u32, msg: u32, msg_len: u32) -> Vec<u8> {
    let half = (GETPIDS / 2).to_le_bytes();
    let mut c: Vec<u8> = Vec::new();
    // the auxiliary vector: past argc, argv[], NULL, envp[], NULL
    c.extend_from_slice(&[0x8b, 0x04, 0x24]); //     mov (%esp), %eax        (argc)
    c.extend_from_slice(&[0x8d, 0x74, 0x84, 0x08]); // lea 8(%esp,%eax,4), %esi (envp)
    let skip_env = c.len();
    c.push(0xad); //                                  lodsl                   (eax = *esi++)
    c.extend_from_slice(&[0x85, 0xc0]); //            test %eax, %eax
    jcc(&mut c, 0x75, skip_env); //                   jnz skip_env
    let find = c.len();
    c.push(0xad); //                                  lodsl                   (a_type)
    c.extend_from_slice(&[0x89, 0xc2]); //            mov %eax, %edx
    c.push(0xad); //                                  lodsl                   (a_val)
    c.extend_from_slice(&[0x83, 0xfa, AT_SYSINFO]); // cmp $AT_SYSINFO, %edx
    let je_found = c.len();
    c.extend_from_slice(&[0x74, 0]); //               je found                (patched below)
    c.extend_from_slice(&[0x85, 0xd2]); //            test %edx, %edx         (AT_NULL ends it)
    jcc(&mut c, 0x75, find); //                       jnz find
    c.extend_from_slice(&[0xb8, 1, 0, 0, 0]); //      mov $1, %eax            (__NR_exit)
    c.extend_from_slice(&[0xbb, 2, 0, 0, 0]); //      mov $2, %ebx            (status 2)
    c.extend_from_slice(&[0xcd, 0x80]); //            int $0x80
    c[je_found + 1] = (c.len() - (je_found + 2)) as u8;
    // found:
    c.extend_from_slice(&[0x89, 0xc6]); //            mov %eax, %esi          (__kernel_vsyscall)
    c.push(0xbf); //                                  mov $GETPIDS/2, %edi    (counter: kept by the
    c.extend_from_slice(&half); //                                             kernel and the vDSO)
    let loop1 = c.len();
    c.extend_from_slice(&[0xb8, 20, 0, 0, 0]); //     mov $20, %eax           (__NR_getpid, i386)
    c.extend_from_slice(&[0xcd, 0x80]); //            int $0x80
    c.push(0x4f); //                                  dec %edi
    jcc(&mut c, 0x75, loop1); //                      jnz loop1
    c.push(0xbf); //                                  mov $GETPIDS/2, %edi
    c.extend_from_slice(&half);
    let loop2 = c.len();
    c.extend_from_slice(&[0xb8, 20, 0, 0, 0]); //     mov $20, %eax           (__NR_getpid)
    c.extend_from_slice(&[0xff, 0xd6]); //            call *%esi              (sysenter/syscall)
    c.push(0x4f); //                                  dec %edi
    jcc(&mut c, 0x75, loop2); //                      jnz loop2
    c.extend_from_slice(&[0xb8, 5, 0, 0, 0]); //      mov $5, %eax            (__NR_open)
    c.push(0xbb); //                                  mov $path, %ebx
    c.extend_from_slice(&path.to_le_bytes());
    c.extend_from_slice(&[0x31, 0xc9]); //            xor %ecx, %ecx          (O_RDONLY)
    c.extend_from_slice(&[0x31, 0xd2]); //            xor %edx, %edx          (mode 0)
    c.extend_from_slice(&[0xcd, 0x80]); //            int $0x80
    c.extend_from_slice(&[0xb8, 4, 0, 0, 0]); //      mov $4, %eax            (__NR_write)
    c.extend_from_slice(&[0xbb, 1, 0, 0, 0]); //      mov $1, %ebx            (stdout)
    c.push(0xb9); //                                  mov $msg, %ecx
    c.extend_from_slice(&msg.to_le_bytes());
    c.push(0xba); //                                  mov $msg_len, %edx
    c.extend_from_slice(&msg_len.to_le_bytes());
    c.extend_from_slice(&[0xcd, 0x80]); //            int $0x80
    c.extend_from_slice(&[0xb8, 1, 0, 0, 0]); //      mov $1, %eax            (__NR_exit)
    c.extend_from_slice(&[0x31, 0xdb]); //            xor %ebx, %ebx          (status 0)
    c.extend_from_slice(&[0xcd, 0x80]); //            int $0x80
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
        assert_eq!(&f[84..87], &[0x8b, 0x04, 0x24]);
        // each jnz lands on an instruction the comments name
        let code = &f[84..];
        let target = |at: usize| (at as isize + 2 + isize::from(code[at + 1] as i8)) as usize;
        let jnz: Vec<usize> = (0..code.len() - 1)
            .filter(|&i| code[i] == 0x75 && i > 0 && code[i - 1] != 0xb8)
            .collect();
        let landed: Vec<&[u8]> = jnz
            .iter()
            .map(|&j| &code[target(j)..target(j) + 2])
            .collect();
        assert_eq!(
            landed,
            [&[0xad, 0x85][..], &[0xad, 0x89], &[0xb8, 20], &[0xb8, 20]]
        );
        // the je on AT_SYSINFO lands on `mov %eax, %esi`
        let je = code
            .windows(4)
            .position(|w| w[..3] == [0x83, 0xfa, 32])
            .unwrap()
            + 3;
        assert_eq!(&code[target(je)..target(je) + 2], &[0x89, 0xc6]);
        // filesz covers the strings; the path operand points at the path
        assert_eq!(u32_at(52 + 16) as usize, f.len());
        let open = code
            .windows(6)
            .position(|w| w == [0xb8, 5, 0, 0, 0, 0xbb])
            .unwrap();
        let path =
            (u32::from_le_bytes(code[open + 6..open + 10].try_into().unwrap()) - BASE) as usize;
        assert_eq!(&f[path..path + MISSING.len() + 1], b"/compat32-missing\0");
        assert!(f.ends_with(COUNTS.as_bytes()));
        assert!(
            f.len() < 4096,
            "one page: every string is mapped with the code"
        );
    }
}
