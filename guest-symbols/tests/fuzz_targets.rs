//! The fuzz targets (`guest_symbols::fuzzing`, which cargo-fuzz runs under
//! libFuzzer on nightly) run on stable, for a bounded time, over random
//! inputs and mutations of small valid seeds built here with the crate's
//! own API (plus the Debian 6.1 vmlinuz when it has been built). Every case
//! must return; a panic fails the test with what replays it.
//!
//! `HVTRACE_FUZZ_SECS`: budget per target (default 2). `HVTRACE_FUZZ_SEED`:
//! the PRNG seed (default: from the clock, and printed), so each CI run
//! explores new inputs and any failure can be replayed. A case's input
//! depends only on (seed, target, case index), not on timing.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest_symbols::fuzzing::{Target, TARGETS};

/// Longest random (non-mutated) input.
const MAX_RANDOM_LEN: usize = 64 << 10;
/// `image` on a whole multi-MB kernel takes seconds per case: its inputs
/// are cut to this.
const IMAGE_CAP: usize = 1 << 20;
const INTERESTING: [u64; 5] = [0, 1, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// xorshift64, seeded through splitmix64 so that nearby seeds diverge.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Random bytes, with lengths spread over every scale up to 64 KiB; a
/// quarter of them text-like, for the text parsers.
fn random(r: &mut Rng) -> Vec<u8> {
    const TEXT: &[u8] = b"0123456789abcdef xTtDdAaRrWw_.[]\t\n";
    let scale = 1 << r.below(17);
    let len = r.below(scale + 1).min(MAX_RANDOM_LEN);
    if r.below(4) == 0 {
        (0..len).map(|_| TEXT[r.below(TEXT.len())]).collect()
    } else {
        (0..len).map(|_| r.byte()).collect()
    }
}

/// One mutation, in place. Flips and overwrites are weighted up: most
/// parsers reject a truncated input at once.
fn mutate(r: &mut Rng, d: &mut Vec<u8>) {
    match r.below(11) {
        0..=2 if !d.is_empty() => {
            let i = r.below(d.len());
            d[i] ^= 1 << r.below(8);
        }
        3..=5 if !d.is_empty() => {
            let i = r.below(d.len());
            d[i] = match r.below(3) {
                0 => 0,
                1 => 0xff,
                _ => r.byte(),
            };
        }
        6 => {
            let n = r.below(d.len() + 1);
            d.truncate(n);
        }
        7 if !d.is_empty() => {
            let from = r.below(d.len());
            let n = 1 + r.below((d.len() - from).min(4096));
            let chunk = d[from..from + n].to_vec();
            let to = r.below(d.len() + 1);
            d.splice(to..to, chunk);
        }
        k @ 8..=10 => {
            // 1, 2, 4 or 8 bytes of an interesting value, mostly little-endian,
            // inserted (k == 8) or written over what is there.
            let v = INTERESTING[r.below(INTERESTING.len())];
            let w = 1 << r.below(4);
            let bytes = if r.below(4) == 0 {
                v.to_be_bytes()[8 - w..].to_vec()
            } else {
                v.to_le_bytes()[..w].to_vec()
            };
            if k == 8 {
                let to = r.below(d.len() + 1);
                d.splice(to..to, bytes);
            } else if d.len() >= w {
                let i = r.below(d.len() - w + 1);
                d[i..i + w].copy_from_slice(&bytes);
            }
        }
        _ => {}
    }
}

/// The input of case `case`: first each seed as it is, then a quarter
/// random inputs and the rest seeds under 1 to 8 stacked mutations.
fn input(seed: u64, target: &str, case: u64, seeds: &[&[u8]], cap: usize) -> Vec<u8> {
    let cut = |s: &[u8]| s[..s.len().min(cap)].to_vec();
    if let Some(s) = usize::try_from(case).ok().and_then(|i| seeds.get(i)) {
        return cut(s);
    }
    let mut r = Rng::new(seed ^ fnv(target) ^ case.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut d = if seeds.is_empty() || r.below(4) == 0 {
        random(&mut r)
    } else {
        let mut d = cut(seeds[r.below(seeds.len())]);
        for _ in 0..1 + r.below(8) {
            mutate(&mut r, &mut d);
        }
        d
    };
    d.truncate(cap);
    d
}

/// Runs one target until its budget is spent (at least one case). Returns
/// the number of cases, the time taken and, on a panic, how to replay it.
fn run(
    name: &str,
    target: Target,
    seeds: &[&[u8]],
    seed: u64,
    budget: Duration,
) -> (u64, Duration, Option<String>) {
    let cap = if name == "image" {
        IMAGE_CAP
    } else {
        usize::MAX
    };
    let start = Instant::now();
    let mut case = 0u64;
    while case == 0 || start.elapsed() < budget {
        let data = input(seed, name, case, seeds, cap);
        if let Err(e) = std::panic::catch_unwind(|| target(&data)) {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let path = std::env::temp_dir().join(format!("guest-symbols-fuzz-{name}-{case}.bin"));
            let saved = match std::fs::write(&path, &data) {
                Ok(()) => format!("saved as {}", path.display()),
                Err(e) => format!("not saved ({e})"),
            };
            let failure = format!(
                "fuzz {name}: case {case} panicked ({msg}) on a {}-byte input, {saved}; \
                 HVTRACE_FUZZ_SEED={seed} makes the same case {case} again (given the \
                 same .cache/images), or pass the file to guest_symbols::fuzzing::{name}",
                data.len()
            );
            return (case + 1, start.elapsed(), Some(failure));
        }
        case += 1;
    }
    (case, start.elapsed(), None)
}

#[test]
fn fuzz_targets_do_not_panic() {
    let secs: f64 = std::env::var("HVTRACE_FUZZ_SECS")
        .map(|s| s.trim().parse().expect("HVTRACE_FUZZ_SECS: seconds"))
        .unwrap_or(2.0);
    let budget = Duration::try_from_secs_f64(secs).expect("HVTRACE_FUZZ_SECS: seconds");
    let seed = match std::env::var("HVTRACE_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .expect("HVTRACE_FUZZ_SEED: a u64")
        }
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    eprintln!("fuzz: HVTRACE_FUZZ_SEED={seed}, {secs} s per target");
    let seeds = Seeds::build();
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let (cases, took, failure) = run(name, target, &seeds.of(name), seed, budget);
        eprintln!(
            "fuzz {name}: {cases} cases in {:.1} s, {} panics",
            took.as_secs_f64(),
            u8::from(failure.is_some())
        );
        failures.extend(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

mod fuzz_seeds;
use fuzz_seeds::Seeds;
