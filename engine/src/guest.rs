//! How a guest run is described and how it ended, on either engine: the
//! guest's `/init` prints `HVTRACE-EXIT <status>` when the command ends;
//! a kernel panic, a power-off or a restart end a run too, as its console
//! says.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// What to boot and how: the engine-independent description of one run.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// `--disk`: the KVM monitor attaches it itself (QEMU gets it through
    /// the QEMU engine's own arguments).
    pub disk: Option<PathBuf>,
}

impl GuestRun {
    /// The same run with another wall-time limit (`--duration`).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        GuestRun {
            timeout,
            ..self.clone()
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEnd {
    /// `/init` reported the command's exit status.
    Exited(i32),
    /// The kernel panicked; the line that said so.
    Panicked(String),
    /// The guest stopped (powered off or QEMU died) without a marker line.
    NoMarker,
    /// The kernel said it powers off (`reboot: Power down`, or without
    /// ACPI that it halts instead): the end of a
    /// `--disk` boot. Other runs report their marker line before it.
    PoweredOff,
    /// The kernel said it restarts (`reboot: Restarting system`); QEMU runs
    /// with `-no-reboot`, so this ends the run too.
    Restarted,
    /// A `--disk` boot without command stopped at its first trigger.
    Triggered,
    /// hvtrace's disk-boot `/init` could not reach the image's init; why.
    DiskInitFailed(String),
    TimedOut,
    Interrupted,
}

/// Scans console output line by line for the marker and for panics.
#[derive(Default)]
pub struct MarkerScanner {
    line: Vec<u8>,
    end: Option<GuestEnd>,
}

impl MarkerScanner {
    /// Feeds console bytes; returns the end of the run once it is known.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<&GuestEnd> {
        for &b in bytes {
            if b == b'\n' {
                self.scan_line();
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        self.end.as_ref()
    }

    fn scan_line(&mut self) {
        if self.end.is_some() {
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("HVTRACE-EXIT ") {
            if let Ok(status) = rest.trim().parse() {
                self.end = Some(GuestEnd::Exited(status));
            }
        } else if let Some(at) = line.find("Kernel panic - not syncing") {
            self.end = Some(GuestEnd::Panicked(line[at..].to_string()));
        } else if line.ends_with("reboot: Power down")
            // On hvtrace's KVM monitor, which has no ACPI to power off
            // with, the kernel halts instead: 6.12 says so, 6.1 turns the
            // request into a halt without a word.
            || line.ends_with("reboot: Power off not available: System halted instead")
            || line.ends_with("reboot: System halted")
        {
            self.end = Some(GuestEnd::PoweredOff);
        } else if line.ends_with("reboot: Restarting system") {
            self.end = Some(GuestEnd::Restarted);
        } else if let Some(why) = line.strip_prefix(DISK_INIT_FAILED) {
            self.end = Some(GuestEnd::DiskInitFailed(why.trim().to_string()));
        }
    }
}

/// How the disk-boot `/init` (`image_builder::disk_initrd`) says it failed.
pub const DISK_INIT_FAILED: &str = "hvtrace-disk-init: failed: ";

/// Encodes the guest command for `/init`: hex of the NUL-joined argv, so any
/// byte survives the kernel's command-line parser.
pub fn encode_command(argv: &[String]) -> String {
    let joined = argv.join("\0");
    joined.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The kernel command line for running `argv` with `/init`.
pub fn kernel_cmdline(argv: &[String], append: &str) -> String {
    let mut cmdline = String::from("console=ttyS0 quiet panic=-1 i8042.noaux");
    if !append.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(append.trim());
    }
    cmdline.push_str(" hvtrace.cmd=");
    cmdline.push_str(&encode_command(argv));
    cmdline
}

/// Something that types on the guest's console while it runs: it sees the
/// console output as it arrives (and an empty slice at least every 100 ms)
/// and may write to the console input.
pub trait ConsoleDriver {
    fn drive(&mut self, output: &[u8], input: &mut dyn Write) -> std::io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_across_chunks() {
        let mut s = MarkerScanner::default();
        assert!(s.feed(b"boot\r\nHVTRACE-EX").is_none());
        assert_eq!(s.feed(b"IT 42\r\n"), Some(&GuestEnd::Exited(42)));
    }

    #[test]
    fn panic_line_ends_the_run() {
        let mut s = MarkerScanner::default();
        let end = s.feed(b"[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root\n");
        assert!(matches!(end, Some(GuestEnd::Panicked(l)) if l.contains("VFS")));
    }

    #[test]
    fn power_off_and_restart_end_a_disk_boot() {
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[   62.137323] reboot: Power down\r\n"),
            Some(&GuestEnd::PoweredOff)
        );
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[  255.774733] reboot: Power off not available: System halted instead\r\n"),
            Some(&GuestEnd::PoweredOff)
        );
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[ 9.1] reboot: System halted\n"),
            Some(&GuestEnd::PoweredOff)
        );
        let mut s = MarkerScanner::default();
        assert_eq!(
            s.feed(b"[ 9.1] reboot: Restarting system\n"),
            Some(&GuestEnd::Restarted)
        );
        let mut s = MarkerScanner::default();
        let end = s.feed(b"hvtrace-disk-init: failed: no /dev/vda\n");
        assert_eq!(end, Some(&GuestEnd::DiskInitFailed("no /dev/vda".into())));
    }

    #[test]
    fn marker_comes_before_the_power_off() {
        let mut s = MarkerScanner::default();
        let end = s.feed(b"HVTRACE-EXIT 3\n[ 5.0] reboot: Power down\n");
        assert_eq!(end, Some(&GuestEnd::Exited(3)));
    }

    #[test]
    fn command_encoding_keeps_every_byte() {
        let argv = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$i\" > x; ' \\".into(),
        ];
        let hex = encode_command(&argv);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let back: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2], argv[2].as_bytes());
    }
}
