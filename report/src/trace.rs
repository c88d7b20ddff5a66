//! Opening a trace folder written by hvtrace: the event catalog is rebuilt
//! from the TSDL metadata (the subset `ltt_writer` emits), then the streams
//! are decoded with `ltt_writer`'s reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ltt_writer::reader::{read_trace, DecodedEvent, FieldValue};
use ltt_writer::{Base, Catalog, FieldDecl, FieldType, HeaderKind};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}: no CTF trace here (expected DIR/kernel/metadata)")]
    NotATrace(PathBuf),
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata: {0}")]
    Metadata(String),
    #[error(transparent)]
    Read(#[from] ltt_writer::reader::ReadError),
}

/// A decoded trace: events in time order and the catalog that names them.
pub struct Trace {
    pub catalog: Catalog,
    pub events: Vec<DecodedEvent>,
    /// Clock offset from the Unix epoch, ns: `ts + offset` is wall time.
    pub clock_offset_ns: u64,
    pub hostname: String,
    pub kernel_release: String,
    /// Field index by (event id, field name), for lookups by name.
    index: HashMap<(u32, String), usize>,
}

impl Trace {
    pub fn open(dir: &Path) -> Result<Trace, TraceError> {
        let kernel = if dir.join("kernel").is_dir() {
            dir.join("kernel")
        } else {
            dir.to_path_buf()
        };
        let meta_path = kernel.join("metadata");
        if !meta_path.is_file() {
            return Err(TraceError::NotATrace(dir.to_path_buf()));
        }
        let text = std::fs::read_to_string(&meta_path).map_err(|source| TraceError::Io {
            path: meta_path.clone(),
            source,
        })?;
        let meta = parse_metadata(&text)?;
        let events = read_trace(&kernel, &meta.catalog, meta.header)?;
        let mut index = HashMap::new();
        for decl in meta.catalog.events() {
            for (i, f) in decl.fields.iter().enumerate() {
                index.insert((decl.id, f.name.clone()), i);
            }
        }
        Ok(Trace {
            catalog: meta.catalog,
            events,
            clock_offset_ns: meta.clock_offset_ns,
            hostname: meta.env.get("hostname").cloned().unwrap_or_default(),
            kernel_release: meta.env.get("kernel_release").cloned().unwrap_or_default(),
            index,
        })
    }

    pub fn name(&self, ev: &DecodedEvent) -> &str {
        self.catalog
            .event(ev.id)
            .map(|d| d.name.as_str())
            .unwrap_or("?")
    }

