//! `cargo run --release -p guest-symbols --example probe -- IMAGE [CACHE_DIR]`:
//! recovers everything from an image and prints a summary (development aid
//! and the library half of benches/bench-symbols.sh).
use guest_symbols::{KernelImage, OpenOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: probe IMAGE [CACHE_DIR] [--map]")?;
    let cache = args.next().filter(|a| a != "-");
    let map = args.next().is_some();
    let t = std::time::Instant::now();
    let opts = OpenOptions {
        cache_dir: cache.as_deref().map(std::path::Path::new),
        system_map: None,
    };
    let k = KernelImage::open_with(&path, &opts)?;
    let el = t.elapsed();
    if map {
        k.symbols.write_system_map(std::io::stdout().lock())?;
    }
    eprintln!(
        "{:?} release={} build_id={:?} symbols={} exports={} btf_types={} syscalls={} in {:?}",
        k.format,
        k.release,
        k.build_id,
        k.symbols.len(),
        k.symbols.exports.len(),
        k.types.len(),
        k.syscalls.entries.len(),
        el
    );
    eprintln!("layout: {:?}", k.kallsyms_layout);
    for nr in [0, 1, 59, 257] {
        if let Some(s) = k.syscalls.by_nr(nr) {
            eprintln!("{s}");
        }
    }
    for m in ["comm", "pid", "tgid", "__state", "mm", "prio"] {
        eprintln!("task_struct.{m} = {:?}", k.types.member("task_struct", m));
    }
    Ok(())
}
