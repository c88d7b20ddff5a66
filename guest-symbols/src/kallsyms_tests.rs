//! Synthetic kallsyms tables in every layout, built the way scripts/kallsyms
//! lays them out, and recovered back.

use super::*;

#[derive(Clone, Copy)]
pub(crate) struct Gen {
    pub since_6_4: bool,
    pub seqs: bool,
    /// None: absolute addresses; Some(abs_percpu).
    pub relative: Option<bool>,
}

const MULTI: [&str; 6] = ["sys_", "__", "do_", "_init", "task", "x64"];

fn tokens() -> Vec<Vec<u8>> {
    (0..256usize)
        .map(|i| match i {
            0x21..=0x7e => vec![i as u8],
            0x80..=0x85 => MULTI[i - 0x80].as_bytes().to_vec(),
            _ => format!("~{i:02x}").into_bytes(),
        })
        .collect()
}

fn encode(full: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    'outer: while i < full.len() {
        for (k, m) in MULTI.iter().enumerate() {
            if full[i..].starts_with(m.as_bytes()) {
                out.push(0x80 + k as u8);
                i += m.len();
                continue 'outer;
            }
        }
        out.push(full[i]);
        i += 1;
    }
    out
}

fn pad(v: &mut Vec<u8>) {
    while v.len() % 8 != 0 {
        v.push(0);
    }
}

pub(crate) fn symbols(n: usize) -> Vec<RawSymbol> {
    let mut v: Vec<RawSymbol> = (0..n)
        .map(|i| RawSymbol {
            addr: 0xffff_ffff_8100_0000 + (i as u64) * 0x40,
            kind: [b'T', b't', b'D', b'r'][i % 4],
            name: match i % 5 {
                0 => format!("__x64_sys_call{i}"),
                1 => format!("do_task_init{i}"),
                2 => format!("static_key_{i}"),
                3 if i == 3 => format!("big_{}", "y".repeat(300)),
                _ => format!("sym{i}.cold"),
            },
        })
        .collect();
    v[0] = RawSymbol {
        addr: 0,
        kind: b'A',
        name: "fixed_percpu_data".into(),
    };
    v[1].addr = 0x1a000;
    v
}

/// Builds rodata bytes: junk, the tables, junk.
pub(crate) fn build(g: Gen, syms: &[RawSymbol]) -> Vec<u8> {
    let n = syms.len();
    let base = 0xffff_ffff_8100_0000u64;
    let mut addr_tab = Vec::new();
    match g.relative {
        None => syms
            .iter()
            .for_each(|s| addr_tab.extend_from_slice(&s.addr.to_le_bytes())),
        Some(abs) => {
            for s in syms {
                let o: i32 = if abs && s.addr < base {
                    s.addr as i32
                } else if abs {
                    (base as i128 - 1 - s.addr as i128) as i32
                } else {
                    (s.addr - base) as i32
                };
                addr_tab.extend_from_slice(&o.to_le_bytes());
            }
            pad(&mut addr_tab);
            addr_tab.extend_from_slice(&base.to_le_bytes());
        }
    }
    pad(&mut addr_tab);
    let mut names = Vec::new();
    let mut markers = Vec::new();
    for (i, s) in syms.iter().enumerate() {
        if i % 256 == 0 {
            markers.extend_from_slice(&(names.len() as u32).to_le_bytes());
        }
        let mut full = vec![s.kind];
        full.extend_from_slice(s.name.as_bytes());
        let e = encode(&full);
        if e.len() >= 0x80 {
            names.push((e.len() as u8 & 0x7f) | 0x80);
            names.push((e.len() >> 7) as u8);
        } else {
            names.push(e.len() as u8);
        }
        names.extend_from_slice(&e);
    }
    let mut num = (n as u32).to_le_bytes().to_vec();
    pad(&mut num);
    pad(&mut names);
    pad(&mut markers);
    let mut seqs = vec![0u8; 3 * n];
    for (i, c) in seqs.chunks_mut(3).enumerate() {
        c.copy_from_slice(&(i as u32).to_be_bytes()[1..]);
    }
    pad(&mut seqs);
    let mut ttab = Vec::new();
    let mut tidx = Vec::new();
    for t in tokens() {
        tidx.extend_from_slice(&(ttab.len() as u16).to_le_bytes());
        ttab.extend_from_slice(&t);
        ttab.push(0);
    }
    pad(&mut ttab);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut junk = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    let mut out: Vec<u8> = (0..4096).map(|_| junk()).collect();
    let parts: Vec<&[u8]> = if g.since_6_4 {
        vec![&num, &names, &markers, &ttab, &tidx, &addr_tab, &seqs]
    } else if g.seqs {
        vec![&addr_tab, &num, &names, &markers, &seqs, &ttab, &tidx]
    } else {
        vec![&addr_tab, &num, &names, &markers, &ttab, &tidx]
    };
    for p in parts {
        out.extend_from_slice(p);
        pad(&mut out);
    }
    out.extend((0..4096).map(|_| junk()));
    out
}

