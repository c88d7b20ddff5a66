//! virtio devices, on the rust-vmm `virtio-queue` rings.

pub mod block;
pub mod pci;

#[cfg(test)]
mod tests;
