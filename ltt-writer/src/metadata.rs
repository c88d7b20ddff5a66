//! CTF 1.8 TSDL metadata, laid out as lttng-modules 2.13 writes it for a
//! kernel channel with the `pid`, `tid` and `procname` contexts.

use std::fmt::Write as _;

use crate::catalog::{Base, Catalog, FieldType};

/// Errors while producing metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("formatting metadata")]
    Fmt(#[from] std::fmt::Error),
}

/// Event header layout (lttng's `--buffers-global` kernel channels use the
/// compact one by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HeaderKind {
    /// 5-bit id + 27-bit timestamp; id 31 escapes to a 32-bit id and a full
    /// 64-bit timestamp.
    #[default]
    Compact,
    /// 16-bit id + 32-bit timestamp; id 65535 escapes likewise.
    Large,
}

/// Description of the traced system, written to the `env` block.
#[derive(Clone, Debug)]
pub struct TraceEnv {
    pub hostname: String,
    /// `Linux`.
    pub sysname: String,
    /// `uname -r` of the guest (e.g. `6.1.0-53-amd64`).
    pub kernel_release: String,
    /// `uname -v` of the guest, if known.
    pub kernel_version: String,
    /// Name of the trace (lttng session name).
    pub trace_name: String,
    /// ISO-8601 basic creation date (`20261126T124800+0000`), may be empty.
    pub creation_datetime: String,
}

impl Default for TraceEnv {
    fn default() -> Self {
        TraceEnv {
            hostname: "hvtrace-guest".into(),
            sysname: "Linux".into(),
            kernel_release: String::new(),
            kernel_version: String::new(),
            trace_name: "hvtrace".into(),
            creation_datetime: String::new(),
        }
    }
}

/// Size of the packet header + context, in bytes.
pub const PACKET_HEADER_LEN: usize = 4 + 16 + 4 + 8 + 8 * 6 + 4;
/// CTF magic number.
pub const CTF_MAGIC: u32 = 0xC1FC_1FC1;

/// Format a UUID the way TSDL wants it.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A random (version 4) UUID from the OS, or from time and pid when
/// `/dev/urandom` cannot be read.
pub fn new_uuid() -> [u8; 16] {
    use std::io::Read;
    let mut u = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mix =
            t ^ ((std::process::id() as u128) << 64) ^ 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        u = mix.to_le_bytes();
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {}
            c => o.push(c),
        }
    }
    o
}

fn base_num(b: Base) -> u32 {
    match b {
        Base::Dec => 10,
        Base::Hex => 16,
        Base::Oct => 8,
    }
}

fn int_type(bits: u8, signed: bool, base: Base, utf8: bool) -> String {
    format!(
        "integer {{ size = {bits}; align = 8; signed = {}; encoding = {}; base = {}; }}",
        u8::from(signed),
        if utf8 { "UTF8" } else { "none" },
        base_num(base)
    )
}

fn field_lines(out: &mut String, name: &str, ty: &FieldType) -> Result<(), MetadataError> {
    match ty {
        FieldType::Int { bits, signed, base } => writeln!(
            out,
            "\t\t{} _{name};",
            int_type(*bits, *signed, *base, false)
        )?,
        FieldType::NetHex { bits } => writeln!(
            out,
            "\t\tinteger {{ size = {bits}; align = 8; signed = 0; encoding = none; base = 16; byte_order = be; }} _{name};"
        )?,
        FieldType::Text { len } => writeln!(
            out,
            "\t\t{} _{name}[{len}];",
            int_type(8, false, Base::Dec, true)
        )?,
        FieldType::Str => writeln!(out, "\t\tstring {{ encoding = UTF8; }} _{name};")?,
        FieldType::IntArray {
            bits,
            signed,
            base,
            len,
        } => writeln!(
            out,
            "\t\t{} _{name}[{len}];",
            int_type(*bits, *signed, *base, false)
        )?,
        FieldType::IntSeq { bits, signed, base } => {
            writeln!(
                out,
                "\t\t{} __{name}_length;",
                int_type(8, false, Base::Dec, false)
            )?;
            writeln!(
                out,
                "\t\t{} _{name}[ __{name}_length ];",
                int_type(*bits, *signed, *base, false)
            )?;
        }
    }
    Ok(())
}

/// Everything the metadata depends on.
pub struct MetadataParams<'a> {
    pub catalog: &'a Catalog,
    pub env: &'a TraceEnv,
    pub uuid: [u8; 16],
    pub clock_uuid: [u8; 16],
    /// Nanoseconds from the Epoch at which the trace clock read 0.
    pub clock_offset_ns: u64,
    pub header: HeaderKind,
}

