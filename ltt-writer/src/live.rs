//! The writer thread's side of streaming to relayd ([`crate::relayd`]):
//! it starts the session, closes partial packets every live period so
//! that viewers see events while the guest runs, offers closed packets,
//! sends flight-recorder snapshots from threads of their own, and reports.
//! A relayd that cannot be reached when the trace starts leaves the local
//! trace as it is: the report says why nothing was sent.

use std::thread::JoinHandle;
use std::time::Instant;

use crate::relayd::{self, RelaydConfig, RelaydReport, Streamer};

pub(crate) struct Live {
    cfg: RelaydConfig,
    streamer: Option<Streamer>,
    start_error: Option<String>,
    next_flush: Instant,
    snapshots: Vec<JoinHandle<Result<(), String>>>,
    endpoint: String,
    live: bool,
    /// Packets (and events) offered while no session was open.
    missed: (u64, u64),
}

impl Live {
    /// Start streaming a live session (`live`), or only prepare to send
    /// snapshots (flight recorder).
    pub(crate) fn start(cfg: RelaydConfig, metadata: &str, ncpus: u32, live: bool) -> Live {
        let (streamer, start_error) = if live {
            match Streamer::start(&cfg, metadata, ncpus) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(relayd::chain(&e))),
            }
        } else {
            (None, None)
        };
        Live {
            next_flush: Instant::now() + cfg.live_timer,
            endpoint: cfg.endpoint.to_string(),
            cfg,
            streamer,
            start_error,
            snapshots: Vec::new(),
            live,
            missed: (0, 0),
        }
    }

    /// When the writer must next wake up to close partial packets.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.streamer.as_ref().map(|_| self.next_flush)
    }

    /// True when a live period is over: the writer then asks producers
    /// to close their partial packets.
    pub(crate) fn flush_due(&mut self) -> bool {
        if self.streamer.is_none() || Instant::now() < self.next_flush {
            return false;
        }
        self.next_flush = Instant::now() + self.cfg.live_timer;
        true
    }

    pub(crate) fn offer(&mut self, cpu: u32, packet: &[u8], events: u64) {
        match &mut self.streamer {
            Some(s) => s.offer(cpu, packet, events),
            None if self.live => {
                self.missed.0 += 1;
                self.missed.1 += events;
            }
            None => {}
        }
    }

    /// Send a flight-recorder window as snapshot session `name`, from a
    /// thread of its own (the writer goes on).
    pub(crate) fn snapshot(&mut self, name: &str, metadata: &str, packets: Vec<Vec<Vec<u8>>>) {
        let cfg = self.cfg.clone();
        let name = name.to_string();
        let metadata = metadata.to_string();
        let spawned = std::thread::Builder::new()
            .name("relayd-snapshot".into())
            .spawn(move || {
                relayd::snapshot(&cfg, &name, &metadata, &packets)
                    .map_err(|e| format!("{name}: {}", relayd::chain(&e)))
            });
        match spawned {
            Ok(t) => self.snapshots.push(t),
            Err(e) => self.start_error = Some(format!("cannot start a snapshot thread: {e}")),
        }
    }

    pub(crate) fn finish(self) -> RelaydReport {
        let mut r = match self.streamer {
            Some(s) => s.finish(),
            None => RelaydReport {
                endpoint: self.endpoint.clone(),
                path: format!("{}/kernel", self.cfg.trace_path()),
                error: self.start_error.clone(),
                unsent_packets: self.missed.0,
                unsent_events: self.missed.1,
                ..RelaydReport::default()
            },
        };
        r.live = self.live;
        if !self.live {
            r.path = format!("{}/kernel", self.cfg.trace_path());
        }
        for t in self.snapshots {
            match t.join() {
                Ok(Ok(())) => r.snapshots_sent += 1,
                Ok(Err(e)) => r.snapshot_errors.push(e),
                Err(_) => r.snapshot_errors.push("a snapshot thread panicked".into()),
            }
        }
        r
    }
}
