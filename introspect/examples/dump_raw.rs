//! Prints the records of a raw stream file (`raw/cpuN.bin`), one per line.
use introspect::codec::decode_all;

fn main() {
    let path = std::env::args().nth(1).expect("usage: dump_raw FILE");
    let data = std::fs::read(&path).expect("read");
    let (recs, used) = decode_all(&data);
    for r in &recs {
        println!(
            "{} cpu{} {}:{}:{} {:?}",
            r.ts,
            r.cpu,
            r.current.pid,
            r.current.tid,
            r.current.comm_str(),
            r.event
        );
    }
    eprintln!("{} records, {used} of {} bytes", recs.len(), data.len());
}