/// Produce the TSDL text of a trace.
pub fn generate(p: &MetadataParams<'_>) -> Result<String, MetadataError> {
    let mut m = String::with_capacity(4096 + p.catalog.events().len() * 400);
    m.push_str("/* CTF 1.8 */\n\n");
    for (bits, name) in [
        (8, "uint8_t"),
        (16, "uint16_t"),
        (32, "uint32_t"),
        (64, "uint64_t"),
    ] {
        writeln!(
            m,
            "typealias integer {{ size = {bits}; align = 8; signed = false; }} := {name};"
        )?;
    }
    m.push_str("typealias integer { size = 64; align = 8; signed = false; } := unsigned long;\n");
    m.push_str("typealias integer { size = 5; align = 1; signed = false; } := uint5_t;\n");
    m.push_str("typealias integer { size = 27; align = 1; signed = false; } := uint27_t;\n\n");
    write!(
        m,
        "trace {{\n\tmajor = 1;\n\tminor = 8;\n\tuuid = \"{}\";\n\tbyte_order = le;\n\
         \tpacket.header := struct {{\n\t\tuint32_t magic;\n\t\tuint8_t  uuid[16];\n\
         \t\tuint32_t stream_id;\n\t\tuint64_t stream_instance_id;\n\t}};\n}};\n\n",
        uuid_string(&p.uuid)
    )?;
    let e = p.env;
    write!(
        m,
        "env {{\n\thostname = \"{}\";\n\tdomain = \"kernel\";\n\tsysname = \"{}\";\n\
         \tkernel_release = \"{}\";\n\tkernel_version = \"{}\";\n\ttracer_name = \"lttng-modules\";\n\
         \ttracer_major = 2;\n\ttracer_minor = 13;\n\ttracer_patchlevel = 0;\n\
         \ttrace_buffering_scheme = \"global\";\n\ttrace_name = \"{}\";\n\
         \ttrace_creation_datetime = \"{}\";\n\ttracer_producer = \"hvtrace\";\n}};\n\n",
        escape(&e.hostname),
        escape(&e.sysname),
        escape(&e.kernel_release),
        escape(&e.kernel_version),
        escape(&e.trace_name),
        escape(&e.creation_datetime),
    )?;
    write!(
        m,
        "clock {{\n\tname = \"monotonic\";\n\tuuid = \"{}\";\n\tdescription = \"Monotonic Clock\";\n\
         \tfreq = 1000000000; /* Frequency, in Hz */\n\
         \t/* clock value offset from Epoch is: offset * (1/freq) */\n\toffset = {};\n}};\n\n",
        uuid_string(&p.clock_uuid),
        p.clock_offset_ns
    )?;
    for (bits, align, name) in [(27, 1, "uint27"), (32, 8, "uint32"), (64, 8, "uint64")] {
        write!(
            m,
            "typealias integer {{\n\tsize = {bits}; align = {align}; signed = false;\n\
             \tmap = clock.monotonic.value;\n}} := {name}_clock_monotonic_t;\n\n"
        )?;
    }
    m.push_str(
        "struct packet_context {\n\tuint64_clock_monotonic_t timestamp_begin;\n\
         \tuint64_clock_monotonic_t timestamp_end;\n\tuint64_t content_size;\n\
         \tuint64_t packet_size;\n\tuint64_t packet_seq_num;\n\tunsigned long events_discarded;\n\
         \tuint32_t cpu_id;\n};\n\n",
    );
    m.push_str(
        "struct event_header_compact {\n\tenum : uint5_t { compact = 0 ... 30, extended = 31 } id;\n\
         \tvariant <id> {\n\t\tstruct {\n\t\t\tuint27_clock_monotonic_t timestamp;\n\t\t} compact;\n\
         \t\tstruct {\n\t\t\tuint32_t id;\n\t\t\tuint64_clock_monotonic_t timestamp;\n\t\t} extended;\n\
         \t} v;\n} align(8);\n\n",
    );
    m.push_str(
        "struct event_header_large {\n\tenum : uint16_t { compact = 0 ... 65534, extended = 65535 } id;\n\
         \tvariant <id> {\n\t\tstruct {\n\t\t\tuint32_clock_monotonic_t timestamp;\n\t\t} compact;\n\
         \t\tstruct {\n\t\t\tuint32_t id;\n\t\t\tuint64_clock_monotonic_t timestamp;\n\t\t} extended;\n\
         \t} v;\n} align(8);\n\n",
    );
    let hdr = match p.header {
        HeaderKind::Compact => "event_header_compact",
        HeaderKind::Large => "event_header_large",
    };
    write!(
        m,
        "stream {{\n\tid = 0;\n\tevent.header := struct {hdr};\n\
         \tpacket.context := struct packet_context;\n\tevent.context := struct {{\n\
         \t\t{} _pid;\n\t\t{} _tid;\n\t\t{} _procname[16];\n\t}};\n}};\n\n",
        int_type(32, true, Base::Dec, false),
        int_type(32, true, Base::Dec, false),
        int_type(8, false, Base::Dec, true),
    )?;
    for ev in p.catalog.events() {
        write!(
            m,
            "event {{\n\tname = \"{}\";\n\tid = {};\n\tstream_id = 0;\n",
            ev.name, ev.id
        )?;
        if ev.fields.is_empty() {
            m.push_str("\tfields := struct {\n\t};\n};\n\n");
            continue;
        }
        m.push_str("\tfields := struct {\n");
        for f in &ev.fields {
            field_lines(&mut m, &f.name, &f.ty)?;
        }
        m.push_str("\t};\n};\n\n");
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        let u = [
            0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(uuid_string(&u), "12345678-9abc-def0-0102-030405060708");
        let r = new_uuid();
        assert_eq!(r[6] >> 4, 4);
        assert_eq!(r[8] >> 6, 2);
    }

    #[test]
    fn header_len_matches_layout() {
        // magic, uuid, stream_id, stream_instance_id | 6 x u64, cpu_id
        assert_eq!(PACKET_HEADER_LEN, 32 + 52);
    }
}
