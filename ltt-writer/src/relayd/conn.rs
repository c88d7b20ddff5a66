//! A connection to lttng-relayd: the control socket (commands and their
//! replies) and the data socket (packets), blocking, with time limits so
//! that a relayd that stops answering ends the connection instead of
//! holding its caller forever.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::error::RelaydError;
use super::wire::{self, Index, WireError};

/// Where a relayd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub control_port: u16,
    pub data_port: u16,
}

/// lttng-relayd's default control port; its data port is the next one.
pub const DEFAULT_CONTROL_PORT: u16 = 5342;

impl Endpoint {
    /// `HOST[:CTRL[:DATA]]`, optionally prefixed `net://` or `tcp://` as
    /// lttng's URLs are; IPv6 hosts in brackets. The data port defaults
    /// to the control port + 1.
    pub fn parse(s: &str) -> Result<Endpoint, RelaydError> {
        let bad = |why: &str| RelaydError::Address {
            given: s.to_string(),
            why: why.to_string(),
        };
        let rest = s
            .strip_prefix("net://")
            .or_else(|| s.strip_prefix("tcp://"))
            .unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, ports) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or_else(|| bad("no closing ]"))?;
            (h, after.strip_prefix(':').unwrap_or(after))
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, p),
                None => (rest, ""),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("expected HOST[:CONTROL_PORT[:DATA_PORT]]"));
        }
        let port = |p: &str| -> Result<u16, RelaydError> {
            p.parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port number")))
        };
        let mut parts = ports.split(':').filter(|p| !p.is_empty());
        let control_port = parts.next().map(port).transpose()?;
        let data_port = parts.next().map(port).transpose()?;
        if parts.next().is_some() {
            return Err(bad("at most two ports (control, data)"));
        }
        let control_port = control_port.unwrap_or(DEFAULT_CONTROL_PORT);
        let data_port = match data_port {
            Some(d) => d,
            None => control_port
                .checked_add(1)
                .ok_or_else(|| bad("no data port after 65535"))?,
        };
        Ok(Endpoint {
            host: host.to_string(),
            control_port,
            data_port,
        })
    }

    fn addr(&self, port: u16) -> Result<SocketAddr, RelaydError> {
        (self.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|source| RelaydError::Resolve {
                host: self.host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| RelaydError::Resolve {
                host: self.host.clone(),
                source: std::io::Error::other("no address"),
            })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "[{}]:{}:{}",
                self.host, self.control_port, self.data_port
            )
        } else {
            write!(f, "{}:{}:{}", self.host, self.control_port, self.data_port)
        }
    }
}

/// How long a connect, a send or a reply may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn connect(addr: SocketAddr, what: &'static str) -> Result<TcpStream, RelaydError> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|source| RelaydError::Connect { what, addr, source })?;
    let io = |source| RelaydError::Io { what, source };
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    Ok(s)
}

/// An open control and data connection with a version agreed.
pub struct Connection {
    control: TcpStream,
    data: TcpStream,
    /// relayd's own protocol version.
    pub peer_version: (u32, u32),
}

impl Connection {
    /// Connect both sockets and agree on the protocol version.
    pub fn open(ep: &Endpoint) -> Result<Connection, RelaydError> {
        let control = connect(ep.addr(ep.control_port)?, "control")?;
        let data = connect(ep.addr(ep.data_port)?, "data")?;
        let mut c = Connection {
            control,
            data,
            peer_version: (0, 0),
        };
        c.send(&wire::version())?;
        let mut r = [0u8; wire::VERSION_LEN];
        c.reply(&mut r)?;
        let (major, minor) = wire::parse_version(&r);
        c.peer_version = (major, minor);
        if major != wire::MAJOR || minor < wire::MINOR {
            return Err(RelaydError::Version { major, minor });
        }
        Ok(c)
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), RelaydError> {
        self.control
            .write_all(msg)
            .map_err(|source| RelaydError::Io {
                what: "control",
                source,
            })
    }

