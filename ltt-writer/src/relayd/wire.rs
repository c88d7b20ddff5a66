//! The messages of lttng-relayd's control and data protocol, as bytes.
//!
//! Every integer is big-endian (network order); structures are packed.
//! hvtrace speaks protocol 2.10: the last version before trace chunks
//! (2.11), which relayd 2.11 and later still accept from a peer, giving
//! its session an anonymous chunk rooted at relayd's output folder (the
//! stream path then names the whole trace folder). 2.10 has the 2.4
//! session creation (with the live timer), the 2.2 stream addition and
//! the 2.8 index (with the stream instance and packet sequence number).

/// Protocol version announced.
pub const MAJOR: u32 = 2;
pub const MINOR: u32 = 10;

/// Command numbers (`enum lttcomm_relayd_command`).
pub mod cmd {
    pub const ADD_STREAM: u32 = 1;
    pub const CREATE_SESSION: u32 = 2;
    pub const VERSION: u32 = 5;
    pub const SEND_METADATA: u32 = 6;
    pub const CLOSE_STREAM: u32 = 7;
    pub const SEND_INDEX: u32 = 13;
    pub const STREAMS_SENT: u32 = 16;
}

/// `LTTNG_OK`, the success code of replies.
pub const LTTNG_OK: u32 = 10;

/// Field sizes of the fixed-size strings (`LTTNG_NAME_MAX`,
/// `LTTNG_HOST_NAME_MAX`, `DEFAULT_STREAM_NAME_LEN` = symbol name length
/// 256 + 8, `LTTNG_PATH_MAX`).
pub const NAME_MAX: usize = 255;
pub const HOST_NAME_MAX: usize = 64;
pub const STREAM_NAME_LEN: usize = 264;
pub const PATH_MAX: usize = 4096;

/// Control header: circuit id (unused), payload size, command, command
/// version.
pub const HEADER_LEN: usize = 8 + 8 + 4 + 4;
/// Data header: circuit id, relayd stream id, network sequence number,
/// payload size, padding size (zeros relayd appends itself).
pub const DATA_HEADER_LEN: usize = 8 + 8 + 8 + 4 + 4;
/// Session creation, 2.4 layout: name, hostname, live timer (µs), snapshot.
pub const CREATE_SESSION_LEN: usize = NAME_MAX + HOST_NAME_MAX + 4 + 4;
/// Stream addition, 2.2 layout: channel name, path, tracefile size and count.
pub const ADD_STREAM_LEN: usize = STREAM_NAME_LEN + PATH_MAX + 8 + 8;
/// Index, 2.8 layout: ten u64.
pub const INDEX_LEN: usize = 10 * 8;
/// Metadata payload head: relayd stream id, padding size.
pub const METADATA_HEAD_LEN: usize = 8 + 4;
/// Stream close: relayd stream id, last network sequence number.
pub const CLOSE_STREAM_LEN: usize = 16;

/// Replies: session (id, code), stream (handle, code), generic (code),
/// version (major, minor).
pub const SESSION_REPLY_LEN: usize = 12;
pub const STREAM_REPLY_LEN: usize = 12;
pub const GENERIC_REPLY_LEN: usize = 4;
pub const VERSION_LEN: usize = 8;

/// Errors of message encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{what} {value:?} is too long: at most {max} bytes")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} holds a NUL byte")]
    Nul { what: &'static str, value: String },
}

fn put_str(out: &mut Vec<u8>, what: &'static str, s: &str, field: usize) -> Result<(), WireError> {
    if s.contains('\0') {
        return Err(WireError::Nul {
            what,
            value: s.into(),
        });
    }
    // The field keeps a terminating NUL.
    if s.len() >= field {
        return Err(WireError::TooLong {
            what,
            value: s.into(),
            max: field - 1,
        });
    }
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + field - s.len(), 0);
    Ok(())
}

