//! What both engines' summaries share: event classes, and what the
//! streaming to a relayd did.

/// The class of an event, by `Record::event_tag`.
pub fn class_of_tag(tag: usize) -> &'static str {
    match tag {
        0 | 1 | 15 => "syscalls",
        2 | 3 | 14 | 19 => "sched",
        7 | 8 | 10 | 11 | 16..=18 => "irq",
        13 => "probes",
        9 => "statedump",
        12 => "samples",
        _ => "proc",
    }
}

/// Says what the streaming did, from its report as JSON (`ctf.relayd` in
/// the engines' reports).
pub fn print_relayd(report: &serde_json::Value) {
    if report.is_null() {
        return;
    }
    let line = report["summary"].as_str().unwrap_or("no report");
    eprintln!("hvtrace: record: relayd: {line}");
    for e in report["snapshot_errors"].as_array().into_iter().flatten() {
        eprintln!(
            "hvtrace: record: relayd: snapshot not sent: {}",
            e.as_str().unwrap_or("?")
        );
    }
}
