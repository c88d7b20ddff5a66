//! Chrome trace-event JSON export (chrome://tracing, Perfetto UI,
//! speedscope): syscalls as complete slices (`X`), the task running on each
//! CPU as `B`/`E` slices on a "CPUs" pseudo-process, interrupts and other
//! events as instants (`i`), process and thread names as metadata (`M`).
//! Timestamps are microseconds since the trace clock's origin.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde_json::{json, Map, Value as Json};

use crate::catalog::Catalog;
use crate::reader::{DecodedEvent, FieldValue};

/// Errors of the Chrome export.
#[derive(Debug, thiserror::Error)]
pub enum ChromeError {
    #[error("writing Chrome JSON")]
    Io(#[from] std::io::Error),
    #[error("encoding Chrome JSON")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Read(#[from] crate::reader::ReadError),
    #[error("cannot create {path}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Pid of the pseudo-process whose threads are the CPUs.
pub const CPUS_PID: i64 = 1_000_000_000;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn name_of(procname: &[u8; 16]) -> String {
    let n = procname.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&procname[..n]).into_owned()
}

fn field_json(v: &FieldValue) -> Json {
    match v {
        FieldValue::I(x) => json!(x),
        FieldValue::U(x) => json!(x),
        FieldValue::Str(s) => json!(s),
        FieldValue::Ints(a) => json!(a),
    }
}

fn args(catalog: &Catalog, e: &DecodedEvent) -> Map<String, Json> {
    let mut m = Map::new();
    if let Some(d) = catalog.event(e.id) {
        for (f, v) in d.fields.iter().zip(&e.fields) {
            m.insert(f.name.clone(), field_json(v));
        }
    }
    m
}

struct Emitter<W: Write> {
    out: W,
    first: bool,
}

impl<W: Write> Emitter<W> {
    fn push(&mut self, v: &Json) -> Result<(), ChromeError> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, v)?;
        Ok(())
    }
}

