//! `hvtrace image build`: the arguments; the images themselves are
//! `image_builder`'s.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Fetch the kernel and busybox, build the workloads and the initramfs;
    /// prints the image folder as the last line.
    Build {
        /// Kernel line: the newest Debian 12 package of it is used.
        #[arg(long, default_value = "6.1", value_parser = ["6.1", "6.12"])]
        kernel_line: String,
        /// Instead: a raw ext4 disk image of a minimal Debian 12 with
        /// systemd (mmdebstrap from the host's Debian mirror), for `--disk`;
        /// prints the image's path as the last line.
        #[arg(long, value_enum, value_name = "DISTRIBUTION")]
        rootfs: Option<Rootfs>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Rootfs {
    /// Debian 12 (bookworm), minbase with systemd, udev and D-Bus.
    Debian,
}

pub fn run(args: ImageArgs) -> Result<()> {
    match args.command {
        ImageCommand::Build {
            rootfs: Some(Rootfs::Debian),
            ..
        } => {
            let image = image_builder::rootfs::build_debian(true)?;
            println!("{}", image.display());
            Ok(())
        }
        ImageCommand::Build { kernel_line, .. } => {
            let dir = image_builder::build(&kernel_line, true)?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}
