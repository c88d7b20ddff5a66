//! What both engines' summaries share.

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
