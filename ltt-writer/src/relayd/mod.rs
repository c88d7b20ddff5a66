//! Live streaming of the trace to an lttng-relayd (Debian `lttng-tools`),
//! in relayd's own protocol, so that lttng-live viewers (`babeltrace2
//! --input-format=lttng-live`, Trace Compass) follow it while the guest
//! runs, and relayd keeps a copy in its output folder.
//!
//! - [`wire`]: the messages, as bytes;
//! - [`error`]: the client's errors; [`config`]: what to stream and
//!   where, and what the streaming did;
//! - [`conn`]: a control + data connection, with time limits;
//! - [`sink`]: the streamer, a sender thread fed through a bounded queue
//!   by the writer thread, which never waits on the network: when the
//!   queue is full or relayd is gone, the network copy loses whole
//!   packets (the local trace never does), and the report counts them.

pub mod config;
pub mod conn;
pub mod error;
pub mod sink;
pub mod wire;

pub use config::{RelaydConfig, RelaydReport};
pub use conn::{Connection, Endpoint, DEFAULT_CONTROL_PORT};
pub(crate) use error::chain;
pub use error::RelaydError;
pub use sink::{snapshot, Streamer};

/// Check that a relayd answers at `ep` (both ports, protocol version),
/// without creating anything there.
pub fn probe(ep: &Endpoint) -> Result<(u32, u32), RelaydError> {
    Connection::open(ep).map(|c| c.peer_version)
}