/// A control message: header then payload.
fn message(cmd: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    m.extend_from_slice(&cmd.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// `VERSION`: the protocol version this side speaks.
pub fn version() -> Vec<u8> {
    let mut p = Vec::with_capacity(VERSION_LEN);
    p.extend_from_slice(&MAJOR.to_be_bytes());
    p.extend_from_slice(&MINOR.to_be_bytes());
    message(cmd::VERSION, &p)
}

/// `CREATE_SESSION` (2.4 layout). `live_timer_us` > 0 makes a live
/// session, which viewers can list and follow.
pub fn create_session(
    name: &str,
    hostname: &str,
    live_timer_us: u32,
    snapshot: bool,
) -> Result<Vec<u8>, WireError> {
    let mut p = Vec::with_capacity(CREATE_SESSION_LEN);
    put_str(&mut p, "session name", name, NAME_MAX)?;
    put_str(&mut p, "hostname", hostname, HOST_NAME_MAX)?;
    p.extend_from_slice(&live_timer_us.to_be_bytes());
    p.extend_from_slice(&u32::from(snapshot).to_be_bytes());
    Ok(message(cmd::CREATE_SESSION, &p))
}

/// `ADD_STREAM` (2.2 layout): stream file `channel` in folder `path`
/// (relative to relayd's output folder), no tracefile rotation.
pub fn add_stream(channel: &str, path: &str) -> Result<Vec<u8>, WireError> {
    let mut p = Vec::with_capacity(ADD_STREAM_LEN);
    put_str(&mut p, "channel name", channel, STREAM_NAME_LEN)?;
    put_str(&mut p, "stream path", path, PATH_MAX)?;
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&0u64.to_be_bytes());
    Ok(message(cmd::ADD_STREAM, &p))
}

/// `STREAMS_SENT`: every stream is added; relayd shows them to viewers.
pub fn streams_sent() -> Vec<u8> {
    message(cmd::STREAMS_SENT, &[])
}

/// `SEND_METADATA`: metadata bytes appended to stream `stream` (no reply).
pub fn metadata(stream: u64, bytes: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(METADATA_HEAD_LEN + bytes.len());
    p.extend_from_slice(&stream.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(bytes);
    message(cmd::SEND_METADATA, &p)
}

/// `CLOSE_STREAM`: stream `stream` ends after sequence number `last_seq`
/// (`u64::MAX` when it sent nothing).
pub fn close_stream(stream: u64, last_seq: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(CLOSE_STREAM_LEN);
    p.extend_from_slice(&stream.to_be_bytes());
    p.extend_from_slice(&last_seq.to_be_bytes());
    message(cmd::CLOSE_STREAM, &p)
}

/// What relayd's index of one packet holds (a live viewer reads the
/// packets through it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// relayd's handle of the stream, and the packet's network sequence
    /// number on it.
    pub relay_stream: u64,
    pub net_seq: u64,
    /// Bits, as in the packet context (and relayd's index files): the
    /// whole packet, and its content (header included).
    pub packet_size: u64,
    pub content_size: u64,
    pub timestamp_begin: u64,
    pub timestamp_end: u64,
    /// Running total of discarded events, as in the packet context.
    pub events_discarded: u64,
    /// CTF stream class id, stream instance id (the cpu) and the packet's
    /// sequence number in its stream.
    pub stream_id: u64,
    pub stream_instance_id: u64,
    pub packet_seq_num: u64,
}

/// `SEND_INDEX`.
pub fn index(i: &Index) -> Vec<u8> {
    let mut p = Vec::with_capacity(INDEX_LEN);
    for v in [
        i.relay_stream,
        i.net_seq,
        i.packet_size,
        i.content_size,
        i.timestamp_begin,
        i.timestamp_end,
        i.events_discarded,
        i.stream_id,
        i.stream_instance_id,
        i.packet_seq_num,
    ] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    message(cmd::SEND_INDEX, &p)
}

/// A live beacon: an index with packet size 0 telling viewers that the
/// stream has nothing new up to `timestamp_end`.
pub fn beacon(relay_stream: u64, net_seq: u64, stream_id: u64, timestamp_end: u64) -> Vec<u8> {
    index(&Index {
        relay_stream,
        net_seq,
        timestamp_end,
        stream_id,
        ..Index::default()
    })
}

/// The data header of a packet sent on the data connection: `len`
/// content bytes follow, relayd pads with `padding` zeros.
pub fn data_header(
    relay_stream: u64,
    net_seq: u64,
    len: u32,
    padding: u32,
) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[8..16].copy_from_slice(&relay_stream.to_be_bytes());
    h[16..24].copy_from_slice(&net_seq.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h[28..32].copy_from_slice(&padding.to_be_bytes());
    h
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A `VERSION` reply: relayd's (major, minor).
pub fn parse_version(b: &[u8; VERSION_LEN]) -> (u32, u32) {
    (be32(b, 0), be32(b, 4))
}

/// A session or stream reply: (id or handle, code).
pub fn parse_id_reply(b: &[u8; 12]) -> (u64, u32) {
    (be64(b, 0), be32(b, 8))
}

/// A generic reply: its code.
pub fn parse_generic(b: &[u8; GENERIC_REPLY_LEN]) -> u32 {
    be32(b, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sizes of the packed structures of lttng-tools' relayd.h (protocol
    // 2.10): header 24, data header 32, create session 2.4 = 255 + 64 +
    // 4 + 4, add stream 2.2 = 264 + 4096 + 8 + 8, index 2.8 = 80.
    #[test]
    fn layouts_have_relayd_sizes() {
        assert_eq!(HEADER_LEN, 24);
        assert_eq!(DATA_HEADER_LEN, 32);
        assert_eq!(create_session("s", "h", 1, false).unwrap().len(), 24 + 327);
        assert_eq!(
            add_stream("metadata", "h/s/kernel").unwrap().len(),
            24 + 4376
        );
        assert_eq!(index(&Index::default()).len(), 24 + 80);
        assert_eq!(close_stream(1, 2).len(), 24 + 16);
        assert_eq!(version().len(), 24 + 8);
        assert_eq!(streams_sent().len(), 24);
    }

    #[test]
    fn header_is_big_endian() {
        let m = version();
        // circuit id 0, payload size 8, command 5, command version 0.
        assert_eq!(&m[..8], &[0; 8]);
        assert_eq!(&m[8..16], &[0, 0, 0, 0, 0, 0, 0, 8]);
        assert_eq!(&m[16..20], &[0, 0, 0, 5]);
        assert_eq!(&m[20..24], &[0; 4]);
        assert_eq!(&m[24..], &[0, 0, 0, 2, 0, 0, 0, 10]);
    }

    #[test]
    fn create_session_places_fields() {
        let m = create_session("sess", "host", 1_000_000, false).unwrap();
        let p = &m[HEADER_LEN..];
        assert_eq!(&p[..5], b"sess\0");
        assert!(p[4..255].iter().all(|&b| b == 0));
        assert_eq!(&p[255..260], b"host\0");
        assert_eq!(&p[319..323], &1_000_000u32.to_be_bytes());
        assert_eq!(&p[323..327], &[0; 4]);
        assert_eq!(&m[16..20], &[0, 0, 0, 2]);
    }

    #[test]
    fn strings_must_fit_with_their_nul() {
        assert!(create_session(&"x".repeat(254), "h", 0, false).is_ok());
        assert!(matches!(
            create_session(&"x".repeat(255), "h", 0, false),
            Err(WireError::TooLong { max: 254, .. })
        ));
        assert!(matches!(
            create_session("s", &"h".repeat(64), 0, false),
            Err(WireError::TooLong { max: 63, .. })
        ));
        assert!(matches!(
            add_stream("a\0b", "p"),
            Err(WireError::Nul { .. })
        ));
    }

    #[test]
    fn add_stream_places_fields() {
        let m = add_stream("channel0_3", "h/s/kernel").unwrap();
        let p = &m[HEADER_LEN..];
        assert_eq!(&p[..11], b"channel0_3\0");
        assert_eq!(&p[264..275], b"h/s/kernel\0");
        assert_eq!(&p[4360..4376], &[0; 16]);
        assert_eq!(&m[8..16], &4376u64.to_be_bytes());
    }

    #[test]
    fn index_order_and_beacon() {
        let i = Index {
            relay_stream: 1,
            net_seq: 2,
            packet_size: 3,
            content_size: 4,
            timestamp_begin: 5,
            timestamp_end: 6,
            events_discarded: 7,
            stream_id: 8,
            stream_instance_id: 9,
            packet_seq_num: 10,
        };
        let m = index(&i);
        for k in 0..10u64 {
            let at = HEADER_LEN + 8 * k as usize;
            assert_eq!(be64(&m, at), k + 1);
        }
        assert_eq!(&m[16..20], &13u32.to_be_bytes());
        let b = beacon(4, 9, 0, 77);
        assert_eq!(be64(&b, HEADER_LEN + 16), 0, "packet size 0 marks a beacon");
        assert_eq!(be64(&b, HEADER_LEN + 40), 77);
    }

    #[test]
    fn data_header_and_metadata() {
        let h = data_header(3, 7, 100, 28);
        assert_eq!(be64(&h, 0), 0);
        assert_eq!(be64(&h, 8), 3);
        assert_eq!(be64(&h, 16), 7);
        assert_eq!(be32(&h, 24), 100);
        assert_eq!(be32(&h, 28), 28);
        let m = metadata(5, b"/* CTF 1.8 */");
        assert_eq!(be64(&m, 8), 12 + 13);
        assert_eq!(be64(&m, HEADER_LEN), 5);
        assert_eq!(be32(&m, HEADER_LEN + 8), 0);
        assert_eq!(&m[HEADER_LEN + 12..], b"/* CTF 1.8 */");
    }

    #[test]
    fn replies() {
        assert_eq!(parse_version(&[0, 0, 0, 2, 0, 0, 0, 13]), (2, 13));
        let mut r = [0u8; 12];
        r[7] = 42;
        r[11] = 10;
        assert_eq!(parse_id_reply(&r), (42, LTTNG_OK));
        assert_eq!(parse_generic(&[0, 0, 0, 10]), LTTNG_OK);
    }
}
