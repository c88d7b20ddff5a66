//! Running lttng-analyses (the LTTng project's Python analyses) on a trace
//! folder and reading their machine-interface (`-mi`) output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The lttng-analyses commands `scripts/install-deps.sh` installed.
pub struct Analyses {
    bin: PathBuf,
}

impl Analyses {
    /// The installation in the cache folder (`$HVTRACE_CACHE`, default
    /// `.cache/` in the source tree); a missing one fails the test with
    /// how to install it.
    pub fn installed() -> Self {
        let cache = std::env::var_os("HVTRACE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache"));
        let bin = cache.join("lttng-analyses/bin");
        assert!(
            bin.join("lttng-syscallstats-mi").is_file(),
            "lttng-analyses is not installed in {}: run scripts/install-deps.sh \
             (it installs babeltrace 1.x, its Python bindings and lttnganalyses from PyPI)",
            bin.display()
        );
        Self { bin }
    }

    /// `lttng-<tool>-mi ARGS DIR`, which must succeed; its JSON document.
    pub fn run(&self, tool: &str, args: &[&str], dir: &Path) -> serde_json::Value {
        let exe = self.bin.join(format!("lttng-{tool}-mi"));
        let out = Command::new(&exe)
            .args(args)
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "lttng-{tool}-mi {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lttng-{tool}-mi printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// The rows of the result tables whose `class` matches.
pub fn mi_rows(
    mi: &serde_json::Value,
    class: impl Fn(&serde_json::Value) -> bool,
) -> Vec<Vec<serde_json::Value>> {
    let results = mi["results"].as_array().expect("MI results");
    let tables: Vec<&serde_json::Value> = results.iter().filter(|t| class(&t["class"])).collect();
    assert!(!tables.is_empty(), "no such table in {mi}");
    tables
        .iter()
        .flat_map(|t| t["data"].as_array().expect("table data").iter())
        .map(|row| row.as_array().expect("table row").clone())
        .collect()
}

/// A trace's clock: its cycles (ns) from its offset from the Epoch.
pub struct TraceClock {
    offset_ns: u64,
}

impl TraceClock {
    pub fn of(kernel: &Path) -> Self {
        let meta = std::fs::read_to_string(kernel.join("metadata")).expect("metadata");
        let offset_ns = meta
            .lines()
            .find_map(|l| l.trim().strip_prefix("offset = "))
            .and_then(|v| v.trim_end_matches(';').trim().parse().ok())
            .expect("clock offset in the metadata");
        Self { offset_ns }
    }

    /// `[begin,end]` as lttng-analyses' `--timerange` takes it with
    /// `--gmt` (UTC, to the nanosecond), for two clock values.
    pub fn range(&self, from: u64, to: u64) -> String {
        format!("[{},{}]", self.utc(from), self.utc(to))
    }

    fn utc(&self, cycles: u64) -> String {
        let ns = self.offset_ns + cycles;
        let (secs, nsec) = (ns / 1_000_000_000, ns % 1_000_000_000);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nsec:09}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the
/// well-known era/day-of-era computation).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[test]
fn dates_are_utc_calendar_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    let c = TraceClock { offset_ns: 0 };
    assert_eq!(
        c.utc(1_796_513_333_256_672_692),
        "2026-12-05T23:28:53.256672692"
    );
}
