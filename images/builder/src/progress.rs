//! What a long build step shows on the terminal while it runs.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner with `msg` and the time spent (hidden unless `verbose`);
/// the caller clears it when the step is done.
pub fn step(msg: String, verbose: bool) -> ProgressBar {
    let pb = if verbose {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("static template"),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(msg);
    pb
}
