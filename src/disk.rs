//! `--disk IMAGE`: the options of a disk boot (the checks, QEMU's drive
//! and the kernel command line are `engine::disk`'s).

use anyhow::Result;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The options of a disk boot, shared by the commands that boot a guest.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DiskOptions {
    /// Boot this raw disk image (ext4 root, e.g. from `hvtrace image build
    /// --rootfs debian`) with the kernel as root, unchanged: the guest's
    /// writes go to a temporary overlay. Without a command after `--`, the
    /// guest runs as it is until it powers off, --duration or --timeout.
    #[arg(long, value_name = "IMAGE")]
    pub disk: Option<PathBuf>,
    /// With --disk: stop the guest after this many seconds of wall time
    /// (a normal end, exit status 0; the trace holds everything until then).
    #[arg(long, value_name = "SECS", requires = "disk",
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub duration: Option<u64>,
}

impl DiskOptions {
    /// The image, checked before anything boots.
    pub fn image(&self) -> Result<Option<&Path>> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        engine::disk::check_image(disk)?;
        Ok(Some(disk))
    }

    /// QEMU's `-drive` for the image: virtio-blk, never written.
    pub fn qemu_args(&self) -> Vec<OsString> {
        self.disk
            .as_deref()
            .map(engine::disk::qemu_args)
            .unwrap_or_default()
    }

    /// The wall-time limit of the run and whether reaching it is the
    /// normal end (--duration) rather than a timeout.
    pub fn limit(&self, timeout: Duration) -> (Duration, bool) {
        engine::disk::limit(self.duration.map(Duration::from_secs), timeout)
    }
}
