//! The whole trap path on hostile guests, for a bounded time per CI run:
//! `VcpuTracer::hit` (decode, deferral, statedump, emit) of every probe
//! kind on guests whose memory is random, whose task list loops, whose
//! `current` is unmapped or whose `pt_regs` is garbage, and the page walk
//! on page tables that point back into themselves. Nothing may panic,
//! loop, or do unbounded work per trap.
//!
//! `HVTRACE_FUZZ_SECS` sets each test's budget (default 2 s);
//! `HVTRACE_FUZZ_SEED` replays a run (the seed is printed, and new each
//! run otherwise).

mod support;

use std::cell::Cell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use introspect::decode::{SyscallStrings, SYSCALL_SLOTS};
use introspect::paging::{translate, WalkError};
use introspect::runtime::{Sink, StatedumpGate, VcpuTracer};
use introspect::task::MAX_TASKS;
use introspect::{Event, Record, Reg, Task};
use support::{kernel, mix, RandomGuest, Rng, KINDS};

fn budget() -> Duration {
    let secs = std::env::var("HVTRACE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.01))
}

fn seed(test: &str) -> u64 {
    let s = std::env::var("HVTRACE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fuzz {test}: HVTRACE_FUZZ_SEED={s}");
    s | 1
}

/// Counts what the tracer writes.
#[derive(Default)]
struct CountingSink {
    records: u64,
    statedump_tasks: u64,
    statedumps: u64,
}

impl Sink for CountingSink {
    fn emit(&mut self, rec: &Record) {
        self.records += 1;
        if matches!(rec.event, Event::Statedump { .. }) {
            self.statedump_tasks += 1;
        }
    }
    fn statedump_start(&mut self, _ts: u64, _current: &Task) {
        self.statedumps += 1;
    }
    fn statedump_end(&mut self, _ts: u64, _current: &Task) {}
}

/// Writes `v` at `va` in the guest's overrides.
fn put(ov: &mut HashMap<u64, u8>, va: u64, v: u64) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        ov.insert(va + i as u64, *b);
    }
}

/// One hostile guest: random memory, plus one of the shapes the brief
/// names (a task list looping back, a huge `comm`, an unmapped `current`,
/// garbage registers).
fn hostile_guest(rng: &mut Rng, k: &introspect::kernel::Kernel) -> RandomGuest {
    let mut regs = [0u64; Reg::ALL.len()];
    for r in regs.iter_mut() {
        *r = match rng.next() % 4 {
            0 => 0xffff_8880_0000_0000 | (rng.next() & 0xffff_ffff),
            1 => rng.next() & 0x7fff_ffff_ffff,
            2 => [0, u64::MAX, 0x8000_0000_0000_0000, 0xfff][(rng.next() % 4) as usize],
            _ => rng.next(),
        };
    }
    let mut ov = HashMap::new();
    let tasks = k.off.task_tasks;
    match rng.next() % 4 {
        0 => {
            // init_task's list: 8 tasks, the last back to the third.
            let nodes: Vec<u64> = (0..8).map(|i| k.init_task + i * 0x4000).collect();
            for (i, &n) in nodes.iter().enumerate() {
                let next = if i + 1 < nodes.len() {
                    nodes[i + 1]
                } else {
                    nodes[2]
                };
                put(&mut ov, n + tasks, next + tasks);
            }
        }
        1 => {
            // A comm with no NUL for pages.
            for i in 0..0x3000 {
                ov.insert(k.init_task + k.off.task_comm + i, b'A');
            }
        }
        2 => {
            // current points at a kernel address nothing maps: the
            // guest's 25 % unmapped pages make some seeds do exactly that.
            regs[Reg::GsBase as usize] = 0xffff_8880_dead_0000;
        }
        _ => {}
    }
    RandomGuest {
        seed: rng.next(),
        regs,
        reads: Cell::new(0),
        overrides: ov,
    }
}

