//! Which events a producer dropped. LTTng's packet context counts dropped
//! events per stream only (`events_discarded`); a user whose workload
//! counts its own calls needs them per event class too, so that what the
//! trace holds plus what was dropped is exactly what happened.

use crate::catalog::Catalog;

/// Dropped events of one stream, by event id. Sized for the catalog when
/// the producer is made, so that counting a drop never allocates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscardCounts {
    by_id: Box<[u64]>,
    /// Events lost in a packet the writer never received (it had
    /// stopped): their classes went with the packet.
    pub unattributed: u64,
    /// Dropped events whose id is not in the catalog.
    pub unknown_id: u64,
}

impl DiscardCounts {
    pub(crate) fn new(events: usize) -> Self {
        DiscardCounts {
            by_id: vec![0; events].into_boxed_slice(),
            unattributed: 0,
            unknown_id: 0,
        }
    }

    #[inline]
    pub(crate) fn count(&mut self, id: u32) {
        match self.by_id.get_mut(id as usize) {
            Some(n) => *n += 1,
            None => self.unknown_id += 1,
        }
    }

    /// Events of id `id` dropped.
    pub fn of(&self, id: u32) -> u64 {
        self.by_id.get(id as usize).copied().unwrap_or(0)
    }

    /// Every dropped event (equals the stream's `events_discarded`).
    pub fn total(&self) -> u64 {
        self.by_id.iter().sum::<u64>() + self.unattributed + self.unknown_id
    }

    /// `(event name, count)` of every class with drops, in id order.
    pub fn named<'a>(&'a self, catalog: &'a Catalog) -> impl Iterator<Item = (&'a str, u64)> {
        self.by_id
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(move |(id, n)| {
                let name = catalog.event(id as u32).map_or("?", |e| e.name.as_str());
                (name, *n)
            })
    }
}

/// The dropped events of a whole trace as JSON: the total, the totals by
/// event name, and the same per vCPU (`cpus[i].cpu` is the stream).
pub fn to_json(per_cpu: &[DiscardCounts], catalog: &Catalog) -> serde_json::Value {
    let mut totals = serde_json::Map::new();
    let cpus: Vec<serde_json::Value> = per_cpu
        .iter()
        .enumerate()
        .map(|(cpu, d)| {
            let mut by_event = serde_json::Map::new();
            for (name, n) in d.named(catalog) {
                by_event.insert(name.to_string(), n.into());
                let t = totals.entry(name.to_string()).or_insert(0u64.into());
                *t = (t.as_u64().unwrap_or(0) + n).into();
            }
            serde_json::json!({
                "cpu": cpu,
                "total": d.total(),
                "by_event": by_event,
                "unattributed": d.unattributed + d.unknown_id,
            })
        })
        .collect();
    serde_json::json!({
        "total": per_cpu.iter().map(DiscardCounts::total).sum::<u64>(),
        "by_event": totals,
        "cpus": cpus,
    })
}
