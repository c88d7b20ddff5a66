//! `cargo run --release -p ltt-writer --example bench_writer [dir]`
fn main() {
    let mut o = ltt_writer::bench::BenchOptions::default();
    if let Some(d) = std::env::args().nth(1) {
        o.dir = d.into();
    }
    match ltt_writer::bench::run(&o) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
