//! How the guest ended, as hvtrace's exit status or an error: the same
//! for both engines and for `run`, `record` and `latency`.

use std::time::Duration;

use crate::guest::GuestEnd;

/// A run that ended without the command's status.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    #[error("the guest kernel panicked: {0}")]
    Panicked(String),
    #[error("the guest rebooted (QEMU runs with -no-reboot, so that ends the run) without reporting the command's exit status")]
    Restarted,
    #[error("the guest stopped without reporting the command's exit status")]
    NoStatus,
    #[error("the disk boot's /init could not start the image's init: {0}")]
    DiskInitFailed(String),
    #[error("timed out after {} s; the guest was stopped", .0.as_secs())]
    TimedOut(Duration),
}

/// Turns how the guest ended into hvtrace's exit status or an error.
pub fn outcome(end: GuestEnd, timeout: Duration) -> Result<i32, OutcomeError> {
    match end {
        GuestEnd::Exited(status) => Ok(status),
        GuestEnd::Panicked(line) => Err(OutcomeError::Panicked(line)),
        GuestEnd::Restarted => Err(OutcomeError::Restarted),
        GuestEnd::NoMarker | GuestEnd::PoweredOff | GuestEnd::Triggered => {
            Err(OutcomeError::NoStatus)
        }
        GuestEnd::DiskInitFailed(why) => Err(OutcomeError::DiskInitFailed(why)),
        GuestEnd::TimedOut => Err(OutcomeError::TimedOut(timeout)),
        GuestEnd::Interrupted => {
            // Like a shell: 128 + the signal that stopped the run.
            let sig = crate::interrupt::received().unwrap_or(libc::SIGINT);
            eprintln!(
                "hvtrace: interrupted by {}; the guest was stopped",
                crate::interrupt::name(sig)
            );
            Ok(128 + sig)
        }
    }
}

/// How a disk boot ended, as hvtrace's exit status: the guest powering
/// off is the end of a run without command and the success of a command;
/// rebooting is its failure (`systemd.run_failure_action=reboot`).
/// `limit` is the run's wall-time limit and whether reaching it is a
/// normal end (`--duration`).
pub fn disk_outcome(
    end: GuestEnd,
    limit: (Duration, bool),
    timeout: Duration,
) -> Result<i32, OutcomeError> {
    match end {
        GuestEnd::PoweredOff => Ok(0),
        GuestEnd::Restarted => {
            eprintln!("hvtrace: the guest rebooted: its command failed (systemd.run_failure_action); the exact status stays in the guest");
            Ok(1)
        }
        GuestEnd::TimedOut if limit.1 => Ok(0),
        GuestEnd::Triggered => Ok(0),
        other => outcome(other, timeout),
    }
}

/// How a recording may end without being cut short: its command's
/// status, or for a `--disk` boot (`disk`) without command, power-off,
/// `--duration` (`limit_is_normal`) or a trigger.
pub fn normal_end(end: &GuestEnd, disk: bool, limit_is_normal: bool) -> bool {
    match end {
        GuestEnd::Exited(_) | GuestEnd::Triggered => true,
        GuestEnd::PoweredOff | GuestEnd::Restarted => disk,
        GuestEnd::TimedOut => limit_is_normal,
        _ => false,
    }
}
