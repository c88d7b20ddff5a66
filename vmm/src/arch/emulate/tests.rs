use super::*;

/// A guest of one 4 KiB page of memory at `base`, and segment bases.
struct Page {
    base: u64,
    bytes: std::cell::RefCell<Vec<u8>>,
    gs: u64,
}

impl Page {
    fn new(base: u64, gs: u64) -> Self {
        let bytes = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        Page {
            base,
            bytes: std::cell::RefCell::new(bytes),
            gs,
        }
    }

    fn at(&self, gva: u64, len: usize) -> Vec<u8> {
        let o = (gva - self.base) as usize;
        self.bytes.borrow()[o..o + len].to_vec()
    }
}

impl GuestView for Page {
    fn read(&self, gva: u64, buf: &mut [u8]) -> bool {
        let Some(o) = gva.checked_sub(self.base) else {
            return false;
        };
        let o = o as usize;
        match self.bytes.borrow().get(o..o + buf.len()) {
            Some(b) => {
                buf.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
    fn fs_base(&self) -> Option<u64> {
        Some(0)
    }
    fn gs_base(&self) -> Option<u64> {
        Some(self.gs)
    }
}

const PAGE: u64 = 0xffff_8880_0100_0000;
const RIP: u64 = 0xffff_ffff_8100_2000;

fn regs() -> kvm_regs {
    kvm_regs {
        rax: 0x1111_2222_3333_4444,
        rbx: PAGE + 0x100,
        rcx: 0x8000_0000_0000_0001,
        rdx: 0xffff_ffff_ffff_fff0,
        rsi: 0xe8,
        rdi: PAGE + 0x800,
        rbp: PAGE + 0x200,
        rsp: PAGE + 0xf00,
        r9: 0x99,
        r13: PAGE + 0x300,
        r14: 0x5,
        rip: RIP,
        rflags: 0x246,
        ..Default::default()
    }
}

fn run(bytes: &[u8], r: &kvm_regs, page: &Page) -> Effect {
    emulate(bytes, r, page).unwrap_or_else(|| panic!("{bytes:02x?} not emulated"))
}

fn u64_at(page: &Page, gva: u64) -> u64 {
    u64::from_le_bytes(page.at(gva, 8).try_into().unwrap())
}

#[test]
fn loads_through_a_pointer_as_the_kernel_sites_do() {
    let page = Page::new(PAGE, 0);
    let r = regs();
    // mov 0x68(%rbx),%eax (try_to_wake_up): 32-bit load clears the upper half.
    let e = run(&[0x8b, 0x43, 0x68], &r, &page);
    let want = u32::from_le_bytes(page.at(PAGE + 0x168, 4).try_into().unwrap());
    assert_eq!(e.regs.rax, u64::from(want));
    assert_eq!(e.regs.rip, RIP + 3);
    assert_eq!((e.store, e.loaded, e.regs.rflags), (None, true, r.rflags));
    // mov 0x290(%rbp),%rax (ttwu_do_wakeup); mov 0x0(%r13),%rax.
    let e = run(&[0x48, 0x8b, 0x85, 0x90, 0x02, 0, 0], &r, &page);
    assert_eq!(e.regs.rax, u64_at(&page, PAGE + 0x490));
    let e = run(&[0x49, 0x8b, 0x45, 0x00], &r, &page);
    assert_eq!(e.regs.rax, u64_at(&page, PAGE + 0x300));
    assert_eq!(e.regs.rip, RIP + 4);
    // Outside the page: not emulated (the CPU would fault).
    let mut far = r;
    far.rbx = PAGE + 0x2000;
    assert_eq!(emulate(&[0x8b, 0x43, 0x68], &far, &page), None);
}

#[test]
fn stores_are_returned_not_done() {
    let page = Page::new(PAGE, 0);
    let r = regs();
    // movl $0x0,0x18(%rbx) (try_to_wake_up)
    let e = run(&[0xc7, 0x43, 0x18, 0, 0, 0, 0], &r, &page);
    assert_eq!(
        e.store,
        Some(Store {
            gva: PAGE + 0x118,
            bytes: [0; 8],
            len: 4
        })
    );
    assert_eq!(e.regs.rip, RIP + 7);
    // mov %rax,0x50(%rbx) (__do_fast_syscall_32)
    let e = run(&[0x48, 0x89, 0x43, 0x50], &r, &page);
    assert_eq!(
        e.store,
        Some(Store {
            gva: PAGE + 0x150,
            bytes: r.rax.to_le_bytes(),
            len: 8
        })
    );
    assert_eq!(
        page.at(PAGE + 0x150, 1)[0],
        (0x150u32 * 7 + 3) as u8,
        "memory untouched"
    );
}

#[test]
fn register_moves_keep_or_clear_the_upper_bits_as_x86_does() {
    let page = Page::new(PAGE, 0);
    let r = regs();
    // mov %ebx,%ecx: zero-extended.
    let e = run(&[0x89, 0xd9], &r, &page);
    assert_eq!(e.regs.rcx, r.rbx & 0xffff_ffff);
    // mov %rbp,%rdi
    assert_eq!(run(&[0x48, 0x89, 0xef], &r, &page).regs.rdi, r.rbp);
    // mov %al,%ah; mov %ax,%cx: the rest of the register stays.
    let e = run(&[0x88, 0xc4], &r, &page);
    assert_eq!(e.regs.rax, 0x1111_2222_3333_4444 & !0xff00 | 0x4400);
    let e = run(&[0x66, 0x89, 0xc1], &r, &page);
    assert_eq!(e.regs.rcx, 0x8000_0000_0000_4444);
    // movzbl 0x7c(%rbx),%eax; movsbq; movslq %esi,%rdx
    let b = page.at(PAGE + 0x17c, 1)[0];
    assert_eq!(
        run(&[0x0f, 0xb6, 0x43, 0x7c], &r, &page).regs.rax,
        u64::from(b)
    );
    let e = run(&[0x48, 0x0f, 0xbe, 0x43, 0x7c], &r, &page);
    assert_eq!(e.regs.rax, b as i8 as i64 as u64);
    let mut neg = r;
    neg.rsi = 0xffff_fff0;
    assert_eq!(
        run(&[0x48, 0x63, 0xd6], &neg, &page).regs.rdx,
        (-16i64) as u64
    );
    // lea 0x10(%rdi,%rsi,4),%rax: no memory read.
    let e = run(&[0x48, 0x8d, 0x44, 0xb7, 0x10], &r, &page);
    assert_eq!((e.regs.rax, e.loaded), (r.rdi + 4 * r.rsi + 0x10, false));
}

#[test]
fn compares_and_logic_set_the_flags_a_cpu_sets() {
    let page = Page::new(PAGE, 0);
    let r = regs();
    let fl = |b: &[u8], r: &kvm_regs| run(b, r, &page).regs.rflags & ARITH_FLAGS;
    // cmp $0xe8,%esi (equal): ZF, PF.
    assert_eq!(fl(&[0x81, 0xfe, 0xe8, 0, 0, 0], &r), ZF | PF);
    // cmp $0x1,%eax with eax = 0: borrow, negative, adjust.
    let mut z = r;
    z.rax = 0;
    assert_eq!(fl(&[0x83, 0xf8, 0x01], &z), CF | SF | AF | PF);
    // sub $0x8,%rsp (a prologue): result and flags.
    let e = run(&[0x48, 0x83, 0xec, 0x08], &r, &page);
    assert_eq!(e.regs.rsp, r.rsp - 8);
    // cmp with signed overflow: 0x80000000 - 1.
    let mut o = r;
    o.rax = 0x8000_0000;
    assert_eq!(fl(&[0x83, 0xf8, 0x01], &o), OF | AF | PF);
    // add carry out of 64 bits: rdx + 0x10 = 0.
    let e = run(&[0x48, 0x83, 0xc2, 0x10], &r, &page);
    assert_eq!((e.regs.rdx, e.regs.rflags & ARITH_FLAGS), (0, CF | ZF | PF));
    // test %rdi,%rdi; xor %ecx,%eax clears CF/OF.
    assert_eq!(fl(&[0x48, 0x85, 0xff], &r), SF | PF);
    let mut c = r;
    c.rflags |= CF | OF;
    let e = run(&[0x31, 0xc8], &c, &page);
    assert_eq!(e.regs.rax, (r.rax ^ r.rcx) & 0xffff_ffff);
    assert_eq!(e.regs.rflags & (CF | OF), 0);
    // testb $0x20,0x7c(%rbx): a memory operand, no store.
    let e = run(&[0xf6, 0x43, 0x7c, 0x20], &r, &page);
    let b = page.at(PAGE + 0x17c, 1)[0];
    assert_eq!(e.regs.rflags & ZF != 0, b & 0x20 == 0);
    assert_eq!(e.store, None);
    // Flags outside the arithmetic ones stay (IF, bit 1).
    assert_eq!(e.regs.rflags & !ARITH_FLAGS, r.rflags & !ARITH_FLAGS);
}

#[test]
fn per_cpu_accesses_add_the_gs_base() {
    let gs = PAGE - 0x1000_0000;
    let page = Page::new(PAGE, gs);
    let r = regs();
    // mov %gs:0x7ef76c6c(%rip),%r9d (handle_softirqs): RIP-relative from
    // the next instruction, plus the GS base.
    let b = [0x65, 0x44, 0x8b, 0x0d, 0x6c, 0x6c, 0xf7, 0x7e];
    let off = (RIP + 8).wrapping_add(0x7ef7_6c6c);
    let mut at = r;
    // Put the per-CPU variable inside the page.
    at.rip = (PAGE + 0x400)
        .wrapping_sub(gs)
        .wrapping_sub(0x7ef7_6c6c)
        .wrapping_sub(8);
    let e = run(&b, &at, &page);
    let want = u32::from_le_bytes(page.at(PAGE + 0x400, 4).try_into().unwrap());
    assert_eq!(e.regs.r9, u64::from(want));
    assert_ne!(off, 0);
    // or %r14w,%gs:...(%rip): a 16-bit read-modify-write, a store.
    let b = [0x65, 0x66, 0x44, 0x09, 0x35, 0x16, 0x80, 0xf8, 0x7e];
    at.rip = (PAGE + 0x500)
        .wrapping_sub(gs)
        .wrapping_sub(0x7ef8_8016)
        .wrapping_sub(9);
    let e = run(&b, &at, &page);
    let old = u16::from_le_bytes(page.at(PAGE + 0x500, 2).try_into().unwrap());
    let s = e.store.unwrap();
    assert_eq!((s.gva, s.len), (PAGE + 0x500, 2));
    assert_eq!(u16::from_le_bytes([s.bytes[0], s.bytes[1]]), old | 5);
    // No GS base known: not emulated.
    struct NoGs(Page);
    impl GuestView for NoGs {
        fn read(&self, gva: u64, buf: &mut [u8]) -> bool {
            self.0.read(gva, buf)
        }
        fn fs_base(&self) -> Option<u64> {
            None
        }
        fn gs_base(&self) -> Option<u64> {
            None
        }
    }
    assert_eq!(emulate(&b, &at, &NoGs(Page::new(PAGE, gs))), None);
}

#[test]
fn outside_the_set_is_refused() {
    let page = Page::new(PAGE, 0);
    let r = regs();
    for b in [
        &[0xf0, 0x48, 0x01, 0x03][..], // lock add %rax,(%rbx)
        &[0xe8, 0, 0, 0, 0],           // call
        &[0x74, 0x02],                 // je
        &[0xf3, 0x48, 0xab],           // rep stos
        &[0x67, 0x8b, 0x03],           // mov (%ebx),%eax: 32-bit address
        &[0x0f, 0x20, 0xd8],           // mov %cr3,%rax
        &[0x8c, 0xd8],                 // mov %ds,%eax
        &[0x48, 0xf7, 0xe3],           // mul %rbx
        &[0x48, 0xff, 0xc0],           // inc %rax
        &[0xfa],                       // cli
        &[],
    ] {
        assert_eq!(emulate(b, &r, &page), None, "{b:02x?}");
        assert_eq!(supported(b), None, "{b:02x?}");
    }
    // The guest single-steps itself: the CPU must run it.
    let mut tf = r;
    tf.rflags |= TF;
    assert_eq!(emulate(&[0x89, 0xd9], &tf, &page), None);
    assert_eq!(supported(&[0x89, 0xd9]), Some((Code::Mov_rm32_r32, 2)));
}

/// Any bytes at a trap and any register values (an untrusted guest) give
/// an effect or None, never a panic; an effect moves RIP forward by at
/// most one instruction's length.
#[test]
fn arbitrary_bytes_and_registers_never_panic() {
    struct Noise(u64);
    impl GuestView for Noise {
        fn read(&self, gva: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (gva.wrapping_add(i as u64) ^ self.0).wrapping_mul(0x9e37_79b9) as u8;
            }
            gva & 0x100 == 0
        }
        fn fs_base(&self) -> Option<u64> {
            Some(self.0)
        }
        fn gs_base(&self) -> Option<u64> {
            (self.0 & 1 == 0).then_some(!self.0)
        }
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut emulated = 0;
    for _ in 0..200_000 {
        let mut bytes = [0u8; MAX_INSN];
        for b in bytes.iter_mut() {
            *b = next() as u8;
        }
        // Often one of the handled opcodes, with a random ModRM and rest.
        const OPS: [u8; 12] = [
            0x01, 0x09, 0x21, 0x29, 0x31, 0x39, 0x85, 0x89, 0x8b, 0x8d, 0x83, 0xc7,
        ];
        if next() % 2 == 0 {
            bytes[1] = OPS[(next() % OPS.len() as u64) as usize];
            bytes[0] = [0x48, 0x65, 0x66, 0x41, 0x4c][(next() % 5) as usize];
        }
        let regs = kvm_regs {
            rax: next(),
            rbx: next(),
            rcx: next(),
            rdx: next(),
            rsi: next(),
            rdi: next(),
            rbp: next(),
            rsp: next(),
            r8: next(),
            r13: next(),
            r15: next(),
            rip: next(),
            rflags: next() & !TF,
            ..Default::default()
        };
        let len = (next() % (MAX_INSN as u64 + 1)) as usize;
        if let Some(fx) = emulate(&bytes[..len], &regs, &Noise(next())) {
            emulated += 1;
            let moved = fx.regs.rip.wrapping_sub(regs.rip);
            assert!(
                (1..=MAX_INSN as u64).contains(&moved),
                "{:02x?}",
                &bytes[..len]
            );
            assert!(moved as usize <= len, "{:02x?}", &bytes[..len]);
        }
    }
    assert!(emulated > 10_000, "only {emulated} emulated");
}
