//! The streamer: the writer thread offers each closed packet (a copy of
//! its content) to a bounded queue, never waiting; a sender thread sends
//! them to relayd with their index, announces idle streams with live
//! beacons, and closes the streams at the end. A packet that finds the
//! queue full, or that comes after the connection ended, is counted as
//! not sent.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use super::config::{RelaydConfig, RelaydReport};
use super::conn::Connection;
use super::error::{chain, RelaydError};
use super::wire::Index;
use crate::packet::{read_packet_header, PacketInfo};

struct Item {
    cpu: u32,
    content: Vec<u8>,
    info: PacketInfo,
    events: u64,
}

/// relayd's view of one of our streams.
struct Stream {
    handle: u64,
    next_seq: u64,
    last_ts_end: u64,
    last_sent: Instant,
}

/// CTF stream class id of the kernel channel (see `metadata`).
const STREAM_CLASS: u64 = 0;

/// A session streaming to relayd.
pub struct Streamer {
    tx: Option<Sender<Item>>,
    thread: Option<JoinHandle<RelaydReport>>,
    queue_full_packets: u64,
    queue_full_events: u64,
    live_timer: Duration,
}

fn live_us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
}

/// Open a session and its streams: `metadata`, then `channel0_<cpu>`.
fn open_session(
    cfg: &RelaydConfig,
    path: &str,
    live: bool,
    metadata: &str,
    ncpus: u32,
) -> Result<(Connection, u64, Vec<u64>), RelaydError> {
    let mut c = Connection::open(&cfg.endpoint)?;
    let live_timer = if live { live_us(cfg.live_timer) } else { 0 };
    c.create_session(&cfg.session, &cfg.hostname, live_timer, !live)?;
    let md = c.add_stream("metadata", path)?;
    c.metadata(md, metadata.as_bytes())?;
    let streams = (0..ncpus)
        .map(|cpu| c.add_stream(&format!("channel0_{cpu}"), path))
        .collect::<Result<Vec<_>, _>>()?;
    c.streams_sent()?;
    Ok((c, md, streams))
}

fn index_of(s: &Stream, info: &PacketInfo) -> Index {
    Index {
        relay_stream: s.handle,
        net_seq: s.next_seq,
        packet_size: info.packet_len as u64 * 8,
        content_size: info.content_len as u64 * 8,
        timestamp_begin: info.ts_begin,
        timestamp_end: info.ts_end,
        events_discarded: info.discarded,
        stream_id: STREAM_CLASS,
        stream_instance_id: u64::from(info.cpu),
        packet_seq_num: info.seq,
    }
}

impl Streamer {
    /// Connect, create the live session with its streams and metadata,
    /// and start the sender thread.
    pub fn start(cfg: &RelaydConfig, metadata: &str, ncpus: u32) -> Result<Streamer, RelaydError> {
        let path = format!("{}/kernel", cfg.trace_path());
        let (conn, md, handles) = open_session(cfg, &path, true, metadata, ncpus)?;
        let (tx, rx) = bounded::<Item>(cfg.queue_packets.max(1));
        let now = Instant::now();
        let streams = handles
            .into_iter()
            .map(|handle| Stream {
                handle,
                next_seq: 0,
                last_ts_end: 0,
                last_sent: now,
            })
            .collect();
        let sender = Sender_ {
            conn: Some(conn),
            metadata: md,
            streams,
            started: now,
            live_timer: cfg.live_timer,
            report: RelaydReport {
                endpoint: cfg.endpoint.to_string(),
                path,
                ..RelaydReport::default()
            },
        };
        let thread = std::thread::Builder::new()
            .name("relayd-sender".into())
            .spawn(move || sender.run(rx))
            .map_err(RelaydError::Spawn)?;
        Ok(Streamer {
            tx: Some(tx),
            thread: Some(thread),
            queue_full_packets: 0,
            queue_full_events: 0,
            live_timer: cfg.live_timer,
        })
    }

    /// The live timer: how often the writer should close partial packets.
    pub fn live_timer(&self) -> Duration {
        self.live_timer
    }

    /// Offer a closed packet of vCPU `cpu` holding `events` events; never
    /// blocks (a full queue drops it from the network copy).
    pub fn offer(&mut self, cpu: u32, packet: &[u8], events: u64) {
        let Some(info) = read_packet_header(packet) else {
            return;
        };
        let content = packet[..info.content_len.min(packet.len())].to_vec();
        let item = Item {
            cpu,
            content,
            info,
            events,
        };
        if let Some(tx) = &self.tx {
            match tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(i) | TrySendError::Disconnected(i)) => {
                    self.queue_full_packets += 1;
                    self.queue_full_events += i.events;
                }
            }
        }
    }

    /// Send what is queued, close the streams and the connection, report.
    pub fn finish(mut self) -> RelaydReport {
        self.tx = None;
        let mut r = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => RelaydReport {
                error: Some("the relayd sender thread panicked".into()),
                ..RelaydReport::default()
            },
        };
        r.unsent_packets += self.queue_full_packets;
        r.unsent_events += self.queue_full_events;
        r.unsent_queue_full = self.queue_full_packets;
        r
    }
}

