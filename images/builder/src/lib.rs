//! Guest images: the default image of a kernel line (Debian's kernel and
//! busybox-static, the workload programs, hvtrace's `/init`), the Debian
//! disk for `--disk`, the disk boot's initramfs, the `--add` layer (with
//! each added program's interpreter and libraries), and the checks a
//! user's own kernel and initramfs pass. Everything fetched or built is
//! kept in the cache folder ([`cache`]), keyed by content.
//!
//! It knows neither engine: what it makes are files that either boots.

pub mod add;
mod apt;
mod apt_memo;
pub mod cache;
pub mod check;
pub mod compat32;
mod cpio;
pub mod disk_initrd;
mod elf_deps;
mod guest_path;
pub mod image;
pub mod io_context;
mod progress;
pub mod rootfs;

pub use image::{build, ImageError};
