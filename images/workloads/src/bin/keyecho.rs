//! `keyecho`: reads bytes from the console one at a time and writes each
//! back, until `q`: the target of end-to-end latency measurements.

use workloads::Counts;

fn main() {
    let mut counts = Counts::default();
    // Raw mode so each byte arrives as typed, not a line later.
    // SAFETY: termios calls on stdin with a zeroed, then filled, struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            t.c_oflag |= libc::OPOST | libc::ONLCR;
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
    // Tells a driver on the host that keys may come now.
    println!("keyecho: ready");
    let mut byte = [0u8];
    loop {
        // SAFETY: one-byte read into a local.
        let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
        if n != 1 {
            break;
        }
        // SAFETY: one-byte write from a local.
        unsafe { libc::write(1, byte.as_ptr().cast(), 1) };
        counts.add("bytes", 1);
        if byte[0] == b'q' {
            break;
        }
    }
    println!();
    counts.print(&[]);
}
