//! An I/O error with what was being done: the `Io` case of each module's
//! error, its text `{what}: {the I/O error}` when told with its causes.

/// What was being done, and the I/O error it met.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct IoContext {
    what: String,
    source: std::io::Error,
}

/// For `map_err`: the I/O error with what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IoContext {
    move |source| IoContext {
        what: what.into(),
        source,
    }
}
