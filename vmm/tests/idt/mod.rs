//! An IDT for the synthetic guests that take an exception: the guest runs
//! [`LIDT`] first, and [`install`] points one vector at a handler that can
//! store the RIP the CPU pushed ([`STORE_RIP_AND_HALT`]) for the test.

/// `lidt [0x3000]` (8 bytes).
pub const LIDT: [u8; 8] = [0x0f, 0x01, 0x1c, 0x25, 0x00, 0x30, 0, 0];
/// Where [`STORE_RIP_AND_HALT`] stores the pushed RIP.
pub const STORED_RIP: u64 = 0x5000;
/// `mov rax,[rsp]; mov [0x5000],rax; hlt`: the handler's body.
pub const STORE_RIP_AND_HALT: [u8; 13] = [
    0x48, 0x8b, 0x04, 0x24, 0x48, 0x89, 0x04, 0x25, 0x00, 0x50, 0, 0, 0xf4,
];

const IDTR_AT: u64 = 0x3000;
const IDT_AT: u64 = 0x4000;
const VECTORS: u16 = 4;

/// Writes the IDTR at 0x3000 and an interrupt gate for `vector` (< 4) to
/// `handler` in the IDT at 0x4000.
pub fn install(vm: &vmm::Vm, vector: u64, handler: u64) {
    assert!(vector < u64::from(VECTORS));
    let mut gate = Vec::with_capacity(16);
    gate.extend_from_slice(&(handler as u16).to_le_bytes());
    gate.extend_from_slice(&0x10u16.to_le_bytes()); // __BOOT_CS
    gate.extend_from_slice(&[0, 0x8e]); // present 64-bit interrupt gate
    gate.extend_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate.extend_from_slice(&((handler >> 32) as u32).to_le_bytes());
    gate.extend_from_slice(&[0; 4]);
    let mut idtr = (VECTORS * 16 - 1).to_le_bytes().to_vec();
    idtr.extend_from_slice(&IDT_AT.to_le_bytes());
    vm.write_phys(IDTR_AT, &idtr).unwrap();
    vm.write_phys(IDT_AT + vector * 16, &gate).unwrap();
}

/// The RIP the handler stored.
pub fn stored_rip(vm: &vmm::Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.read_phys(STORED_RIP, &mut b).unwrap();
    u64::from_le_bytes(b)
}
