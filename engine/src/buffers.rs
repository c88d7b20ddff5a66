//! `record`'s buffer and mode options and its account of what the buffers
//! dropped, shared by both engines.

use std::path::Path;

use introspect::plan::{EventClasses, ProbePlan};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every selected event, exact order per vCPU.
    Trap,
    /// Statistical sampling at --freq HZ (plus process lifecycle events).
    Sample,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferMode {
    /// A full buffer pauses the vCPU: nothing is lost.
    Lossless,
    /// A full buffer drops events and counts them.
    Discard,
    /// Keep the newest events in memory, write them at the end (and on
    /// --trigger or SIGUSR1).
    FlightRecorder,
}

/// `--mode sample`: samples at `freq` instead of the high-rate classes;
/// process lifecycle (rare) stays traced so samples can be attributed.
pub fn apply_mode(plan: &mut ProbePlan, mode: Mode, freq: u32) {
    if mode == Mode::Sample {
        plan.sample_hz = freq;
        plan.events = EventClasses {
            proc: true,
            ..EventClasses::default()
        };
    }
}

/// `--subbuf-size`: bytes, or k/M (KiB/MiB); what ltt-writer takes as a
/// packet size.
pub fn parse_subbuf_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1u64 << 10),
        None => match t.strip_suffix(['m', 'M']) {
            Some(d) => (d, 1 << 20),
            None => (t, 1),
        },
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as 4096, 4k or 1M"))?;
    let bytes = n.saturating_mul(unit);
    if !(4096..=64 << 20).contains(&bytes) || bytes % 8 != 0 {
        return Err(format!(
            "`{s}` is {bytes} bytes; a sub-buffer is a multiple of 8 bytes from 4k to 64M"
        ));
    }
    Ok(bytes)
}

/// How many event names the summary lists before "and N more".
const LISTED: usize = 8;

/// Prints which events the buffers dropped (`discards`: ltt-writer's
/// `TraceReport::discards_json`, as the engine's report holds it in
/// `report_file`), by event name, most first, then per vCPU.
pub fn print_discards(discards: &serde_json::Value, report_file: &Path) {
    let total = discards["total"].as_u64().unwrap_or(0);
    if total == 0 {
        return;
    }
    eprintln!(
        "hvtrace: record: {total} events dropped (buffers full), by event: {} (per vCPU: ctf.discards in {})",
        listed(&discards["by_event"]),
        report_file.display()
    );
    for cpu in discards["cpus"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let n = cpu["total"].as_u64().unwrap_or(0);
        if n == 0 {
            continue;
        }
        let unattributed = cpu["unattributed"].as_u64().unwrap_or(0);
        let tail = if unattributed > 0 {
            format!(", {unattributed} in a packet the writer never received")
        } else {
            String::new()
        };
        eprintln!(
            "hvtrace: record:   vCPU {}: {n} dropped: {}{tail}",
            cpu["cpu"],
            listed(&cpu["by_event"])
        );
    }
}

/// `name count, ...` of a JSON object of counts, largest first.
fn listed(by_event: &serde_json::Value) -> String {
    let mut v: Vec<(&str, u64)> = by_event
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.as_str(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out: Vec<String> = v
        .iter()
        .take(LISTED)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if v.len() > LISTED {
        out.push(format!("and {} more", v.len() - LISTED));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subbuf_sizes_take_suffixes_and_refuse_what_the_writer_cannot_use() {
        assert_eq!(parse_subbuf_size("4096"), Ok(4096));
        assert_eq!(parse_subbuf_size("4k"), Ok(4096));
        assert_eq!(parse_subbuf_size("2M"), Ok(2 << 20));
        for bad in ["", "4x", "2048", "4100", "65M", "-4k"] {
            assert!(parse_subbuf_size(bad).is_err(), "{bad}");
        }
    }
}
