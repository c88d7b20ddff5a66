//! What hvtrace's two engines (the KVM monitor and QEMU TCG with the
//! plugin) share on the host, below both: the probe plan built from a
//! kernel image, the statedump's layout, `--probe` specs, the output
//! folder, the buffer options and their account of drops, how a guest run
//! is described and how it ended. It knows neither engine.

pub mod buffers;
pub mod disk;
pub mod errno;
pub mod guest;
pub mod interrupt;
pub mod outcome;
pub mod output;
pub mod plan;
pub mod probes;
pub mod resolve;
pub mod seam;
pub mod statedump_layout;
pub mod stop;
pub mod summary;
pub mod triggers;