const ALL: [Gen; 7] = [
    Gen {
        since_6_4: false,
        seqs: false,
        relative: None,
    },
    Gen {
        since_6_4: false,
        seqs: false,
        relative: Some(false),
    },
    Gen {
        since_6_4: false,
        seqs: false,
        relative: Some(true),
    },
    Gen {
        since_6_4: false,
        seqs: true,
        relative: Some(true),
    },
    Gen {
        since_6_4: true,
        seqs: true,
        relative: Some(true),
    },
    Gen {
        since_6_4: true,
        seqs: true,
        relative: Some(false),
    },
    Gen {
        since_6_4: true,
        seqs: true,
        relative: None,
    },
];

#[test]
fn every_layout_round_trips() {
    for n in [3usize, 255, 256, 257, 1000] {
        let syms = symbols(n);
        for g in ALL {
            if n < 8 && g.relative.is_none() {
                continue; // a 3-entry absolute table also reads as sorted offsets
            }
            if g.relative.is_some()
                && g.relative != Some(true)
                && syms[0].addr < 0xffff_0000_0000_0000
            {
                // Plain relative offsets cannot encode per-cpu addresses below the base.
                let mut s2 = syms.clone();
                s2[0].addr = 0xffff_ffff_8100_0000;
                s2[1].addr = 0xffff_ffff_8100_0000;
                let k = recover(&build(g, &s2)).unwrap();
                assert_eq!(k.symbols, s2);
                continue;
            }
            let k = recover(&build(g, &syms)).unwrap_or_else(|e| panic!("{n} {e}"));
            assert_eq!(k.symbols, syms, "n={n} {:?}", k.layout);
            assert_eq!(k.layout.since_6_4, g.since_6_4);
            if !g.since_6_4 {
                assert_eq!(k.layout.seqs_of_names.is_some(), g.seqs);
            }
        }
    }
}

#[test]
fn garbage_and_truncations_are_errors() {
    assert!(recover(&[]).is_err());
    assert!(recover(DIGITS).is_err());
    let data = build(ALL[3], &symbols(600));
    let mut seed = 77u64;
    for _ in 0..200 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let cut = (seed >> 33) as usize % data.len();
        let _ = recover(&data[..cut]);
        let mut f = data.clone();
        f[(seed >> 20) as usize % data.len()] ^= 0x40;
        let _ = recover(&f);
    }
}

/// An input of the `kallsyms` fuzz target: a token table at offset 0 whose
/// token 1 has index 0 put its predecessor's end at -1 (an overflow panic
/// under debug assertions, cargo-fuzz's default).
#[test]
fn token_table_at_the_start_with_a_zero_index_is_rejected() {
    let mut d = Vec::new();
    let mut idx = Vec::new();
    for t in tokens() {
        idx.push(d.len() as u16);
        d.extend_from_slice(&t);
        d.push(0);
    }
    pad(&mut d);
    idx[1] = 0;
    for i in idx {
        d.extend_from_slice(&i.to_le_bytes());
    }
    assert!(matches!(recover(&d), Err(KallsymsError::NoTokenTable)));
}
