//! What to stream and where ([`RelaydConfig`]), and what the streaming
//! did ([`RelaydReport`]).

use std::time::Duration;

use super::conn::Endpoint;
use super::error::RelaydError;
use super::wire;

/// What to stream, and where.
#[derive(Clone, Debug)]
pub struct RelaydConfig {
    pub endpoint: Endpoint,
    /// Session name and hostname, as viewers list them
    /// (`net://RELAYD/host/HOSTNAME/SESSION`); relayd writes the trace in
    /// `OUTPUT/HOSTNAME/SESSION/kernel`.
    pub session: String,
    pub hostname: String,
    /// How often partial packets are closed and idle streams announced
    /// (lttng's live timer).
    pub live_timer: Duration,
    /// Packets the queue to the sender holds before it drops (0: as many
    /// as the vCPUs' buffers hold, `--num-subbuf` × vCPUs).
    pub queue_packets: usize,
}

impl RelaydConfig {
    /// A live session with lttng's default live timer (1 s).
    pub fn new(endpoint: Endpoint, session: &str, hostname: &str) -> Self {
        RelaydConfig {
            endpoint,
            session: session.to_string(),
            hostname: hostname.to_string(),
            live_timer: Duration::from_secs(1),
            queue_packets: 0,
        }
    }

    /// relayd's folder of the trace (relative to its output folder).
    pub fn trace_path(&self) -> String {
        format!("{}/{}", self.hostname, self.session)
    }

    /// Refuse up front what relayd would refuse later: names that do not
    /// fit the protocol.
    pub fn check(&self) -> Result<(), RelaydError> {
        wire::create_session(&self.session, &self.hostname, 1, false)?;
        wire::add_stream(
            "metadata",
            &format!("{}/snapshot-999/kernel", self.trace_path()),
        )?;
        Ok(())
    }
}

/// What the streaming did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelaydReport {
    /// A live session (else: flight-recorder snapshots only).
    pub live: bool,
    /// relayd's address and the session's path on it.
    pub endpoint: String,
    pub path: String,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    /// Packets (and their events) the network copy lacks.
    pub unsent_packets: u64,
    pub unsent_events: u64,
    /// Of those, dropped because the queue to the sender was full.
    pub unsent_queue_full: u64,
    /// Seconds from the start of streaming at which the connection ended
    /// (relayd closed it, or stopped answering), and why.
    pub lost_at_s: Option<f64>,
    pub error: Option<String>,
    /// Flight-recorder snapshots sent as relayd snapshot sessions.
    pub snapshots_sent: u64,
    pub snapshot_errors: Vec<String>,
}

impl RelaydReport {
    /// One line for the summary, e.g. "sent 12 packets (3145728 bytes);
    /// not sent: 3 packets (5120 events) after the relayd closed the
    /// connection at 4.2 s".
    pub fn summary(&self) -> String {
        if !self.live {
            return format!(
                "{} flight-recorder window(s) sent to {} as snapshot sessions ({}/<snapshot-N|end>/kernel){}",
                self.snapshots_sent,
                self.endpoint,
                self.path.trim_end_matches("/kernel"),
                match self.snapshot_errors.len() {
                    0 => String::new(),
                    n => format!("; {n} not sent"),
                }
            );
        }
        let mut s = format!(
            "sent {} packets ({} bytes) to {} ({})",
            self.sent_packets, self.sent_bytes, self.endpoint, self.path
        );
        if self.unsent_packets > 0 || self.error.is_some() {
            s.push_str(&format!(
                "; not sent: {} packets ({} events)",
                self.unsent_packets, self.unsent_events
            ));
            if let (Some(t), Some(e)) = (self.lost_at_s, &self.error) {
                s.push_str(&format!(
                    " after the relayd connection ended at {t:.1} s: {e}"
                ));
            } else if let Some(e) = &self.error {
                s.push_str(&format!(": {e}"));
            }
            if self.unsent_queue_full > 0 {
                s.push_str(&format!(
                    "; {} of them because the network fell behind (queue full)",
                    self.unsent_queue_full
                ));
            }
        }
        s
    }

    /// The report as JSON (for the engines' reports).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint,
            "path": self.path,
            "sent_packets": self.sent_packets,
            "sent_bytes": self.sent_bytes,
            "unsent_packets": self.unsent_packets,
            "unsent_events": self.unsent_events,
            "unsent_queue_full": self.unsent_queue_full,
            "lost_at_s": self.lost_at_s,
            "error": self.error,
            "snapshots_sent": self.snapshots_sent,
            "snapshot_errors": self.snapshot_errors,
            "live": self.live,
            "summary": self.summary(),
        })
    }
}