#[test]
fn the_trap_path_survives_hostile_guests() {
    let mut rng = Rng(seed("trap path"));
    let strings = vec![0xffu8; 2 * SYSCALL_SLOTS];
    let (t0, budget) = (Instant::now(), budget());
    let (mut cases, mut emitted, mut dumped, mut most_reads) = (0u64, 0u64, 0u64, 0u64);
    while t0.elapsed() < budget {
        let k = kernel(&mut rng);
        let g = hostile_guest(&mut rng, &k);
        let mut tracer = VcpuTracer::new(0, 64).with_deferral();
        // Empty command: the statedump is taken at the first hit.
        let gate = StatedumpGate::new("");
        let mut sink = CountingSink::default();
        for hit in 0..8 {
            let kind = KINDS[(rng.next() % KINDS.len() as u64) as usize];
            let before = g.reads.get();
            tracer.hit(
                kind,
                &g,
                &k,
                &SyscallStrings(&strings),
                &gate,
                || hit,
                &mut sink,
            );
            let reads = g.reads.get() - before;
            most_reads = most_reads.max(reads);
            // A statedump walks at most MAX_TASKS tasks, a few reads each;
            // any other hit is a handful of reads.
            let bound = if hit == 0 { 16 * MAX_TASKS as u64 } else { 400 };
            assert!(reads <= bound, "{kind:?}: {reads} reads on one trap");
        }
        tracer.flush(&mut sink);
        assert_eq!(sink.statedumps, 1, "one statedump per run");
        assert!(sink.statedump_tasks <= MAX_TASKS as u64);
        emitted += sink.records;
        dumped += sink.statedump_tasks;
        cases += 1;
    }
    eprintln!(
        "fuzz trap path: {cases} guests x 8 hits in {:.1} s, {emitted} records ({dumped} statedump tasks), at most {most_reads} reads on one trap, 0 panics",
        t0.elapsed().as_secs_f64()
    );
    assert!(cases > 0);
}

/// Physical memory of random page tables in which some entries point back
/// at their own table or at a table above them (a loop a naive walker
/// would follow forever), with random large-page and reserved bits.
struct LoopingTables {
    seed: u64,
    tables: Vec<u64>,
    reads: Cell<u32>,
}

impl LoopingTables {
    fn read(&self, pa: u64) -> Option<u64> {
        self.reads.set(self.reads.get() + 1);
        let h = mix(pa ^ self.seed);
        if h % 16 == 0 {
            return None;
        }
        let table = self.tables[(h >> 8) as usize % self.tables.len()];
        // Flags: present mostly, sometimes PS, sometimes reserved bits.
        let present = u64::from(h % 7 != 0);
        let flags = (h >> 20) & 0x82 | present;
        let high = if h % 29 == 0 { 1 << 51 } else { 0 };
        Some(table | flags | high)
    }
}

#[test]
fn the_page_walk_ends_on_looping_tables() {
    let mut rng = Rng(seed("page walk"));
    let (t0, budget) = (Instant::now(), budget());
    let (mut walks, mut translated) = (0u64, 0u64);
    let mut errors: HashMap<&'static str, u64> = HashMap::new();
    while t0.elapsed() < budget {
        let cr3 = (rng.next() & 0x000f_ffff_ffff_f000) | (rng.next() & 0xfff);
        // The root itself among the targets: entries that loop to it.
        let mut tables: Vec<u64> = (0..4).map(|_| rng.next() & 0x000f_ffff_ffff_f000).collect();
        tables.push(cr3 & 0x000f_ffff_ffff_f000);
        let mem = LoopingTables {
            seed: rng.next(),
            tables,
            reads: Cell::new(0),
        };
        for _ in 0..64 {
            let va = match rng.next() % 3 {
                0 => 0xffff_8880_0000_0000 | (rng.next() & 0x7f_ffff_ffff),
                1 => rng.next() & 0x7fff_ffff_ffff,
                _ => rng.next(),
            };
            let la57 = rng.next() % 8 == 0;
            mem.reads.set(0);
            let r = translate(&|pa| mem.read(pa), cr3, va, la57);
            let levels = if la57 { 5 } else { 4 };
            assert!(mem.reads.get() <= levels, "{} reads", mem.reads.get());
            match r {
                Ok(t) => {
                    assert!(matches!(t.page_size, 0x1000 | 0x20_0000 | 0x4000_0000));
                    assert_eq!(t.pa & (t.page_size - 1), va & (t.page_size - 1));
                    translated += 1;
                }
                Err(e) => {
                    let name = match e {
                        WalkError::NonCanonical(_) => "non-canonical",
                        WalkError::TableUnreadable(_) => "unreadable",
                        WalkError::NotPresent { .. } => "not present",
                        WalkError::Reserved { .. } => "reserved bits",
                    };
                    *errors.entry(name).or_default() += 1;
                }
            }
            walks += 1;
        }
    }
    eprintln!(
        "fuzz page walk: {walks} walks in {:.1} s, {translated} translated, errors {errors:?}, 0 panics",
        t0.elapsed().as_secs_f64()
    );
    assert!(translated > 0 && !errors.is_empty());
}
