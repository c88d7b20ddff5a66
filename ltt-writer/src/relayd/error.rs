//! The relayd client's errors, and the chain of an error's sources
//! that the streamer reports.

use std::net::SocketAddr;

use super::wire;

/// Errors of the relayd client.
#[derive(Debug, thiserror::Error)]
pub enum RelaydError {
    #[error("relayd address {given:?}: {why}")]
    Address { given: String, why: String },
    #[error("cannot resolve relayd host {host}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot connect to relayd's {what} port at {addr}")]
    Connect {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("relayd {what} connection")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("relayd closed the connection")]
    Closed,
    #[error(
        "relayd speaks protocol {major}.{minor}; hvtrace needs 2.{} or later",
        wire::MINOR
    )]
    Version { major: u32, minor: u32 },
    #[error("relayd refused {command} (code {code})")]
    Refused { command: &'static str, code: u32 },
    #[error(transparent)]
    Wire(wire::WireError),
    #[error("a packet part of {0} bytes does not fit the protocol's 32-bit size")]
    TooBig(usize),
    #[error("cannot start the relayd sender thread")]
    Spawn(std::io::Error),
}

/// `e` and its sources, one after the other.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
