//! `hvtrace record --relayd`: which relayd, session and hostname, checked
//! before anything is prepared (a relayd that does not answer is refused
//! before the guest boots and before the output folder is made), and what
//! the summary says about the streaming afterwards.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ltt_writer::relayd::{self, Endpoint, RelaydConfig};

use crate::record_args::RecordArgs;
use engine::buffers::BufferMode;

/// The relayd target of a record, or `None` without `--relayd`. Refuses a
/// malformed address, names relayd cannot take, and a relayd that does not
/// answer on both ports.
pub fn check(args: &RecordArgs) -> Result<Option<RelaydConfig>> {
    let o = args.output.to_string_lossy();
    if o.starts_with("net://") || o.starts_with("net6://") || o.starts_with("tcp://") {
        bail!(
            "-o {o}: hvtrace always writes a local trace in a folder; to stream it to a relayd as well, \
             give -o DIR --relayd {}",
            o.split_once("://").map_or("HOST", |(_, h)| h)
        );
    }
    let Some(given) = &args.relayd else {
        if args.session.is_some() || args.relayd_hostname.is_some() {
            bail!("--session and --relayd-hostname name the relayd session: they need --relayd");
        }
        return Ok(None);
    };
    let endpoint = Endpoint::parse(given).with_context(|| format!("--relayd {given}"))?;
    let session = match &args.session {
        Some(s) => s.clone(),
        None => default_session(&args.output)?,
    };
    let hostname = match &args.relayd_hostname {
        Some(h) => h.clone(),
        None => machine_hostname(),
    };
    for (what, v) in [("--session", &session), ("--relayd-hostname", &hostname)] {
        if v.is_empty() || v.contains('/') || v == "." || v == ".." {
            bail!("{what} {v:?}: relayd makes a folder of it: expected a name without '/'");
        }
    }
    let cfg = RelaydConfig::new(endpoint, &session, &hostname);
    cfg.check().context("--relayd")?;
    let (major, minor) = relayd::probe(&cfg.endpoint).with_context(|| {
        format!(
            "--relayd {given}: no lttng-relayd answers at {} (control port {}, data port {}); start one (`lttng-relayd -d`) or fix the address",
            cfg.endpoint.host, cfg.endpoint.control_port, cfg.endpoint.data_port
        )
    })?;
    if args.buffer == BufferMode::FlightRecorder {
        eprintln!(
            "hvtrace: record: flight-recorder windows go to lttng-relayd {major}.{minor} at {} as snapshot sessions in {hostname}/{session}/",
            cfg.endpoint
        );
    } else {
        eprintln!(
            "hvtrace: record: streaming to lttng-relayd {major}.{minor} at {} as {hostname}/{session} (live: net://{}:LIVE_PORT/host/{hostname}/{session})",
            cfg.endpoint, cfg.endpoint.host
        );
    }
    Ok(Some(cfg))
}

/// The output folder's name.
fn default_session(out: &Path) -> Result<String> {
    let abs = std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    match abs.file_name().and_then(|n| n.to_str()) {
        Some(n) if !n.is_empty() && n != "." && n != ".." => Ok(n.to_string()),
        _ => bail!(
            "-o {}: no folder name to call the relayd session by; pass --session NAME",
            out.display()
        ),
    }
}

fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
