//! ELF vmlinux (goblin): sections, the virtual-address view of the image,
//! notes (build-id) and the ELF symbol table when the image still has one.

use goblin::elf::{header, section_header as sh, sym, Elf};

/// Errors of ELF parsing.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("malformed ELF: {0}")]
    Malformed(String),
    #[error("ELF is for machine {0}, not x86-64")]
    NotX86_64(u16),
    #[error("ELF is not 64-bit")]
    Not64Bit,
}

/// One allocated section with file contents.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub vaddr: u64,
    pub offset: usize,
    pub size: usize,
    pub flags: u64,
    pub nobits: bool,
}

/// An ELF symbol-table entry.
#[derive(Debug, Clone)]
pub struct ElfSymbol {
    pub name: String,
    pub addr: u64,
    pub kind: u8,
}

/// Parsed view of an ELF vmlinux.
#[derive(Debug)]
pub struct KernelElf {
    pub sections: Vec<Section>,
    pub symtab: Vec<ElfSymbol>,
    /// Extent of the ELF proper (headers, sections and segments); bytes past
    /// it (the relocation table a bzImage appends) are not part of the ELF.
    pub elf_len: usize,
}

fn nm_letter(s: &sym::Sym, sections: &[sh::SectionHeader]) -> u8 {
    let global = s.st_bind() != sym::STB_LOCAL;
    if s.st_bind() == sym::STB_WEAK {
        return if s.st_type() == sym::STT_OBJECT {
            b'V'
        } else {
            b'W'
        };
    }
    let c = if s.st_shndx == sh::SHN_ABS as usize {
        b'a'
    } else if let Some(h) = sections.get(s.st_shndx) {
        if h.sh_type == sh::SHT_NOBITS {
            b'b'
        } else if h.sh_flags & u64::from(sh::SHF_EXECINSTR) != 0 {
            b't'
        } else if h.sh_flags & u64::from(sh::SHF_WRITE) != 0 {
            b'd'
        } else {
            b'r'
        }
    } else {
        b'?'
    };
    if global {
        c.to_ascii_uppercase()
    } else {
        c
    }
}

impl KernelElf {
    /// Parses an x86-64 ELF image.
    pub fn parse(data: &[u8]) -> Result<KernelElf, ElfError> {
        let elf = Elf::parse(data).map_err(|e| ElfError::Malformed(e.to_string()))?;
        if !elf.is_64 {
            return Err(ElfError::Not64Bit);
        }
        if elf.header.e_machine != header::EM_X86_64 {
            return Err(ElfError::NotX86_64(elf.header.e_machine));
        }
        let mut elf_len = (elf.header.e_shoff as usize)
            .saturating_add(usize::from(elf.header.e_shnum) * usize::from(elf.header.e_shentsize));
        let mut sections = Vec::with_capacity(elf.section_headers.len());
        for h in &elf.section_headers {
            let name = elf.shdr_strtab.get_at(h.sh_name).unwrap_or("").to_string();
            let nobits = h.sh_type == sh::SHT_NOBITS;
            if !nobits {
                let end = h.sh_offset.saturating_add(h.sh_size);
                if end > data.len() as u64 && h.sh_type != sh::SHT_NULL {
                    return Err(ElfError::Malformed(format!(
                        "section {name} runs past the end of the file"
                    )));
                }
                elf_len = elf_len.max(end as usize);
            }
            sections.push(Section {
                name,
                vaddr: h.sh_addr,
                offset: h.sh_offset as usize,
                size: h.sh_size as usize,
                flags: h.sh_flags,
                nobits,
            });
        }
        for p in &elf.program_headers {
            let end = p.p_offset.saturating_add(p.p_filesz);
            if end <= data.len() as u64 {
                elf_len = elf_len.max(end as usize);
            }
        }
        let symtab = elf
            .syms
            .iter()
            .filter(|s| {
                s.st_name != 0
                    && matches!(
                        s.st_type(),
                        sym::STT_FUNC | sym::STT_OBJECT | sym::STT_NOTYPE
                    )
            })
            .filter_map(|s| {
                let name = elf.strtab.get_at(s.st_name)?;
                Some(ElfSymbol {
                    name: name.to_string(),
                    addr: s.st_value,
                    kind: nm_letter(&s, &elf.section_headers),
                })
            })
            .collect();
        Ok(KernelElf {
            sections,
            symtab,
            elf_len: elf_len.min(data.len()),
        })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Contents of a section with file data.
    pub fn section_data<'a>(&self, data: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let s = self.section(name).filter(|s| !s.nobits)?;
        data.get(s.offset..s.offset.checked_add(s.size)?)
    }

    /// The virtual-address view of the image's allocated sections.
    pub fn address_space(&self) -> AddressSpace {
        let regions = self
            .sections
            .iter()
            .filter(|s| !s.nobits && s.size > 0 && s.flags & u64::from(sh::SHF_ALLOC) != 0)
            .map(|s| Region {
                vaddr: s.vaddr,
                offset: s.offset,
                len: s.size,
            })
            .collect();
        AddressSpace { regions }
    }
}