    pub fn field<'a>(&self, ev: &'a DecodedEvent, name: &str) -> Option<&'a FieldValue> {
        let i = *self.index.get(&(ev.id, name.to_string()))?;
        ev.fields.get(i)
    }

    pub fn int(&self, ev: &DecodedEvent, name: &str) -> Option<i64> {
        self.field(ev, name).and_then(FieldValue::as_i64)
    }

    pub fn text(&self, ev: &DecodedEvent, name: &str) -> Option<String> {
        match self.field(ev, name)? {
            FieldValue::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

pub struct Metadata {
    pub catalog: Catalog,
    pub header: HeaderKind,
    pub clock_offset_ns: u64,
    pub env: HashMap<String, String>,
}

/// Parses the metadata subset ltt_writer writes: env, clock offset, the
/// event header kind and every `event { ... }` block's fields.
pub fn parse_metadata(text: &str) -> Result<Metadata, TraceError> {
    let bad = |m: &str| TraceError::Metadata(m.to_string());
    if !text.starts_with("/* CTF 1.8") {
        return Err(bad("not CTF 1.8 metadata"));
    }
    let header = if text.contains("event.header := struct event_header_large") {
        HeaderKind::Large
    } else {
        HeaderKind::Compact
    };
    let env = block(text, "env {")
        .map(|b| {
            b.lines()
                .filter_map(|l| {
                    let (k, v) = l.trim().trim_end_matches(';').split_once(" = ")?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    let clock_offset_ns = block(text, "clock {")
        .and_then(|b| {
            b.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("offset = ")?
                    .trim_end_matches(';')
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0);

    let mut catalog = Catalog::new();
    let mut rest = text;
    while let Some(at) = rest.find("\nevent {") {
        let body_start = at + "\nevent {".len();
        let end = rest[body_start..]
            .find("\n};")
            .ok_or_else(|| bad("unterminated event block"))?;
        let body = &rest[body_start..body_start + end];
        rest = &rest[body_start + end..];
        let name = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .map(|v| v.trim_end_matches(';').trim_matches('"'))
            .ok_or_else(|| bad("event without a name"))?;
        let id: u32 = body
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("id = ")?
                    .trim_end_matches(';')
                    .parse()
                    .ok()
            })
            .ok_or_else(|| bad("event without an id"))?;
        let fields = body
            .lines()
            .map(str::trim)
            .filter(|l| {
                (l.starts_with("integer {") || l.starts_with("string {")) && !is_sequence_length(l)
            })
            .map(parse_field)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| TraceError::Metadata(format!("event {name}: unsupported field")))?;
        // ltt_writer numbers events in declaration order from 0.
        let got = catalog
            .add_event(name, fields)
            .map_err(|e| TraceError::Metadata(e.to_string()))?;
        if got != id {
            return Err(TraceError::Metadata(format!(
                "event {name}: id {id} out of order"
            )));
        }
    }
    if catalog.events().is_empty() {
        return Err(bad("no events declared"));
    }
    Ok(Metadata {
        catalog,
        header,
        clock_offset_ns,
        env,
    })
}

/// A sequence's length field (`... } __NAME_length;`), which the reader
/// takes with its sequence; not a syscall argument that is named `length`
/// (ftruncate's, declared `} _length;`).
fn is_sequence_length(line: &str) -> bool {
    line.rsplit('}')
        .next()
        .map(|decl| decl.trim().trim_end_matches(';'))
        .is_some_and(|name| name.starts_with("__") && name.ends_with("_length"))
}

fn block<'a>(text: &'a str, start: &str) -> Option<&'a str> {
    let at = text.find(start)? + start.len();
    let end = text[at..].find("};")?;
    Some(&text[at..at + end])
}

/// One field line: `integer { size = 32; ... } _name;`, `..._name[16];`,
/// `..._name[ __name_length ];` or `string { encoding = UTF8; } _name;`.
fn parse_field(line: &str) -> Option<FieldDecl> {
    let close = line.find('}')?;
    let (attrs, decl) = (
        &line[..close],
        line[close + 1..].trim().trim_end_matches(';'),
    );
    let (name, array) = match decl.split_once('[') {
        Some((n, a)) => (n.trim(), Some(a.trim_end_matches(']').trim())),
        None => (decl, None),
    };
    let name = name.strip_prefix('_').unwrap_or(name);
    if line.starts_with("string") {
        return Some(FieldDecl::new(name, FieldType::Str));
    }
    let attr = |key: &str| -> Option<&str> {
        attrs.split(';').find_map(|kv| {
            kv.trim()
                .trim_start_matches("integer {")
                .trim()
                .strip_prefix(key)?
                .strip_prefix(" = ")
        })
    };
    let bits: u8 = attr("size")?.trim().parse().ok()?;
    let signed = matches!(attr("signed")?.trim(), "1" | "true");
    let text = attr("encoding").map(str::trim) == Some("UTF8");
    let base = match attr("base").map(str::trim) {
        Some("16") => Base::Hex,
        Some("8") => Base::Oct,
        _ => Base::Dec,
    };
    let big_endian = attr("byte_order").map(str::trim) == Some("be");
    let ty = match array {
        None if big_endian => FieldType::NetHex { bits },
        None => FieldType::Int { bits, signed, base },
        Some(len) => match len.parse::<u16>() {
            Ok(len) if text => FieldType::Text { len },
            Ok(len) => FieldType::IntArray {
                bits,
                signed,
                base,
                len,
            },
            Err(_) => FieldType::IntSeq { bits, signed, base },
        },
    };
    Some(FieldDecl::new(name, ty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltt_writer::{ArgDir, ArgKind, SyscallArg, SyscallDecl};

    fn arg(name: &str, kind: ArgKind) -> SyscallArg {
        SyscallArg {
            name: name.into(),
            kind,
            dir: ArgDir::In,
        }
    }

    /// The metadata ltt_writer writes for a catalog parses back into the
    /// same catalog: every event, id, field name and type.
    #[test]
    fn metadata_round_trips_the_writer_catalog() {
        let syscalls = vec![
            SyscallDecl {
                nr: 257,
                name: "openat".into(),
                args: vec![
                    arg("dfd", ArgKind::Signed(32)),
                    arg("filename", ArgKind::String),
                    arg("flags", ArgKind::Signed(32)),
                    arg("mode", ArgKind::Unsigned(32)),
                ],
            },
            // An argument named `length` is a field like any other (systemd's
            // journal calls ftruncate), not a sequence's length.
            SyscallDecl {
                nr: 77,
                name: "ftruncate".into(),
                args: vec![
                    arg("fd", ArgKind::Unsigned(32)),
                    arg("length", ArgKind::Unsigned(64)),
                ],
            },
        ];
        let catalog = Catalog::kernel(&syscalls).unwrap();
        let dir = std::env::temp_dir().join(format!("hvtrace-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = ltt_writer::TraceConfig::new(1, catalog.clone());
        let (writer, producers) = ltt_writer::TraceWriter::create(&dir, cfg).unwrap();
        drop(producers);
        writer.finish().unwrap();
        let text = std::fs::read_to_string(dir.join("kernel/metadata")).unwrap();
        let parsed = parse_metadata(&text).unwrap();
        assert_eq!(parsed.catalog.events(), catalog.events());
        assert_eq!(parsed.env.get("domain").map(String::as_str), Some("kernel"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
