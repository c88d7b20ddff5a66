//! Issue 16, point 2 on the KVM monitor engine: SIGINT while tracing and a
//! guest kernel panic end with the documented status, the message and a
//! trace babeltrace2 reads, and hvtrace ends (its vCPUs are its threads).
//! Run where a KVM runs guest code natively: here with hardware
//! virtualization, else inside `scripts/stock-kvm.sh`'s L1, which does not
//! forward host signals: a shell in there signals hvtrace itself.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs hvtrace record on the KVM engine from a shell (in L1 when the
/// host has no hardware virtualization) that sends `signal` (or `none`)
/// to hvtrace once the guest printed `FAULT-TRACING`, waits for it and
/// exits with its status. hvtrace's stderr comes back on stderr.
const DRIVER: &str = r#"
h=$1 k=$2 i=$3 out=$4 sig=$5; shift 5
"$h" record --backend kvm --force --kernel "$k" --initrd "$i" -o "$out" -- "$@" 2> "$out.err" &
pid=$!
# Each phase has its own bound, well inside the harness's, so that a hang
# says where it was.
if [ "$sig" != none ]; then
    n=0
    until grep -q FAULT-TRACING "$out.err" || [ $n -ge 400 ]; do sleep 0.5; n=$((n+1)); done
    [ $n -ge 400 ] && echo "driver: no FAULT-TRACING from the guest after 200 s; signalling anyway" >&2
    kill -"$sig" $pid
    n=0
    while kill -0 $pid 2> /dev/null && [ $n -lt 240 ]; do sleep 0.5; n=$((n+1)); done
    if kill -0 $pid 2> /dev/null; then
        cat "$out.err" >&2
        echo "driver: hvtrace $pid still runs 120 s after SIG$sig" >&2
        kill -KILL $pid
        exit 98
    fi
fi
wait $pid
st=$?
cat "$out.err" >&2
if kill -0 $pid 2> /dev/null; then echo "hvtrace $pid still runs" >&2; exit 99; fi
exit $st
"#;

fn shell() -> Option<Command> {
    match common::kvm_host() {
        common::KvmHost::Native => Some(Command::new("/bin/sh")),
        common::KvmHost::StockKvm => {
            let mut c = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stock-kvm.sh"));
            c.args([
                "--timeout",
                "420",
                "--hvtrace",
                env!("CARGO_BIN_EXE_hvtrace"),
            ])
            .args(["--", "/bin/sh"]);
            Some(c)
        }
        common::KvmHost::Unavailable(why) => {
            println!("skipped: no KVM that runs guest code natively ({why})");
            None
        }
    }
}

/// One run: exit status and stderr.
fn record_kvm(out: &Path, signal: &str, script: &str) -> (Option<i32>, String) {
    let image = common::image_dir("6.1");
    // A file, not `sh -c`: the harness carries arguments on one line.
    let driver = out.with_extension("sh");
    std::fs::write(&driver, DRIVER).unwrap();
    let mut c = shell().expect("checked by the caller");
    c.arg(&driver)
        .arg(env!("CARGO_BIN_EXE_hvtrace"))
        .arg(image.join("vmlinuz"))
        .arg(image.join("initrd.img"))
        .arg(out)
        .arg(signal)
        .args(["/bin/sh", "-c", script]);
    let o = c.output().expect("run the driver shell");
    let _ = std::fs::remove_file(&driver);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn babeltrace_reads(trace: &Path) -> usize {
    let read = Command::new("babeltrace2")
        .arg(trace)
        .output()
        .expect("babeltrace2 runs");
    let err = String::from_utf8_lossy(&read.stderr);
    assert!(read.status.success() && err.trim().is_empty(), "{err}");
    String::from_utf8_lossy(&read.stdout).lines().count()
}

fn out_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hvtrace-faults-kvm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn kvm_sigint_while_tracing_exits_130_with_a_readable_trace() {
    if shell().is_none() {
        return;
    }
    let _machine = common::machine_lock(false);
    let out = out_dir("sigint");
    let busy = "while :; do /bin/syscalls 200 > /dev/null; echo FAULT-TRACING; done";
    let (status, err) = record_kvm(&out, "INT", busy);
    let tail: Vec<&str> = err.lines().rev().take(30).collect();
    assert_eq!(status, Some(130), "{tail:#?}");
    assert!(
        err.contains("interrupted by SIGINT; the guest was stopped"),
        "{tail:#?}"
    );
    let events = babeltrace_reads(&out.join("kernel"));
    assert!(events > 0, "no events read");
    println!("KVM, SIGINT while tracing: exit 130, babeltrace2 read {events} events");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn kvm_guest_panic_exits_125_with_a_readable_trace() {
    if shell().is_none() {
        return;
    }
    let _machine = common::machine_lock(false);
    let out = out_dir("panic");
    let script = "echo FAULT-TRACING; /bin/syscalls 100 > /dev/null; echo c > /proc/sysrq-trigger";
    let (status, err) = record_kvm(&out, "none", script);
    let tail: Vec<&str> = err.lines().rev().take(30).collect();
    assert_eq!(status, Some(125), "{tail:#?}");
    assert!(
        err.contains("the guest kernel panicked: Kernel panic - not syncing"),
        "{tail:#?}"
    );
    let events = babeltrace_reads(&out.join("kernel"));
    assert!(events > 0, "no events read");
    println!("KVM, guest panic: exit 125, babeltrace2 read {events} events");
    let _ = std::fs::remove_dir_all(&out);
}