/// A mapping of virtual addresses onto the bytes of the image file.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub vaddr: u64,
    pub offset: usize,
    pub len: usize,
}

/// Reads the image by kernel virtual address (link-time addresses).
#[derive(Debug, Clone, Default)]
pub struct AddressSpace {
    pub regions: Vec<Region>,
}

impl AddressSpace {
    /// A raw image: the file is mapped linearly at `base`.
    pub fn linear(base: u64, len: usize) -> AddressSpace {
        AddressSpace {
            regions: vec![Region {
                vaddr: base,
                offset: 0,
                len,
            }],
        }
    }

    /// `len` bytes at `vaddr`, if they lie within one region.
    pub fn read<'a>(&self, data: &'a [u8], vaddr: u64, len: usize) -> Option<&'a [u8]> {
        self.regions.iter().find_map(|r| {
            let rel = vaddr.checked_sub(r.vaddr)?;
            if rel.checked_add(len as u64)? > r.len as u64 {
                return None;
            }
            let start = r.offset.checked_add(rel as usize)?;
            data.get(start..start.checked_add(len)?)
        })
    }

    pub fn u64(&self, data: &[u8], vaddr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.read(data, vaddr, 8)?.try_into().ok()?,
        ))
    }

    pub fn u32(&self, data: &[u8], vaddr: u64) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.read(data, vaddr, 4)?.try_into().ok()?,
        ))
    }

    /// A NUL-terminated string of at most `max` bytes.
    pub fn cstr(&self, data: &[u8], vaddr: u64, max: usize) -> Option<String> {
        let r = self
            .regions
            .iter()
            .find(|r| vaddr >= r.vaddr && vaddr - r.vaddr < r.len as u64)?;
        let rel = (vaddr - r.vaddr) as usize;
        let avail = (r.len - rel).min(max);
        // Checked: a SHT_NULL section is not bounds-checked by `parse`, so
        // its region's offset may be anything.
        let start = r.offset.checked_add(rel)?;
        let bytes = data.get(start..start.checked_add(avail)?)?;
        let n = bytes.iter().position(|&b| b == 0)?;
        String::from_utf8(bytes[..n].to_vec()).ok()
    }
}

