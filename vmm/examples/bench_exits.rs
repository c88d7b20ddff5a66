//! `bench_exits [N] [ROUNDS]`: prints [`vmm::bench::exits`].
fn main() {
    let mut a = std::env::args().skip(1).map(|s| s.parse().unwrap_or(0));
    let n = a.next().filter(|&n| n > 0).unwrap_or(2000);
    let rounds = a.next().filter(|&n| n > 0).unwrap_or(9);
    match vmm::bench::exits(n, rounds) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
