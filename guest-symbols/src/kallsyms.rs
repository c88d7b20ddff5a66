//! kallsyms recovery from the tables `scripts/kallsyms` emits into .rodata.
//!
//! The token table is found by its run of single-digit tokens "0\0".."9\0";
//! the token index that follows it pins its start. `kallsyms_num_syms` and
//! the names are found by trying each aligned candidate before the token
//! table, confirmed by recomputing `kallsyms_markers`. Layouts handled:
//! absolute `kallsyms_addresses` (old/!BASE_RELATIVE), relative offsets +
//! `kallsyms_relative_base` (4.6+, with or without absolute per-cpu
//! symbols), `kallsyms_seqs_of_names` between markers and token table
//! (6.2–6.3 and backports), the 6.4 reordering (num_syms, names, markers,
//! token table/index, then offsets, relative base, seqs), and the 2-byte
//! name lengths of 6.1+. All offsets here are relative to `data`, whose
//! start must be 8-byte aligned in the kernel's address space.

const DIGITS: &[u8] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
const MAX_SYMS: u32 = 4 << 20;
const MAX_TOKEN_LEN: usize = 256;
/// How far before the token table the names may start.
const MAX_NAMES_SPAN: usize = 96 << 20;
/// Work bounds against crafted input: token-table candidates tried, and
/// full name-table walks per candidate (real kernels need one of each).
const MAX_TOKEN_TABLES: usize = 16;
const MAX_NAME_WALKS: usize = 256;

/// Errors of kallsyms recovery.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("no kallsyms token table found (kernel built without CONFIG_KALLSYMS?)")]
    NoTokenTable,
    #[error("kallsyms token table at {0:#x} but no names/markers tables consistent with it")]
    NoNames(usize),
    #[error("kallsyms names found but no address table decodes to sorted addresses")]
    NoAddresses,
}

/// How `kallsyms_offsets`/`kallsyms_addresses` encode addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressEncoding {
    /// `kallsyms_addresses`: one absolute pointer per symbol.
    Absolute,
    /// `kallsyms_offsets` relative to `kallsyms_relative_base`;
    /// `absolute_percpu`: non-negative offsets are absolute values
    /// (CONFIG_KALLSYMS_ABSOLUTE_PERCPU), negative ones are `base - 1 - off`.
    Relative { base: u64, absolute_percpu: bool },
}

/// Where each table was found (offsets into the searched bytes).
#[derive(Debug, Clone)]
pub struct Layout {
    pub num_syms: usize,
    pub names: usize,
    pub markers: usize,
    pub seqs_of_names: Option<usize>,
    pub token_table: usize,
    pub token_index: usize,
    pub addresses: usize,
    pub encoding: AddressEncoding,
    /// The 6.4+ order (addresses after the token index).
    pub since_6_4: bool,
}

/// A recovered symbol in kallsyms order (sorted by address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSymbol {
    pub addr: u64,
    pub kind: u8,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Kallsyms {
    pub layout: Layout,
    pub symbols: Vec<RawSymbol>,
}