/// Write `events` (sorted by time, as [`crate::reader::read_trace`] returns
/// them) as a Chrome trace-event JSON object.
pub fn export<W: Write>(
    catalog: &Catalog,
    events: &[DecodedEvent],
    out: W,
) -> Result<W, ChromeError> {
    let mut em = Emitter { out, first: true };
    em.out
        .write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
    let mut threads: BTreeMap<(i32, i32), String> = BTreeMap::new();
    let mut processes: BTreeMap<i32, String> = BTreeMap::new();
    let mut cpus: BTreeMap<u32, ()> = BTreeMap::new();
    // Open syscall per thread: (entry event index, syscall name).
    let mut open_sys: HashMap<i32, (usize, String)> = HashMap::new();
    // Task currently shown running on each CPU: its name.
    let mut running: HashMap<u32, String> = HashMap::new();
    let mut last_ts = 0u64;
    for (i, e) in events.iter().enumerate() {
        last_ts = last_ts.max(e.ts);
        let Some(decl) = catalog.event(e.id) else {
            continue;
        };
        let name = decl.name.as_str();
        let (pid, tid) = (e.ctx.pid, e.ctx.tid);
        let pname = name_of(&e.ctx.procname);
        threads.insert((pid, tid), pname.clone());
        if pid == tid || !processes.contains_key(&pid) {
            processes.insert(pid, pname);
        }
        cpus.insert(e.cpu, ());
        let ts = us(e.ts);
        if name.starts_with("syscall_entry_") {
            let sc = name.trim_start_matches("syscall_entry_").to_string();
            if let Some((j, prev)) = open_sys.insert(tid, (i, sc)) {
                // Entry without exit (e.g. exit/execve): an open slice.
                let mut a = args(catalog, &events[j]);
                a.insert("unfinished".into(), json!(true));
                let (p, t) = (events[j].ctx.pid, events[j].ctx.tid);
                em.push(&json!({"ph":"i","s":"t","name":prev,"cat":"syscall","pid":p,"tid":t,"ts":us(events[j].ts),"args":a}))?;
            }
            continue;
        }
        if let Some(sc) = name.strip_prefix("syscall_exit_") {
            match open_sys.remove(&tid) {
                Some((j, entry)) if entry == sc => {
                    let mut a = args(catalog, &events[j]);
                    a.extend(args(catalog, e));
                    let start = events[j].ts;
                    em.push(
                        &json!({"ph":"X","name":sc,"cat":"syscall","pid":pid,"tid":tid,
                        "ts":us(start),"dur":us(e.ts - start),"args":a}),
                    )?;
                }
                other => {
                    if let Some(o) = other {
                        open_sys.insert(tid, o);
                    }
                    em.push(&json!({"ph":"i","s":"t","name":name,"cat":"syscall","pid":pid,"tid":tid,"ts":ts,"args":args(catalog, e)}))?;
                }
            }
            continue;
        }
        let a = args(catalog, e);
        if name == "sched_switch" {
            let cpu_tid = e.cpu as i64;
            if let Some(prev) = running.remove(&e.cpu) {
                em.push(&json!({"ph":"E","name":prev,"cat":"sched","pid":CPUS_PID,"tid":cpu_tid,"ts":ts}))?;
            }
            let next = match (a.get("next_comm"), a.get("next_tid")) {
                (Some(Json::String(c)), Some(t)) => format!("{c} [{t}]"),
                _ => "?".into(),
            };
            em.push(&json!({"ph":"B","name":next,"cat":"sched","pid":CPUS_PID,"tid":cpu_tid,"ts":ts,"args":a}))?;
            running.insert(e.cpu, next);
            continue;
        }
        let (cat, label) = if name == "irq_handler_entry" || name == "irq_handler_exit" {
            let irq = a.get("irq").cloned().unwrap_or(Json::Null);
            ("irq", format!("{name} {irq}"))
        } else if name.starts_with("irq_softirq_") {
            let v = a.get("vec").cloned().unwrap_or(Json::Null);
            ("softirq", format!("{name} {v}"))
        } else if name.starts_with("sched_") || name.starts_with("lttng_statedump") {
            ("sched", name.to_string())
        } else {
            ("probe", name.to_string())
        };
        em.push(
            &json!({"ph":"i","s":"t","name":label,"cat":cat,"pid":pid,"tid":tid,"ts":ts,"args":a}),
        )?;
    }
    // Close what is still open at the end of the trace.
    let mut open: Vec<_> = open_sys.into_iter().collect();
    open.sort_by_key(|(_, (j, _))| *j);
    for (tid, (j, sc)) in open {
        let e = &events[j];
        let mut a = args(catalog, e);
        a.insert("unfinished".into(), json!(true));
        em.push(&json!({"ph":"B","name":sc,"cat":"syscall","pid":e.ctx.pid,"tid":tid,"ts":us(e.ts),"args":a}))?;
        em.push(
            &json!({"ph":"E","name":sc,"cat":"syscall","pid":e.ctx.pid,"tid":tid,"ts":us(last_ts)}),
        )?;
    }
    let mut run: Vec<_> = running.into_iter().collect();
    run.sort();
    for (cpu, name) in run {
        em.push(
            &json!({"ph":"E","name":name,"cat":"sched","pid":CPUS_PID,"tid":cpu,"ts":us(last_ts)}),
        )?;
    }
    for (pid, name) in &processes {
        em.push(&json!({"ph":"M","name":"process_name","pid":pid,"tid":pid,"args":{"name":name}}))?;
    }
    for ((pid, tid), name) in &threads {
        em.push(&json!({"ph":"M","name":"thread_name","pid":pid,"tid":tid,"args":{"name":name}}))?;
    }
    if !cpus.is_empty() {
        em.push(
            &json!({"ph":"M","name":"process_name","pid":CPUS_PID,"tid":0,"args":{"name":"CPUs"}}),
        )?;
        for cpu in cpus.keys() {
            em.push(&json!({"ph":"M","name":"thread_name","pid":CPUS_PID,"tid":cpu,"args":{"name":format!("CPU {cpu}")}}))?;
        }
    }
    em.out.write_all(b"\n]}\n")?;
    Ok(em.out)
}

/// Read the trace at `trace` (written with `catalog` and `header`) and
/// write its Chrome JSON to `out`.
pub fn export_trace(
    trace: &std::path::Path,
    catalog: &Catalog,
    header: crate::metadata::HeaderKind,
    out: &std::path::Path,
) -> Result<(), ChromeError> {
    let events = crate::reader::read_trace(trace, catalog, header)?;
    let f = std::fs::File::create(out).map_err(|source| ChromeError::Create {
        path: out.to_path_buf(),
        source,
    })?;
    let mut w = export(catalog, &events, std::io::BufWriter::new(f))?;
    w.flush()?;
    Ok(())
}