    fn reply(&mut self, buf: &mut [u8]) -> Result<(), RelaydError> {
        self.control.read_exact(buf).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                RelaydError::Closed
            } else {
                RelaydError::Io {
                    what: "control",
                    source,
                }
            }
        })
    }

    fn generic(&mut self, command: &'static str, msg: &[u8]) -> Result<(), RelaydError> {
        self.send(msg)?;
        let mut r = [0u8; wire::GENERIC_REPLY_LEN];
        self.reply(&mut r)?;
        match wire::parse_generic(&r) {
            wire::LTTNG_OK => Ok(()),
            code => Err(RelaydError::Refused { command, code }),
        }
    }

    fn with_id(&mut self, command: &'static str, msg: &[u8]) -> Result<u64, RelaydError> {
        self.send(msg)?;
        let mut r = [0u8; 12];
        self.reply(&mut r)?;
        match wire::parse_id_reply(&r) {
            (id, wire::LTTNG_OK) => Ok(id),
            (_, code) => Err(RelaydError::Refused { command, code }),
        }
    }

    /// Create the session (live when `live_timer_us` > 0); returns its id.
    pub fn create_session(
        &mut self,
        name: &str,
        hostname: &str,
        live_timer_us: u32,
        snapshot: bool,
    ) -> Result<u64, RelaydError> {
        let m = wire::create_session(name, hostname, live_timer_us, snapshot)?;
        self.with_id("create session", &m)
    }

    /// Add a stream; returns relayd's handle of it.
    pub fn add_stream(&mut self, channel: &str, path: &str) -> Result<u64, RelaydError> {
        let m = wire::add_stream(channel, path)?;
        self.with_id("add stream", &m)
    }

    pub fn streams_sent(&mut self) -> Result<(), RelaydError> {
        self.generic("streams sent", &wire::streams_sent())
    }

    /// Append metadata text (relayd does not answer this one).
    pub fn metadata(&mut self, stream: u64, text: &[u8]) -> Result<(), RelaydError> {
        self.send(&wire::metadata(stream, text))
    }

    /// Send one packet's content on the data socket (relayd pads it with
    /// zeros to `packet_len`).
    pub fn data(
        &mut self,
        stream: u64,
        net_seq: u64,
        content: &[u8],
        packet_len: usize,
    ) -> Result<(), RelaydError> {
        let io = |source| RelaydError::Io {
            what: "data",
            source,
        };
        let padding = packet_len.saturating_sub(content.len());
        let h = wire::data_header(
            stream,
            net_seq,
            u32::try_from(content.len()).map_err(|_| RelaydError::TooBig(content.len()))?,
            u32::try_from(padding).map_err(|_| RelaydError::TooBig(padding))?,
        );
        self.data.write_all(&h).map_err(io)?;
        self.data.write_all(content).map_err(io)
    }

    /// Send a packet's index (live sessions: viewers find packets by it).
    pub fn index(&mut self, index: &Index) -> Result<(), RelaydError> {
        self.generic("send index", &wire::index(index))
    }

    /// A live beacon for an idle stream.
    pub fn beacon(
        &mut self,
        stream: u64,
        net_seq: u64,
        stream_id: u64,
        ts: u64,
    ) -> Result<(), RelaydError> {
        self.generic("beacon", &wire::beacon(stream, net_seq, stream_id, ts))
    }

    pub fn close_stream(&mut self, stream: u64, last_seq: u64) -> Result<(), RelaydError> {
        self.generic("close stream", &wire::close_stream(stream, last_seq))
    }
}

impl From<WireError> for RelaydError {
    fn from(e: WireError) -> Self {
        RelaydError::Wire(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = |s| Endpoint::parse(s).unwrap();
        assert_eq!(
            e("relay.example"),
            Endpoint {
                host: "relay.example".into(),
                control_port: 5342,
                data_port: 5343
            }
        );
        assert_eq!(e("net://127.0.0.1:6000").data_port, 6001);
        assert_eq!(e("tcp://h:6000:7000/").data_port, 7000);
        assert_eq!(e("[::1]:6000").host, "::1");
        assert_eq!(e(&e("[::1]:6000").to_string()), e("[::1]:6000"));
        assert!(Endpoint::parse("h:0").is_err());
        assert!(Endpoint::parse("h:1:2:3").is_err());
        assert!(Endpoint::parse("net://").is_err());
        assert!(Endpoint::parse("h:65535").is_err());
    }
}