fn rd_u16(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn rd_u32(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn rd_u64(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn align8(x: usize) -> usize {
    x.saturating_add(7) & !7
}

struct TokenTable {
    start: usize,
    index: usize,
    tokens: Vec<(usize, usize)>,
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let mut from = 0;
    std::iter::from_fn(move || {
        while from + needle.len() <= hay.len() {
            let i = from + hay[from..].iter().position(|&b| b == needle[0])?;
            from = i + 1;
            if hay.get(i..i + needle.len()) == Some(needle) {
                return Some(i);
            }
        }
        None
    })
}

fn token_table_at(d: &[u8], digit0: usize) -> Option<TokenTable> {
    let mut p = digit0;
    for _ in 48..256 {
        let len = d
            .get(p..)?
            .iter()
            .take(MAX_TOKEN_LEN + 1)
            .position(|&b| b == 0)?;
        if len == 0 {
            return None;
        }
        p += len + 1;
    }
    let index = align8(p);
    let idx: Vec<usize> = (0..256)
        .map(|i| rd_u16(d, index + 2 * i).map(usize::from))
        .collect::<Option<_>>()?;
    let start = digit0.checked_sub(idx[48])?;
    if idx[0] != 0 || start + idx[255] >= p {
        return None;
    }
    let mut tokens = Vec::with_capacity(256);
    for i in 0..256 {
        let s = start + idx[i];
        // Checked: idx[i + 1] is not yet known to be above idx[i], and a
        // table at the very start of `data` may make this -1.
        let e = if i == 255 {
            p - 1
        } else {
            (start + idx[i + 1]).checked_sub(1)?
        };
        if (i > 0 && idx[i] <= idx[i - 1]) || e <= s || d.get(e) != Some(&0) {
            return None;
        }
        if d[s..e].contains(&0) {
            return None;
        }
        tokens.push((s, e));
    }
    Some(TokenTable {
        start,
        index,
        tokens,
    })
}

/// Walks `n` compressed names from `start`; returns their end and the
/// offsets of every 256th name (what `kallsyms_markers` holds).
fn walk_names(d: &[u8], start: usize, n: usize, limit: usize) -> Option<(usize, Vec<u32>)> {
    let mut off = start;
    let mut markers = Vec::with_capacity(n / 256 + 1);
    for i in 0..n {
        if i % 256 == 0 {
            markers.push(u32::try_from(off - start).ok()?);
        }
        let b0 = *d.get(off)?;
        let (len, hdr) = if b0 & 0x80 != 0 {
            (
                usize::from(b0 & 0x7f) | usize::from(*d.get(off + 1)?) << 7,
                2,
            )
        } else {
            (usize::from(b0), 1)
        };
        if len == 0 {
            return None;
        }
        off += hdr + len;
        if off > limit {
            return None;
        }
    }
    Some((off, markers))
}

fn markers_match(d: &[u8], at: usize, want: &[u32]) -> bool {
    want.iter()
        .enumerate()
        .all(|(i, &m)| rd_u32(d, at + 4 * i) == Some(m))
}

struct Names {
    num_syms_at: usize,
    n: usize,
    names: usize,
    markers: usize,
    seqs: Option<usize>,
}

fn find_names(d: &[u8], tt: &TokenTable) -> Option<Names> {
    let t = tt.start;
    let lo = t.saturating_sub(MAX_NAMES_SPAN);
    let mut p = (t.checked_sub(16)?) & !7;
    let mut walks = 0;
    loop {
        if let (Some(n), Some(0)) = (rd_u32(d, p), rd_u32(d, p + 4)) {
            if (1..=MAX_SYMS).contains(&n) {
                let n = n as usize;
                let m_len = align8(4 * n.div_ceil(256));
                for seqs in [false, true] {
                    let s_len = if seqs { align8(3 * n) } else { 0 };
                    let Some(mstart) = t.checked_sub(s_len + m_len) else {
                        continue;
                    };
                    if mstart < p + 8 || rd_u32(d, mstart) != Some(0) {
                        continue;
                    }
                    let last = rd_u32(d, mstart + 4 * (n.div_ceil(256) - 1));
                    if last.is_none_or(|l| l as usize >= mstart - (p + 8)) {
                        continue;
                    }
                    walks += 1;
                    if walks > MAX_NAME_WALKS {
                        return None;
                    }
                    if let Some((end, markers)) = walk_names(d, p + 8, n, mstart) {
                        if align8(end) == mstart && markers_match(d, mstart, &markers) {
                            return Some(Names {
                                num_syms_at: p,
                                n,
                                names: p + 8,
                                markers: mstart,
                                seqs: seqs.then_some(mstart + m_len),
                            });
                        }
                    }
                }
            }
        }
        if p < lo + 8 {
            return None;
        }
        p -= 8;
    }
}

fn descents(a: &[u64]) -> usize {
    a.windows(2).filter(|w| w[1] < w[0]).count()
}

fn decode_relative(d: &[u8], off_at: usize, base: u64, n: usize) -> Option<(Vec<u64>, bool)> {
    let offs: Vec<i32> = (0..n)
        .map(|i| rd_u32(d, off_at + 4 * i).map(|v| v as i32))
        .collect::<Option<_>>()?;
    let abs_percpu = offs.iter().any(|&o| o < 0);
    let addrs = offs
        .iter()
        .map(|&o| {
            if !abs_percpu {
                base.wrapping_add(u64::from(o as u32))
            } else if o >= 0 {
                o as u64
            } else {
                base.wrapping_sub(1).wrapping_sub(o as i64 as u64)
            }
        })
        .collect();
    Some((addrs, abs_percpu))
}

fn decode_absolute(d: &[u8], at: usize, n: usize) -> Option<Vec<u64>> {
    (0..n).map(|i| rd_u64(d, at + 8 * i)).collect()
}

fn find_addresses(
    d: &[u8],
    tt: &TokenTable,
    nm: &Names,
) -> Option<(Vec<u64>, usize, AddressEncoding, bool)> {
    let n = nm.n;
    let mut cands: Vec<(Vec<u64>, usize, AddressEncoding, bool)> = Vec::new();
    let relative = |off_at: usize, base_at: usize, since_6_4: bool| {
        let base = rd_u64(d, base_at).filter(|&b| b != 0)?;
        let (a, abs) = decode_relative(d, off_at, base, n)?;
        let enc = AddressEncoding::Relative {
            base,
            absolute_percpu: abs,
        };
        Some((a, off_at, enc, since_6_4))
    };
    // Before 6.4: offsets, relative_base, num_syms.
    if let Some(base_at) = nm.num_syms_at.checked_sub(8) {
        if let Some(off_at) = base_at.checked_sub(align8(4 * n)) {
            cands.extend(relative(off_at, base_at, false));
        }
        if let Some(at) = nm.num_syms_at.checked_sub(8 * n) {
            if let Some(a) = decode_absolute(d, at, n) {
                cands.push((a, at, AddressEncoding::Absolute, false));
            }
        }
    }
    // 6.4+: token index, offsets, relative_base, seqs.
    let after = align8(tt.index + 512);
    cands.extend(relative(after, align8(after + 4 * n), true));
    if let Some(a) = decode_absolute(d, after, n) {
        cands.push((a, after, AddressEncoding::Absolute, true));
    }
    cands
        .into_iter()
        .filter(|c| descents(&c.0) <= n / 1000)
        .min_by_key(|c| descents(&c.0))
}

/// Recovers the kallsyms table from `data` (e.g. .rodata, or a whole raw
/// image; its start must be 8-byte aligned in the kernel's address space).
pub fn recover(data: &[u8]) -> Result<Kallsyms, KallsymsError> {
    let mut saw_tokens = None;
    let tables = find_all(data, DIGITS).filter_map(|d| token_table_at(data, d));
    for tt in tables.take(MAX_TOKEN_TABLES) {
        saw_tokens = Some(tt.start);
        let Some(nm) = find_names(data, &tt) else {
            continue;
        };
        let (addrs, addr_at, encoding, since_6_4) =
            find_addresses(data, &tt, &nm).ok_or(KallsymsError::NoAddresses)?;
        let mut symbols = Vec::with_capacity(nm.n);
        let mut off = nm.names;
        let mut buf = Vec::with_capacity(128);
        for addr in addrs {
            let b0 = data[off];
            let (len, hdr) = if b0 & 0x80 != 0 {
                (usize::from(b0 & 0x7f) | usize::from(data[off + 1]) << 7, 2)
            } else {
                (usize::from(b0), 1)
            };
            buf.clear();
            for &b in &data[off + hdr..off + hdr + len] {
                let (s, e) = tt.tokens[usize::from(b)];
                buf.extend_from_slice(&data[s..e]);
            }
            off += hdr + len;
            let kind = buf.first().copied().unwrap_or(b'?');
            let name = String::from_utf8_lossy(buf.get(1..).unwrap_or(&[])).into_owned();
            symbols.push(RawSymbol { addr, kind, name });
        }
        let layout = Layout {
            num_syms: nm.num_syms_at,
            names: nm.names,
            markers: nm.markers,
            seqs_of_names: nm
                .seqs
                .or(since_6_4.then(|| align8(align8(addr_at + 4 * nm.n) + 8))),
            token_table: tt.start,
            token_index: tt.index,
            addresses: addr_at,
            encoding,
            since_6_4,
        };
        return Ok(Kallsyms { layout, symbols });
    }
    Err(saw_tokens.map_or(KallsymsError::NoTokenTable, KallsymsError::NoNames))
}

#[cfg(test)]
#[path = "kallsyms_tests.rs"]
mod tests;