/// The sender thread's state.
struct Sender_ {
    conn: Option<Connection>,
    metadata: u64,
    streams: Vec<Stream>,
    started: Instant,
    live_timer: Duration,
    report: RelaydReport,
}

impl Sender_ {
    fn run(mut self, rx: Receiver<Item>) -> RelaydReport {
        loop {
            match rx.recv_timeout(self.live_timer) {
                Ok(item) => self.send(item),
                Err(RecvTimeoutError::Timeout) => self.beacons(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.close();
        self.report
    }

    fn lost(&mut self, e: &RelaydError) {
        self.conn = None;
        self.report.lost_at_s = Some(self.started.elapsed().as_secs_f64());
        self.report.error = Some(chain(e));
    }

    fn send(&mut self, item: Item) {
        let (Some(conn), Some(s)) = (self.conn.as_mut(), self.streams.get_mut(item.cpu as usize))
        else {
            self.report.unsent_packets += 1;
            self.report.unsent_events += item.events;
            return;
        };
        let index = index_of(s, &item.info);
        let sent = conn
            .data(s.handle, s.next_seq, &item.content, item.info.packet_len)
            .and_then(|()| conn.index(&index));
        match sent {
            Ok(()) => {
                s.next_seq += 1;
                s.last_ts_end = item.info.ts_end;
                s.last_sent = Instant::now();
                self.report.sent_packets += 1;
                self.report.sent_bytes += item.info.packet_len as u64;
            }
            Err(e) => {
                self.report.unsent_packets += 1;
                self.report.unsent_events += item.events;
                self.lost(&e);
            }
        }
    }

    /// Tell viewers that a stream idle for a live period has nothing new
    /// after its last packet.
    fn beacons(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut err = None;
        for s in &mut self.streams {
            if s.next_seq == 0 || s.last_sent.elapsed() < self.live_timer {
                continue;
            }
            if let Err(e) = conn.beacon(s.handle, s.next_seq - 1, STREAM_CLASS, s.last_ts_end) {
                err = Some(e);
                break;
            }
            s.last_sent = Instant::now();
        }
        if let Some(e) = err {
            self.lost(&e);
        }
    }

    fn close(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // relayd closes a session as its connection ends, and a live
        // viewer that has not yet asked for the last packets' indexes is
        // then told the streams hung up: leave it a live period to catch
        // up (seen with relayd 2.13 and babeltrace2 2.0, which polls
        // every 100 ms).
        if self.report.sent_packets > 0 {
            std::thread::sleep(self.live_timer);
        }
        let mut res = conn.close_stream(self.metadata, u64::MAX);
        for s in &self.streams {
            if res.is_err() {
                break;
            }
            res = conn.close_stream(s.handle, s.next_seq.wrapping_sub(1));
        }
        if let Err(e) = res {
            self.lost(&e);
        }
        self.conn = None;
    }
}

/// Send a flight-recorder window (whole packets per vCPU) as a relayd
/// snapshot session, in `HOSTNAME/SESSION/<name>/kernel`; blocking.
pub fn snapshot(
    cfg: &RelaydConfig,
    name: &str,
    metadata: &str,
    packets: &[Vec<Vec<u8>>],
) -> Result<(), RelaydError> {
    let path = format!("{}/{name}/kernel", cfg.trace_path());
    let (mut conn, md, handles) = open_session(cfg, &path, false, metadata, packets.len() as u32)?;
    for (cpu, list) in packets.iter().enumerate() {
        let mut s = Stream {
            handle: handles[cpu],
            next_seq: 0,
            last_ts_end: 0,
            last_sent: Instant::now(),
        };
        for p in list {
            let Some(info) = read_packet_header(p) else {
                continue;
            };
            // A snapshot session has no index (relayd keeps none for it).
            let content = &p[..info.content_len.min(p.len())];
            conn.data(s.handle, s.next_seq, content, info.packet_len)?;
            s.next_seq += 1;
        }
        conn.close_stream(s.handle, s.next_seq.wrapping_sub(1))?;
    }
    conn.close_stream(md, u64::MAX)
}
