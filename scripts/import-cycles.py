#!/usr/bin/env python3
"""File-level import cycles in Rust crates (issue 14: no two files import
each other). Usage: scripts/import-cycles.py CRATE/src [CRATE/src ...]

A file imports another when it names an item of its module: `crate::…`,
`super::…`, `self::…` paths (in `use` or inline) and bare `child::…` paths
into a child module. A file's module path comes from its location; a path
resolves to the longest module prefix that is a file. `mod x;` alone is not
an import, and test modules are skipped. Prints each pair of files that
import each other and each larger cycle; prints nothing when there is none.
A rough text scan, not a parser: a row is a place to look."""
import os, re, sys
from itertools import combinations

def modpath(src, f):
    rel = os.path.relpath(f, src)[:-3].split(os.sep)
    if rel[-1] in ('lib', 'main'):
        rel = rel[:-1]
    elif rel[-1] == 'mod':
        rel = rel[:-1]
    return tuple(rel)

def crate_cycles(src):
    files = {}
    for d, _, fs in os.walk(src):
        for x in fs:
            if x.endswith('.rs'):
                p = os.path.join(d, x)
                files[modpath(src, p)] = p
    is_modrs = {m: os.path.basename(p) in ('mod.rs', 'lib.rs', 'main.rs') for m, p in files.items()}
    edges = {m: set() for m in files}
    def resolve(parts):
        for n in range(len(parts), -1, -1):
            if tuple(parts[:n]) in files:
                return tuple(parts[:n])
        return None
    for m, p in files.items():
        text = open(p).read()
        # drop test modules and comments
        text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
        text = re.sub(r'//[^\n]*', '', text)
        # expand `use x::{a, b::c}` roughly: take first-level names
        refs = []
        for mm in re.finditer(r'\b(crate|super|self)((?:::\w+)+)(::\{([^}]*)\})?', text):
            head, path, _, group = mm.groups()
            parts = path.strip(':').split('::')
            base = []
            if head == 'crate':
                base = []
            elif head == 'self':
                base = list(m)
            elif head == 'super':
                base = list(m[:-1])
                while parts and parts[0] == 'super':
                    parts = parts[1:]; base = base[:-1]
            targets = [base + parts]
            if group:
                for g in group.split(','):
                    g = g.strip().split(' as ')[0]
                    if g and g != 'self':
                        targets.append(base + parts + g.split('::'))
            for t in targets:
                r = resolve(t)
                if r is not None and r != m:
                    edges[m].add(r)
        # bare paths into a child module: `child::X`, `use child::{..}`
        for mm in re.finditer(r'(?<![\w:])(\w+)::', text):
            child = m + (mm.group(1),)
            if child in files and child != m:
                edges[m].add(child)
    # child -> parent via its mod declaration does not count; parent's
    # `mod child;` is not a reference (not matched above).
    out = []
    for a, b in combinations(files, 2):
        if b in edges[a] and a in edges[b]:
            out.append((files[a], files[b]))
    # SCCs (Tarjan)
    index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1:
                sccs.append(sorted(files[c] for c in comp))
    for v in files:
        if v not in index:
            strong(v)
    return out, sccs

for src in sys.argv[1:]:
    pairs, sccs = crate_cycles(src)
    for a, b in pairs:
        print(f"2-cycle: {a} <-> {b}")
    for c in sccs:
        if len(c) > 2:
            print(f"cycle of {len(c)}: " + ", ".join(c))
