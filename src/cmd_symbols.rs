//! `hvtrace symbols`: a kernel's symbols, syscalls and struct layouts,
//! recovered from its image alone (guest-symbols).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use guest_symbols::{KernelImage, OpenOptions, INTROSPECTION_LAYOUT};

/// Output format of `hvtrace symbols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `ADDR TYPE NAME` lines sorted by address (as /proc/kallsyms).
    SystemMap,
    /// One JSON document.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct SymbolsArgs {
    /// Kernel image: bzImage, ELF vmlinux, compressed or raw vmlinux.
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "system-map")]
    pub format: Format,
    /// Print the syscall table (`NR NAME(type name, ...)`) instead.
    #[arg(long, conflicts_with_all = ["types", "tracepoints"])]
    pub syscalls: bool,
    /// With `--syscalls`: the 32-bit (compat, i386 ABI) table instead,
    /// recovered from `ia32_sys_call`'s compare tree.
    #[arg(long, requires = "syscalls")]
    pub compat: bool,
    /// Print the tracepoints' static-branch sites instead
    /// (`ADDR LEN TRACEPOINT FIRST-ARG`: its register, `$CONSTANT`, or `-`).
    #[arg(long, conflicts_with = "types")]
    pub tracepoints: bool,
    /// Print the struct layouts introspection uses (JSON) instead.
    #[arg(long)]
    pub types: bool,
    /// Cache folder (default: `symbols/` in hvtrace's cache).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Do not read or write the cache (a cold run).
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Use this System.map instead of the image's own tables.
    #[arg(long, value_name = "FILE")]
    pub system_map: Option<PathBuf>,
    /// Also write the decompressed ELF vmlinux of a bzImage to this file.
    #[arg(long, value_name = "FILE")]
    pub extract_vmlinux: Option<PathBuf>,
}

pub fn run(args: SymbolsArgs) -> anyhow::Result<()> {
    match print(args) {
        // `hvtrace symbols IMAGE | head` is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn print(args: SymbolsArgs) -> anyhow::Result<()> {
    if let Some(out) = &args.extract_vmlinux {
        guest_symbols::extract_vmlinux_to(&args.path, out)
            .with_context(|| format!("extracting the vmlinux of {}", args.path.display()))?;
    }
    let cache = match (&args.cache, args.no_cache) {
        (_, true) => None,
        (Some(dir), _) => Some(dir.clone()),
        (None, false) => Some(image_builder::cache::root().join("symbols")),
    };
    let opts = OpenOptions {
        cache_dir: cache.as_deref(),
        system_map: args.system_map.as_deref(),
    };
    let k = KernelImage::open_with(&args.path, &opts)
        .with_context(|| format!("reading {}", args.path.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let header = serde_json::json!({
        "release": k.release,
        "banner": k.banner,
        "build_id": k.build_id,
    });
    if args.types {
        let percpu: serde_json::Map<String, serde_json::Value> = ["current_task", "pcpu_hot"]
            .iter()
            .map(|n| {
                let v = k.symbols.addr(n).map(|a| format!("{a:#x}"));
                (n.to_string(), v.into())
            })
            .collect();
        let doc = serde_json::json!({
            "kernel": header,
            "structs": k.types.layouts(INTROSPECTION_LAYOUT),
            "percpu": percpu,
        });
        serde_json::to_writer_pretty(&mut out, &doc).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else if args.tracepoints {
        if args.format == Format::Json {
            let sites: Vec<serde_json::Value> = k
                .tracepoint_sites
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "tracepoint": t.tracepoint,
                        "addr": format!("{:#x}", t.addr),
                        "len": t.len,
                        "first_arg": t.first_arg.map(register_name),
                        "first_arg_const": t.first_arg_const,
                    })
                })
                .collect();
            let doc = serde_json::json!({ "kernel": header, "tracepoint_sites": sites });
            serde_json::to_writer_pretty(&mut out, &doc).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            for t in &k.tracepoint_sites {
                let arg = match (t.first_arg, t.first_arg_const) {
                    (Some(r), _) => register_name(r).to_string(),
                    (None, Some(c)) => format!("${c:#x}"),
                    (None, None) => "-".into(),
                };
                writeln!(out, "{:016x} {} {} {arg}", t.addr, t.len, t.tracepoint)?;
            }
        }
    } else if args.syscalls {
        let table = if args.compat {
            &k.compat_syscalls
        } else {
            &k.syscalls
        };
        if args.format == Format::Json {
            let doc = serde_json::json!({ "kernel": header, "syscalls": table.entries });
            serde_json::to_writer_pretty(&mut out, &doc).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            for s in &table.entries {
                writeln!(out, "{s}")?;
            }
        }
    } else if args.format == Format::Json {
        let doc = serde_json::json!({
            "kernel": header,
            "symbols": k.symbols.as_slice(),
            "exports": k.symbols.exports,
        });
        serde_json::to_writer(&mut out, &doc).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        k.symbols.write_system_map(&mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// AT&T name of x86-64 general register number `n`.
fn register_name(n: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    NAMES.get(usize::from(n)).copied().unwrap_or("?")
}
