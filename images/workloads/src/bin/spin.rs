//! `spin MS`: burns CPU in user space for MS milliseconds of wall time.

use std::time::{Duration, Instant};
use workloads::{arg_u64, Counts};

fn main() {
    let ms = arg_u64("spin MS");
    let end = Instant::now() + Duration::from_millis(ms);
    let mut loops: u64 = 0;
    let mut x: u64 = 1;
    while Instant::now() < end {
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        loops += 1;
    }
    std::hint::black_box(x);
    let mut counts = Counts::default();
    counts.add("loops", loops);
    counts.print(&[("ms", ms.to_string())]);
}