/// Finds the GNU build-id in a run of ELF notes.
pub fn build_id_from_notes(notes: &[u8]) -> Option<Vec<u8>> {
    let mut p = 0usize;
    let rd = |o: usize| -> Option<usize> {
        Some(u32::from_le_bytes(notes.get(o..o + 4)?.try_into().ok()?) as usize)
    };
    let align4 = |x: usize| x.checked_add(3).map(|v| v & !3);
    while p + 12 <= notes.len() {
        let (namesz, descsz, ntype) = (rd(p)?, rd(p + 4)?, rd(p + 8)?);
        let name_at = p + 12;
        let desc_at = name_at.checked_add(align4(namesz)?)?;
        let next = desc_at.checked_add(align4(descsz)?)?;
        if next > notes.len() {
            return None;
        }
        if ntype == 3 && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
            return Some(notes[desc_at..desc_at + descsz].to_vec());
        }
        p = next;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn random_and_truncated_elves_are_errors() {
        assert!(KernelElf::parse(&[]).is_err());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 64 + (seed >> 40) as usize % 4096;
            let mut d: Vec<u8> = (0..len)
                .map(|i| (seed.rotate_left(i as u32 % 64) >> 7) as u8 ^ i as u8)
                .collect();
            d[..4].copy_from_slice(b"\x7fELF");
            d[4] = 2;
            d[5] = 1;
            if round % 2 == 0 {
                d[18] = 62;
                d[19] = 0;
            }
            let _ = KernelElf::parse(&d);
        }
    }

    /// A hand-built ELF64 x86-64 with .text, .data, .symtab, .strtab.
    pub fn tiny_elf(machine: u16) -> Vec<u8> {
        let text_addr = 0xffff_ffff_8100_0000u64;
        let shstr = b"\0.text\0.data\0.symtab\0.strtab\0.shstrtab\0";
        let strtab = b"\0_text\0local_fn\0jiffies\0weak_fn\0";
        let sym = |name: u32, info: u8, shndx: u16, value: u64| {
            let mut v = name.to_le_bytes().to_vec();
            v.extend_from_slice(&[info, 0]);
            v.extend_from_slice(&shndx.to_le_bytes());
            v.extend_from_slice(&value.to_le_bytes());
            v.extend_from_slice(&0u64.to_le_bytes());
            v
        };
        let mut symtab = vec![0u8; 24];
        symtab.extend(sym(1, 0x12, 1, text_addr)); // GLOBAL FUNC
        symtab.extend(sym(7, 0x02, 1, text_addr + 0x40)); // LOCAL FUNC
        symtab.extend(sym(16, 0x11, 2, text_addr + 0x1000)); // GLOBAL OBJECT in .data
        symtab.extend(sym(24, 0x22, 1, text_addr + 0x80)); // WEAK FUNC
        let mut f = vec![0u8; 64];
        let text_off = f.len();
        f.extend_from_slice(&[0x90; 0x100]);
        let data_off = f.len();
        f.extend_from_slice(&[0u8; 0x10]);
        let sym_off = f.len();
        f.extend_from_slice(&symtab);
        let str_off = f.len();
        f.extend_from_slice(strtab);
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        while f.len() % 8 != 0 {
            f.push(0);
        }
        let shoff = f.len();
        let sh = |name: u32,
                  ty: u32,
                  flags: u64,
                  addr: u64,
                  off: usize,
                  size: usize,
                  link: u32,
                  info: u32,
                  ent: u64| {
            let mut v = name.to_le_bytes().to_vec();
            v.extend_from_slice(&ty.to_le_bytes());
            v.extend_from_slice(&flags.to_le_bytes());
            v.extend_from_slice(&addr.to_le_bytes());
            v.extend_from_slice(&(off as u64).to_le_bytes());
            v.extend_from_slice(&(size as u64).to_le_bytes());
            v.extend_from_slice(&link.to_le_bytes());
            v.extend_from_slice(&info.to_le_bytes());
            v.extend_from_slice(&8u64.to_le_bytes());
            v.extend_from_slice(&ent.to_le_bytes());
            v
        };
        f.extend(vec![0u8; 64]);
        f.extend(sh(1, 1, 6, text_addr, text_off, 0x100, 0, 0, 0));
        f.extend(sh(7, 1, 3, text_addr + 0x1000, data_off, 0x10, 0, 0, 0));
        f.extend(sh(13, 2, 0, 0, sym_off, symtab.len(), 4, 2, 24));
        f.extend(sh(21, 3, 0, 0, str_off, strtab.len(), 0, 0, 0));
        f.extend(sh(29, 3, 0, 0, shstr_off, shstr.len(), 0, 0, 0));
        f[..4].copy_from_slice(b"\x7fELF");
        f[4..7].copy_from_slice(&[2, 1, 1]);
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[58..60].copy_from_slice(&64u16.to_le_bytes());
        f[60..62].copy_from_slice(&6u16.to_le_bytes());
        f[62..64].copy_from_slice(&5u16.to_le_bytes());
        f
    }

    #[test]
    fn symtab_sections_and_reads() {
        let d = tiny_elf(62);
        let e = KernelElf::parse(&d).unwrap();
        let got: Vec<_> = e
            .symtab
            .iter()
            .map(|s| (s.name.as_str(), s.kind as char))
            .collect();
        assert_eq!(
            got,
            [
                ("_text", 'T'),
                ("local_fn", 't'),
                ("jiffies", 'D'),
                ("weak_fn", 'W')
            ]
        );
        assert_eq!(e.elf_len, d.len());
        let space = e.address_space();
        assert_eq!(
            space.read(&d, 0xffff_ffff_8100_00ff, 1),
            Some(&[0x90u8][..])
        );
        assert_eq!(space.read(&d, 0xffff_ffff_8100_00ff, 2), None);
        assert_eq!(space.u64(&d, 0xffff_ffff_8100_1000), Some(0));
        assert!(matches!(
            KernelElf::parse(&tiny_elf(183)),
            Err(ElfError::NotX86_64(183))
        ));
        for cut in 0..d.len() {
            let _ = KernelElf::parse(&d[..cut]);
        }
    }

    /// An input of the `elf` fuzz target: an overflow panic under debug
    /// assertions (cargo-fuzz's default), a read from the wrong offset
    /// without them.
    #[test]
    fn cstr_through_a_region_with_a_wild_offset_is_none() {
        let space = AddressSpace {
            regions: vec![Region {
                vaddr: 0x1000,
                offset: usize::MAX - 8,
                len: 0x100,
            }],
        };
        let data = [0u8; 128];
        assert_eq!(space.cstr(&data, 0x1010, 64), None);
        assert_eq!(space.read(&data, 0x1010, 4), None);
    }

    #[test]
    fn build_id_note() {
        let mut n = Vec::new();
        for (name, ty, desc) in [
            (&b"Xen\0"[..], 6u32, &b"linux\0"[..]),
            (b"GNU\0", 3, b"\xeb\x4f\xbc\xd0"),
        ] {
            n.extend_from_slice(&(name.len() as u32).to_le_bytes());
            n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            n.extend_from_slice(&ty.to_le_bytes());
            n.extend_from_slice(name);
            n.extend_from_slice(desc);
            while n.len() % 4 != 0 {
                n.push(0);
            }
        }
        assert_eq!(build_id_from_notes(&n), Some(vec![0xeb, 0x4f, 0xbc, 0xd0]));
        assert_eq!(build_id_from_notes(&n[..n.len() - 3]), None);
    }
}
